"""From checkpoint tensor names (or a live module's names) to inventory modules.

Used by the safetensors/index reader and the live-module walker; the config.json builders in
``quantc.archs`` emit the same names, kinds and order directly (a test holds them to it).
Plain string operations only (no per-module regex): a DeepSeek-V3 checkpoint has ~90k tensors.

Stored dtypes, for ``ModuleInfo.dtype``: ``bf16``/``fp16``/``fp32``, ``fp8_e4m3`` (fp8 weight,
with ``weight_scale`` or ``weight_scale_inv``), ``int8``, ``int4_packed`` (GPTQ/AWQ ``qweight`` or
compressed-tensors ``weight_packed`` in int32: eight 4-bit values a word), ``nvfp4`` (two e2m1
values a byte plus fp8 scales and a global scale), ``fp4_packed`` (e2m1 pairs, no global scale),
``mxfp4`` (gpt-oss ``*_blocks``/``*_scales``). Shapes are always the logical (unpacked) N, K.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ModuleInfo
from .safetensors_header import TensorHeader

SAFETENSORS_DTYPES = {
    "BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8_e4m3",
    "F8_E5M2": "fp8_e5m2", "F8_E8M0": "e8m0", "I8": "int8", "U8": "uint8", "I16": "int16",
    "I32": "int32", "I64": "int64", "BOOL": "bool",
}
TORCH_DTYPES = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
    "float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2", "int8": "int8", "uint8": "uint8",
    "int32": "int32",
}

# tensor-parallel split by the module's last name component, as vLLM shards these layers.
# DeepSeek MLA: q_a_proj and kv_a_proj_with_mqa are ReplicatedLinear (vLLM fuses them into a
# MergedReplicatedLinear `fused_qkv_a_proj`); q_b_proj/kv_b_proj are ColumnParallelLinear.
LEAF_TP = {
    "q_proj": "column", "k_proj": "column", "v_proj": "column", "o_proj": "row",
    "gate_proj": "column", "up_proj": "column", "down_proj": "row", "gate_up_proj": "column",
    "w1": "column", "w3": "column", "w2": "row",
    "q_a_proj": "replicated", "kv_a_proj_with_mqa": "replicated",
    "q_b_proj": "column", "kv_b_proj": "column",
}

# sibling leaves the runtime fuses into one GEMM -> the fused module's leaf name
FUSIONS = (
    (("q_proj", "k_proj", "v_proj"), "qkv_proj"),
    (("gate_proj", "up_proj"), "gate_up_proj"),
    (("w1", "w3"), "gate_up_proj"),
    (("q_a_proj", "kv_a_proj_with_mqa"), "fused_qkv_a_proj"),
)

# order of leaves inside one section of a layer (forward order), for the canonical module order
LEAF_RANK = {
    "q_proj": 0, "q_a_proj": 0, "q_b_proj": 1, "k_proj": 2, "kv_a_proj_with_mqa": 2, "v_proj": 3,
    "kv_b_proj": 3, "o_proj": 4, "kv_cache": 5,
    "gate_proj": 20, "w1": 20, "gate_up_proj": 20, "up_proj": 21, "w3": 21, "down_proj": 22, "w2": 22,
}


@dataclass(frozen=True)
class Entry:
    """One weight-bearing module found in a checkpoint or a live model, before classification."""

    name: str
    n: int
    k: int
    num_experts: int = 1
    dtype: str = "bf16"
    tensors: tuple[str, ...] = ()
    embedding: bool = False  # a live nn.Embedding (names alone decide otherwise)


def layer_of(name: str) -> int | None:
    """The index after ``layers.`` (``model.layers.17.mlp`` -> 17), else None."""
    i = name.find("layers.")
    if i < 0 or (i > 0 and name[i - 1] != "."):
        return None
    j = i + 7
    end = name.find(".", j)
    digits = name[j:] if end < 0 else name[j:end]
    return int(digits) if digits.isdigit() else None


def moe_block_of(name: str) -> str | None:
    """``model.layers.3.mlp.experts.7.w1`` -> ``model.layers.3.mlp.experts``; shared experts: None."""
    i = name.find(".experts.")
    return name[: i + 8] if i >= 0 else None


def kind_of(name: str) -> str:
    leaf = name.rpartition(".")[2]
    if leaf == "lm_head":
        return "lm_head"
    if "embed" in leaf or leaf in ("wte", "word_embeddings"):
        return "embedding"
    if "norm" in leaf:
        return "norm"
    if ".experts." in name:
        return "moe_experts"
    if leaf in ("gate", "router"):
        return "router"
    return "linear"


def canonical_key(m: ModuleInfo) -> tuple:
    """Forward order: embeddings, then per layer attention (+ kv_cache), router, experts (by index),
    shared experts / dense MLP; then lm_head and other modules outside the layers."""
    name = m.name
    if m.layer is None:
        return (2 if m.kind == "lm_head" else 0, 0, 0, -1, 0, name)
    if m.kind == "router":
        section = 1
    elif m.kind == "moe_experts":
        section = 2
    elif m.kind == "kv_cache" or "attn" in name:
        section = 0
    else:
        section = 3
    expert = -1
    if section == 2:
        rest = name[name.find(".experts.") + 9:]
        head = rest.partition(".")[0]
        expert = int(head) if head.isdigit() else -1
    leaf = name.rpartition(".")[2]
    return (1, m.layer, section, expert, LEAF_RANK.get(leaf, 50), name)


def fused_groups(names: list[str]) -> dict[str, str]:
    """Module name -> fused group, for sibling sets in FUSIONS that are all present."""
    leaves_of: dict[str, set[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        leaves_of.setdefault(parent, set()).add(leaf)
    out: dict[str, str] = {}
    for parent, leaves in leaves_of.items():
        for members, fused in FUSIONS:
            if all(m in leaves for m in members):
                for m in members:
                    out[f"{parent}.{m}"] = f"{parent}.{fused}"
    return out


def modules_from_entries(entries: list[Entry], head_dim: int = 0) -> tuple[ModuleInfo, ...]:
    """Classify entries and add one kv_cache entry per attention block (parent of k_proj, or of
    kv_a_proj_with_mqa for MLA). kv_cache: n = kv heads x head_dim, k = head_dim, or 0 where the
    head size is unknown (a bare checkpoint without config.json); MLA caches one latent "head":
    n = k = kv_lora_rank + qk_rope_head_dim."""
    groups = fused_groups([e.name for e in entries])
    out: list[ModuleInfo] = []
    for e in entries:
        kind = "embedding" if e.embedding else kind_of(e.name)
        if kind == "norm":
            continue
        leaf = e.name.rpartition(".")[2]
        if kind in ("lm_head", "embedding"):
            tp = "column"
        elif kind == "router":
            tp = "replicated"
        else:
            tp = LEAF_TP.get(leaf, "replicated")
        layer = layer_of(e.name)
        out.append(ModuleInfo(e.name, kind, e.n, e.k, layer, e.num_experts, groups.get(e.name),
                              moe_block_of(e.name) if kind == "moe_experts" else None, tp, e.dtype,
                              e.tensors))
        if leaf in ("k_proj", "kv_a_proj_with_mqa") and kind == "linear":
            # the cache holds activations: a quantized checkpoint's k_proj dtype says nothing of it
            cache_dtype = e.dtype if e.dtype in ("bf16", "fp16", "fp32") else "bf16"
            mla = leaf == "kv_a_proj_with_mqa"
            out.append(ModuleInfo(e.name[: -len(leaf)] + "kv_cache", "kv_cache", e.n,
                                  e.n if mla else head_dim, layer, 1, None, None,
                                  "replicated" if mla else "column", cache_dtype))
    out.sort(key=canonical_key)
    return tuple(out)


# --- checkpoint tensors -> entries -----------------------------------------------------------------

ROLE_LEAVES = frozenset({
    "weight", "qweight", "weight_packed", "weight_scale", "weight_scale_inv", "weight_scale_2",
    "weight_global_scale", "input_scale", "input_global_scale", "scales", "qzeros", "g_idx",
    "weight_zero_point", "weight_shape", "bias",
})
FUSED_SUFFIXES = {"_blocks": "blocks", "_scales": "block_scales", "_bias": "fused_bias"}


def _group_tensors(headers: dict[str, TensorHeader]) -> dict[str, dict[str, TensorHeader]]:
    groups: dict[str, dict[str, TensorHeader]] = {}
    for name, t in headers.items():
        prefix, _, last = name.rpartition(".")
        if last in ROLE_LEAVES and prefix:
            groups.setdefault(prefix, {})[last] = t
            continue
        for suffix, role in FUSED_SUFFIXES.items():
            if last.endswith(suffix) and last[: -len(suffix)].endswith("proj"):
                groups.setdefault(f"{prefix}.{last[: -len(suffix)]}", {})[role] = t
                break
        else:
            if len(t.shape) == 3:  # a fused 3D expert tensor stored under the module's own name
                groups.setdefault(name, {})["fused"] = t
    return groups


def _shape_of(module: str, roles: dict[str, TensorHeader]) -> tuple[int, int, int, str] | None:
    """(num_experts, N, K, stored dtype) of one module's tensors, or None (no 2D+ weight)."""
    if "blocks" in roles:  # MXFP4: (E, N, K/32, 16) bytes, two e2m1 values a byte
        s = roles["blocks"].shape
        if len(s) == 4:
            return s[0], s[1], s[2] * s[3] * 2, "mxfp4"
        if len(s) == 3:
            return 1, s[0], s[1] * s[2] * 2, "mxfp4"
        return None
    if "qweight" in roles:  # GPTQ (K/8, N) or AWQ (K, N/8), int32 words; scales are (K/G, N)
        q = roles["qweight"].shape
        scales = roles.get("scales")
        if len(q) != 2:
            return None
        if scales is None or len(scales.shape) != 2 or q[1] == scales.shape[1]:
            return 1, q[1], q[0] * 8, "int4_packed"
        return 1, q[1] * 8, q[0], "int4_packed"
    if "weight_packed" in roles:  # compressed-tensors: int32 words of 4-bit values, or u8 fp4 pairs
        p = roles["weight_packed"]
        if len(p.shape) != 2:
            return None
        if p.dtype == "I32":
            return 1, p.shape[0], p.shape[1] * 8, "int4_packed"
        fp4 = "nvfp4" if "weight_global_scale" in roles else "fp4_packed"
        return 1, p.shape[0], p.shape[1] * 2, fp4
    w = roles.get("weight") or roles.get("fused")
    if w is None or len(w.shape) < 2:
        return None
    if len(w.shape) == 3:
        if ".experts" not in module:  # a conv1d or other 3D weight, not a GEMM quantc plans
            return None
        return w.shape[0], w.shape[2], w.shape[1], SAFETENSORS_DTYPES.get(w.dtype, w.dtype.lower())
    if len(w.shape) != 2:
        return None
    n, k = w.shape
    scale = roles.get("weight_scale")
    if w.dtype == "U8" and scale is not None and scale.dtype == "F8_E4M3":  # ModelOpt NVFP4
        return 1, n, k * 2, "nvfp4"
    return 1, n, k, SAFETENSORS_DTYPES.get(w.dtype, w.dtype.lower())


