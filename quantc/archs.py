"""Model inventories from a Hugging Face ``config.json``: one builder per architecture family.

A builder reads the config's fields and returns *rows* (name, kind, n, k, layer, num_experts,
fused_group, moe_block, tp_split) in the canonical forward order (``tensor_names.canonical_key``);
``build_modules`` turns rows into ``ModuleInfo`` values in one pass, adding the stored dtype a
pre-quantized checkpoint declares. Rows are plain tuples because DeepSeek-V3 has ~45k modules and
the whole inventory must take well under 0.2 s.

Names are exactly the checkpoint's tensor names minus ``.weight``. Conventions:

- ``kv_cache``: one per attention layer, ``<attn>.kv_cache``, n = num_kv_heads * head_dim and
  k = head_dim (the group a per-head cache scale covers); DeepSeek MLA caches one latent of
  kv_lora_rank + qk_rope_head_dim (576) per token: n = k = 576, replicated under TP.
- DeepSeek multi-token-prediction layers (``model.layers.61.*`` in the V3 checkpoint,
  ``num_nextn_predict_layers``) are not listed: inference engines load them only for speculative
  decoding. ``Inventory.extra["mtp_layers_not_listed"]`` says how many there are.
- gpt-oss stores each layer's experts fused: ``mlp.experts.gate_up_proj`` (N = 2 * intermediate,
  gate and up interleaved) and ``mlp.experts.down_proj``, each one module with num_experts = E.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Callable, Iterator

from .diagnostics import Diagnostic, Span
from .model import ModuleInfo
from .tensor_names import TORCH_DTYPES

Row = tuple  # (name, kind, n, k, layer, num_experts, fused_group, moe_block, tp_split)
_REQUIRED = object()


class ConfigFields:
    """Typed reads of one config.json; every missing or invalid field becomes a diagnostic (all of
    them are collected), and the read returns a placeholder so the builder can go on."""

    def __init__(self, data: dict, path: str, text: str = "", arch: str = ""):
        self.data, self.path, self.text, self.arch = data, path, text, arch
        self.diagnostics: list[Diagnostic] = []

    def span(self, key: str) -> Span:
        """The line of ``"key":`` in the file's text, where the text is known."""
        at = self.text.find(f'"{key}"') if self.text else -1
        if at < 0:
            return Span(self.path)
        line = self.text.count("\n", 0, at) + 1
        return Span(self.path, line, at - (self.text.rfind("\n", 0, at) + 1) + 1)

    def _bad(self, key: str, message: str, hint: str) -> None:
        if any(d.path == key for d in self.diagnostics):
            return  # read twice (two builders' pieces): report once
        self.diagnostics.append(Diagnostic("QC802", "error", message, self.span(key), hint, key))

    def int(self, key: str, default=_REQUIRED, *, minimum: int = 1) -> int:
        if key not in self.data or self.data[key] is None:
            if default is not _REQUIRED:
                return default
            self._bad(key, f"{self.arch} config is missing the field '{key}' ({self.path})",
                      f"add '{key}' with the value from the model's published config.json")
            return 1
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._bad(key, f"config field '{key}' must be an integer >= {minimum}, got {value!r} "
                      f"({self.path})", f"write '{key}' as a whole number, as the published config.json has it")
            return 1
        return value

    def opt_int(self, key: str) -> int | None:
        """An integer that may be null or absent (DeepSeek ``q_lora_rank``)."""
        return None if self.data.get(key) is None else self.int(key)

    def int_list(self, key: str) -> tuple[int, ...]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            self._bad(key, f"config field '{key}' must be a list of layer indices, got {value!r} "
                      f"({self.path})", f"write '{key}' as a JSON list of integers, e.g. []")
            return ()
        return tuple(value)

    def head_dim(self, hidden: int, heads: int) -> int:
        return self.int("head_dim", hidden // heads if hidden >= heads else 1)


# --- shared pieces --------------------------------------------------------------------------------


def gqa_attention(rows: list, i: int, hidden: int, heads: int, kv_heads: int, hd: int) -> None:
    a = f"model.layers.{i}.self_attn"
    g = a + ".qkv_proj"
    kv = kv_heads * hd
    rows += [
        (a + ".q_proj", "linear", heads * hd, hidden, i, 1, g, None, "column"),
        (a + ".k_proj", "linear", kv, hidden, i, 1, g, None, "column"),
        (a + ".v_proj", "linear", kv, hidden, i, 1, g, None, "column"),
        (a + ".o_proj", "linear", hidden, heads * hd, i, 1, None, None, "row"),
        (a + ".kv_cache", "kv_cache", kv, hd, i, 1, None, None, "column"),
    ]


def gated_mlp(rows: list, prefix: str, i: int, hidden: int, inter: int, kind: str = "linear",
               block: str | None = None, leaves=("gate_proj", "up_proj", "down_proj")) -> None:
    """gate/up (column, one fused group) and down (row) of one MLP or one expert."""
    gate, up, down = leaves
    g = prefix + ".gate_up_proj"
    rows += [
        (f"{prefix}.{gate}", kind, inter, hidden, i, 1, g, block, "column"),
        (f"{prefix}.{up}", kind, inter, hidden, i, 1, g, block, "column"),
        (f"{prefix}.{down}", kind, hidden, inter, i, 1, None, block, "row"),
    ]


def expert_mlps(rows: list, prefix: str, i: int, hidden: int, inter: int, n: int,
             leaves=("gate_proj", "up_proj", "down_proj")) -> None:
    block = prefix + ".experts"
    for e in range(n):
        gated_mlp(rows, f"{block}.{e}", i, hidden, inter, "moe_experts", block, leaves)


def router_row(rows: list, name: str, i: int, experts: int, hidden: int) -> None:
    rows.append((name, "router", experts, hidden, i, 1, None, None, "replicated"))


def _common(f: ConfigFields) -> tuple[int, int, int, int, int]:
    hidden = f.int("hidden_size")
    layers = f.int("num_hidden_layers")
    heads = f.int("num_attention_heads")
    kv_heads = f.int("num_key_value_heads", heads)
    return hidden, layers, heads, kv_heads, f.head_dim(hidden, heads)


# --- builders -------------------------------------------------------------------------------------


def build_dense(f: ConfigFields) -> list[Row]:
    """Llama 3.x, Mistral, Qwen2, Qwen3 dense: GQA attention + a gated MLP per layer."""
    hidden, layers, heads, kv_heads, hd = _common(f)
    inter = f.int("intermediate_size")
    rows: list = []
    for i in range(layers):
        gqa_attention(rows, i, hidden, heads, kv_heads, hd)
        gated_mlp(rows, f"model.layers.{i}.mlp", i, hidden, inter)
    return rows


def build_qwen3_moe(f: ConfigFields) -> list[Row]:
    """Qwen3-MoE: layer i is sparse unless listed in mlp_only_layers, when (i+1) % decoder_sparse_step
    == 0; experts mlp.experts.{e}.gate_proj/up_proj/down_proj, router mlp.gate; no shared expert."""
    hidden, layers, heads, kv_heads, hd = _common(f)
    experts = f.int("num_experts")
    moe_inter = f.int("moe_intermediate_size")
    step = f.int("decoder_sparse_step", 1)
    dense_only = set(f.int_list("mlp_only_layers"))
    inter = f.int("intermediate_size", 0, minimum=0)
    rows: list = []
    for i in range(layers):
        gqa_attention(rows, i, hidden, heads, kv_heads, hd)
        mlp = f"model.layers.{i}.mlp"
        if i not in dense_only and (i + 1) % step == 0:
            router_row(rows, mlp + ".gate", i, experts, hidden)
            expert_mlps(rows, mlp, i, hidden, moe_inter, experts)
        else:
            if not inter:
                f.int("intermediate_size")  # dense layers need it: report it missing
            gated_mlp(rows, mlp, i, hidden, inter or 1)
    return rows


def build_mixtral(f: ConfigFields) -> list[Row]:
    """Mixtral: block_sparse_moe.experts.{e}.w1 (gate), w3 (up), w2 (down); router block_sparse_moe.gate."""
    hidden, layers, heads, kv_heads, hd = _common(f)
    experts = f.int("num_local_experts")
    inter = f.int("intermediate_size")
    rows: list = []
    for i in range(layers):
        gqa_attention(rows, i, hidden, heads, kv_heads, hd)
        moe = f"model.layers.{i}.block_sparse_moe"
        router_row(rows, moe + ".gate", i, experts, hidden)
        expert_mlps(rows, moe, i, hidden, inter, experts, ("w1", "w3", "w2"))
    return rows


def build_deepseek(f: ConfigFields) -> list[Row]:
    """DeepSeek-V2/V3: MLA attention; layers < first_k_dense_replace dense, then MoE every
    moe_layer_freq layers with routed experts, shared experts and a router mlp.gate."""
    hidden = f.int("hidden_size")
    layers = f.int("num_hidden_layers")
    heads = f.int("num_attention_heads")
    inter = f.int("intermediate_size")
    q_lora = f.opt_int("q_lora_rank")
    kv_lora = f.int("kv_lora_rank")
    nope, rope, v_dim = f.int("qk_nope_head_dim"), f.int("qk_rope_head_dim"), f.int("v_head_dim")
    routed = f.int("n_routed_experts", 0, minimum=0)
    moe_inter = f.int("moe_intermediate_size") if routed else 0
    shared = f.int("n_shared_experts", 0, minimum=0)
    first_dense = f.int("first_k_dense_replace", 0, minimum=0)
    freq = f.int("moe_layer_freq", 1)
    latent = kv_lora + rope
    rows: list = []
    for i in range(layers):
        a = f"model.layers.{i}.self_attn"
        if q_lora:
            g = a + ".fused_qkv_a_proj"  # vLLM: MergedReplicatedLinear of q_a and kv_a
            rows.append((a + ".q_a_proj", "linear", q_lora, hidden, i, 1, g, None, "replicated"))
            rows.append((a + ".q_b_proj", "linear", heads * (nope + rope), q_lora, i, 1, None, None, "column"))
        else:
            g = None
            rows.append((a + ".q_proj", "linear", heads * (nope + rope), hidden, i, 1, None, None, "column"))
        rows += [
            (a + ".kv_a_proj_with_mqa", "linear", latent, hidden, i, 1, g, None, "replicated"),
            (a + ".kv_b_proj", "linear", heads * (nope + v_dim), kv_lora, i, 1, None, None, "column"),
            (a + ".o_proj", "linear", hidden, heads * v_dim, i, 1, None, None, "row"),
            (a + ".kv_cache", "kv_cache", latent, latent, i, 1, None, None, "replicated"),
        ]
        mlp = f"model.layers.{i}.mlp"
        if routed and i >= first_dense and i % freq == 0:
            router_row(rows, mlp + ".gate", i, routed, hidden)
            expert_mlps(rows, mlp, i, hidden, moe_inter, routed)
            if shared:
                gated_mlp(rows, mlp + ".shared_experts", i, hidden, moe_inter * shared)
        else:
            gated_mlp(rows, mlp, i, hidden, inter)
    return rows


def build_gpt_oss(f: ConfigFields) -> list[Row]:
    """gpt-oss: GQA attention (biases, sinks), router mlp.router, experts stored fused per layer."""
    hidden, layers, heads, kv_heads, hd = _common(f)
    experts = f.int("num_local_experts")
    inter = f.int("intermediate_size")
    rows: list = []
    for i in range(layers):
        gqa_attention(rows, i, hidden, heads, kv_heads, hd)
        mlp = f"model.layers.{i}.mlp"
        router_row(rows, mlp + ".router", i, experts, hidden)
        block = mlp + ".experts"
        rows.append((block + ".gate_up_proj", "moe_experts", 2 * inter, hidden, i, experts, None, block, "column"))
        rows.append((block + ".down_proj", "moe_experts", hidden, inter, i, experts, None, block, "row"))
    return rows


ARCHITECTURES: dict[str, Callable[[ConfigFields], list[Row]]] = {
    "LlamaForCausalLM": build_dense,
    "MistralForCausalLM": build_dense,
    "Qwen2ForCausalLM": build_dense,
    "Qwen3ForCausalLM": build_dense,
    "Qwen3MoeForCausalLM": build_qwen3_moe,
    "MixtralForCausalLM": build_mixtral,
    "DeepseekV2ForCausalLM": build_deepseek,
    "DeepseekV3ForCausalLM": build_deepseek,
    "GptOssForCausalLM": build_gpt_oss,
}
MODEL_TYPES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}


