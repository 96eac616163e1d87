"""The model inventory's data: what quantc knows of a model without loading any weight (SPEC §4).

Producers live in ``quantc.inventory`` (HF config.json, safetensors headers, a live torch module);
``quantc.lower`` consumes these values. Plain frozen data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What a module is. The config's layer kinds map onto these: `linear` covers linear/attention
# projections/shared experts, `moe` covers expert modules, `kv_cache` covers kv_cache entries.
ModuleKind = Literal["linear", "moe_experts", "embedding", "lm_head", "router", "norm", "kv_cache"]
TpSplit = Literal["column", "row", "replicated"]

CONFIG_KIND_OF: dict[str, str | None] = {
    "linear": "linear",
    "lm_head": "linear",
    "moe_experts": "moe",
    "kv_cache": "kv_cache",
    "embedding": None,  # never quantized by quantc
    "router": "linear",  # routers are linears; a built-in default keeps them unquantized
    "norm": None,
}


@dataclass(frozen=True)
class ModuleInfo:
    """One quantizable (or deliberately listed) module.

    ``n``/``k`` are the weight's output/input features (for fused expert tensors, per expert, and for a
    fused gate_up tensor N is the fused width). ``num_experts`` > 1 only for a fused 3D expert tensor.
    ``fused_group`` names modules the runtime fuses into one GEMM (q/k/v, gate/up): they must share a
    scheme. ``moe_block`` names the MoE layer an expert belongs to: experts of one block share a scheme.
    """

    name: str
    kind: ModuleKind
    n: int
    k: int
    layer: int | None = None
    num_experts: int = 1
    fused_group: str | None = None
    moe_block: str | None = None
    tp_split: TpSplit = "replicated"
    dtype: str = "bf16"
    # for fused tensors stored under other names (gpt-oss `mlp.experts.gate_up_proj`): tensor names
    tensors: tuple[str, ...] = ()

    @property
    def config_kind(self) -> str | None:
        return CONFIG_KIND_OF[self.kind]

    @property
    def weight_elements(self) -> int:
        return self.n * self.k * self.num_experts


@dataclass(frozen=True)
class Inventory:
    """All modules of a model, in checkpoint order, plus where the description came from."""

    source: str
    architecture: str
    modules: tuple[ModuleInfo, ...]
    num_layers: int = 0
    # the checkpoint's own quantization_config (config.json) or ModelOpt hf_quant_config.json, verbatim
    quantization_config: dict | None = None
    quantization_config_source: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def fingerprint(self) -> str:
        """A stable hash of names, kinds and shapes: what apply() checks a live model against."""
        import hashlib

        h = hashlib.sha256()
        for m in self.modules:
            h.update(f"{m.name}|{m.kind}|{m.n}|{m.k}|{m.num_experts}\n".encode())
        return h.hexdigest()[:32]