def fix_fused_expert_layout(entries: list[Entry]) -> list[Entry]:
    """3D expert tensors are [E, in, out] in gpt-oss (transformers' GptOssExperts: gate_up_proj is
    (E, hidden, 2*inter)) but [E, out, in] elsewhere (transformers v5 fused experts). Entries start
    as [E, in, out]; a gate_up/down pair whose shapes only fit [E, out, in] is flipped."""
    by_name = {e.name: i for i, e in enumerate(entries)}
    out = list(entries)
    for e in entries:
        if e.num_experts == 1 or not e.name.endswith(".gate_up_proj") or e.dtype == "mxfp4":
            continue
        down_i = by_name.get(e.name[: -len("gate_up_proj")] + "down_proj")
        if down_i is None:
            continue
        d = entries[down_i]
        # as read ([E, in, out]): gate_up (K=hidden, N=2I), down (K=I, N=hidden)
        fits_in_out = e.k == d.n and e.n == 2 * d.k
        fits_out_in = e.n == d.k and e.k == 2 * d.n  # read transposed: gate_up (2I, hidden)
        if fits_out_in and not fits_in_out:
            out[by_name[e.name]] = Entry(e.name, e.k, e.n, e.num_experts, e.dtype, e.tensors)
            out[down_i] = Entry(d.name, d.k, d.n, d.num_experts, d.dtype, d.tensors)
    return out


def entries_from_headers(headers: dict[str, TensorHeader]) -> list[Entry]:
    entries = []
    for module, roles in _group_tensors(headers).items():
        shape = _shape_of(module, roles)
        if shape is None:
            continue
        e, n, k, dtype = shape
        entries.append(Entry(module, n, k, e, dtype, tuple(t.name for t in roles.values())))
    return fix_fused_expert_layout(entries)