def resolve_architecture(data: dict) -> str | None:
    """``architectures[0]`` when it is known, else the class ``model_type`` names, else None."""
    archs = data.get("architectures")
    if isinstance(archs, list) and archs and archs[0] in ARCHITECTURES:
        return archs[0]
    return MODEL_TYPES.get(data.get("model_type"))


# --- rows -> modules ------------------------------------------------------------------------------


def _checkpoint_format(qcfg: dict | None) -> tuple[str, frozenset, tuple[str, ...], tuple[str, ...]] | None:
    """(stored dtype, kinds it covers, tensor-name suffixes, modules_to_not_convert) for the
    quantization_config forms whose stored layout follows from the config alone (fp8, mxfp4);
    None for the rest, whose modules keep the config's torch dtype."""
    if not isinstance(qcfg, dict):
        return None
    method = qcfg.get("quant_method")
    skip = tuple(s for s in qcfg.get("modules_to_not_convert") or () if isinstance(s, str))
    if method == "fp8":
        scale = ".weight_scale_inv" if qcfg.get("weight_block_size") else ".weight_scale"
        return "fp8_e4m3", frozenset({"linear", "moe_experts"}), (".weight", scale), skip
    if method == "mxfp4":  # gpt-oss: only the fused experts are MXFP4
        return "mxfp4", frozenset({"moe_experts"}), ("_blocks", "_scales"), skip
    return None


def _not_converted(name: str, patterns: tuple[str, ...]) -> bool:
    # transformers tests these as substrings; ModelOpt/gpt-oss write globs with `*` for the layer
    return any(p in name or fnmatchcase(name, p) or fnmatchcase(name, p + ".*") for p in patterns)


def build_modules(rows: list[Row], dtype: str, qcfg: dict | None = None) -> tuple[ModuleInfo, ...]:
    fmt = _checkpoint_format(qcfg)
    stored, kinds, (s0, s1), skip = fmt or (dtype, frozenset(), ("", ""), ())
    make = ModuleInfo
    out = []
    append = out.append
    for name, kind, n, k, layer, experts, group, block, tp in rows:
        if kind in kinds and not (skip and _not_converted(name, skip)):
            append(make(name, kind, n, k, layer, experts, group, block, tp, stored, (name + s0, name + s1)))
        else:  # a fused 3D expert tensor is stored under the module's own name
            append(make(name, kind, n, k, layer, experts, group, block, tp, dtype,
                        (name,) if experts > 1 else ()))
    return tuple(out)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building ~45k small objects triggers dozens of cyclic-GC passes over a heap that holds no
    cycles; pausing the collector takes about a third off the DeepSeek-V3 inventory time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def torch_dtype_of(data: dict) -> str:
    value = data.get("torch_dtype") or data.get("dtype") or "bfloat16"
    return TORCH_DTYPES.get(str(value).removeprefix("torch."), "bf16")


def embed_rows(f: ConfigFields, hidden: int) -> tuple[Row, Row]:
    """model.embed_tokens and lm_head (listed even when tie_word_embeddings shares their weight)."""
    vocab = f.int("vocab_size")
    return (("model.embed_tokens", "embedding", vocab, hidden, None, 1, None, None, "column"),
            ("lm_head", "lm_head", vocab, hidden, None, 1, None, None, "column"))
