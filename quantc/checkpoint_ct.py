"""compressed-tensors ``quantization_config`` (llm-compressor, RedHatAI/nvidia checkpoints).

QuantizationArgs (num_bits, type, strategy, group_size, block_structure, symmetric, dynamic) map onto
one catalog key each; the tables below are the whole mapping. ``targets``/``ignore`` keep
compressed-tensors semantics (``quantc.peer_patterns``, semantics ``ct``).
"""

from __future__ import annotations

from .checkpoint import CheckpointEntry, CheckpointScheme, Exclusion, SchemeGroup
from .checkpoint_formats import _MISSING, _Block
from .peer_patterns import PeerPatterns

STRATEGIES = ("tensor", "channel", "group", "block", "token", "tensor_group", "attn_head")
FORMATS = {
    # format -> predicate on the weight key it can store (None: anything)
    "float-quantized": lambda w: w.startswith("fp8") or w == "mxfp8",
    "int-quantized": lambda w: w == "int8_per_channel",
    "pack-quantized": lambda w: w.startswith("int4") or w == "int8_per_channel",
    "nvfp4-pack-quantized": lambda w: w == "nvfp4",
    "mxfp4-pack-quantized": lambda w: w == "mxfp4",
    "naive-quantized": lambda w: True,
    "mixed-precision": lambda w: True,
}
UNSUPPORTED_FORMATS = ("marlin-24", "sparse-24-bitmask", "sparse-bitmask", "dense")

# (type, num_bits, strategy, group or block size) -> weight key
WEIGHTS: dict[tuple, str] = {
    ("float", 8, "tensor", None): "fp8_per_tensor",
    ("float", 8, "channel", None): "fp8_per_channel",
    ("float", 8, "block", (128, 128)): "fp8_block_128x128",
    ("float", 8, "group", 32): "mxfp8",
    ("float", 4, "tensor_group", 16): "nvfp4",
    ("float", 4, "group", 16): "nvfp4",
    ("float", 4, "group", 32): "mxfp4",
    ("int", 8, "channel", None): "int8_per_channel",
    **{("int", 4, "group", g): f"int4_group_{g}" for g in (32, 64, 128)},
}
# (type, num_bits, strategy, group size, dynamic) -> (activation key, fixed by stored scales)
ACTIVATIONS: dict[tuple, tuple[str, bool]] = {
    ("float", 8, "token", None, True): ("fp8_dynamic_per_token", False),
    ("float", 8, "tensor", None, True): ("fp8_dynamic_per_tensor", False),
    ("float", 8, "tensor", None, False): ("fp8_static_per_tensor", True),
    ("float", 8, "group", 128, True): ("fp8_dynamic_group_128", False),
    ("float", 8, "group", 32, True): ("mxfp8", False),
    ("int", 8, "token", None, True): ("int8_dynamic_per_token", False),
    # NVFP4 W4A4: per-group scales at run time ("local"); SPEC §3 (b) makes it a default either way
    **{("float", 4, s, 16, d): ("nvfp4", False) for s in ("tensor_group", "group") for d in (True, False, "local")},
}
KV_CACHE: dict[tuple, tuple[str, bool]] = {
    ("float", 8, "tensor", None, False): ("fp8_static_per_tensor", True),
    ("float", 8, "tensor", None, True): ("fp8_dynamic_per_tensor", False),
}

_RE_HINT = "a 're:' entry is a Python regular expression, matched with re.match"
_ARG_FIELDS = ("num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic",
               "actorder", "observer", "observer_kwargs", "scale_dtype", "zp_dtype")


def _args_signature(b: _Block, role: str) -> tuple | None:
    """(type, bits, strategy, size, dynamic, symmetric, actorder) of a QuantizationArgs block."""
    for key in b.data:
        if key not in _ARG_FIELDS:
            b.warn("QC405", f"field '{key}' is not a compressed-tensors QuantizationArgs field; ignored",
                   key, severity="note")
    bits = b.get("num_bits", (int,), 8)
    typ = b.choice("type", ("int", "float"), "int")
    sym = b.get("symmetric", (bool,), True)
    group = b.get("group_size", (int,))
    strategy = b.choice("strategy", STRATEGIES, "group" if isinstance(group, int) else "tensor")
    dynamic = b.data.get("dynamic", False)
    if dynamic not in (True, False, "local"):
        b.error("QC402", f"'dynamic' must be true, false or \"local\", got {dynamic!r}", "dynamic",
                'one of true, false, "local"')
        dynamic = _MISSING
    block = b.get("block_structure", (list, str))
    if isinstance(block, str):  # older releases wrote "128x128"
        try:
            block = [int(x) for x in block.lower().split("x")]
        except ValueError:
            b.error("QC402", f"'block_structure' must be [rows, cols], got {block!r}", "block_structure",
                    "for example [128, 128]")
            block = _MISSING
    actorder = b.data.get("actorder")
    if _MISSING in (bits, typ, sym, group, strategy, dynamic, block):
        return None
    if strategy == "block":
        size = tuple(block) if block else None
    elif strategy in ("group", "tensor_group"):
        size = group
    else:
        size = None
    return typ, bits, strategy, size, dynamic, sym, actorder


def _describe(sig: tuple) -> str:
    typ, bits, strategy, size, dynamic, sym, _ = sig
    size_s = f" size {list(size) if isinstance(size, tuple) else size}" if size else ""
    dyn = f", dynamic {dynamic}" if dynamic is not False else ""
    return f"{typ} {bits}-bit, strategy {strategy}{size_s}{dyn}{'' if sym else ', asymmetric'}"


def _weight_key(b: _Block) -> str | None:
    sig = _args_signature(b, "weights")
    if sig is None:
        return None
    typ, bits, strategy, size, dynamic, sym, actorder = sig
    if dynamic is not False:
        b.error("QC403", "weights with dynamic scales are not a stored format", "dynamic",
                "a checkpoint stores weight scales: dynamic must be false")
        return None
    key = WEIGHTS.get((typ, bits, strategy, size))
    if key is not None and not sym:
        key = key + "_asym" if key.startswith("int4") else None
    if key is None:
        supported = sorted(set(WEIGHTS.values())) + [f"int4_group_{g}_asym" for g in (32, 64, 128)]
        b.error("QC404", f"weights {_describe(sig)} have no quant key", "",
                "quantc stores weights as: " + ", ".join(supported))
        return None
    if actorder in ("group", True):
        b.warn("QC406", f"actorder '{actorder}': the weights are stored with a g_idx permutation of K",
               "actorder", "the runtime must load weight_g_idx with the weights")
    return key


def _activation_key(b: _Block, table: dict, what: str) -> tuple[str, bool] | None:
    sig = _args_signature(b, what)
    if sig is None:
        return None
    typ, bits, strategy, size, dynamic, sym, _ = sig
    hit = table.get((typ, bits, strategy, size, dynamic))
    if hit is None or not sym:
        supported = sorted({k for k, _ in table.values()})
        b.error("QC404", f"{what} {_describe(sig)} have no quant key", "",
                f"quantc plans {what} as: " + ", ".join(supported))
        return None
    return hit


def read_compressed_tensors(b: _Block) -> CheckpointScheme | None:
    top_format = b.get("format", (str,), "naive-quantized")
    if top_format in UNSUPPORTED_FORMATS:
        b.error("QC403", f"format '{top_format}' (sparse or marlin-packed) is not supported", "format",
                "supported formats: " + ", ".join(FORMATS))
    elif top_format is not _MISSING and top_format not in FORMATS:
        b.error("QC403", f"unknown compressed-tensors format '{top_format}'", "format",
                "supported formats: " + ", ".join(FORMATS))
    for key in ("transform_config", "sparsity_config"):
        value = b.data.get(key)
        if value and not (key == "sparsity_config" and value.get("format") in (None, "dense")):
            b.error("QC403", f"'{key}' is set: quantc cannot plan rotated or sparse weights", key,
                    "only dense, unrotated compressed-tensors checkpoints are supported")
    groups_b = b.sub("config_groups")
    if groups_b is None:
        if "config_groups" not in b.data or b.data["config_groups"] is None:
            b.error("QC402", "missing field 'config_groups'", "config_groups",
                    "a compressed-tensors block needs at least one config group")
        return None
    groups = []
    for name, raw in groups_b.data.items():
        g = _Block(raw, b.source, groups_b.path(name), b.diags) if isinstance(raw, dict) else None
        if g is None:
            groups_b.error("QC402", f"config group '{name}' must be an object", name,
                           "a group is {targets, weights, input_activations}")
            continue
        group = _read_group(g, name, top_format)
        if group is not None:
            groups.append(group)
    ignore = b.names("ignore")
    exclusions = ()
    if ignore:
        ex = PeerPatterns.build("ct", ignore)
        for i, pattern, reason in ex.invalid_regexes():
            b.error("QC402", f"ignore[{i}] '{pattern}' is not a valid regex: {reason}", f"ignore[{i}]", _RE_HINT)
        exclusions = (Exclusion(ex, b.path("ignore")),)
    kv_key, kv_fixed = None, False
    kv_b = b.sub("kv_cache_scheme")
    if kv_b is not None:
        hit = _activation_key(kv_b, KV_CACHE, "kv cache")
        if hit is not None:
            kv_key, kv_fixed = hit
    return CheckpointScheme("compressed-tensors", b.source, kv_key, kv_cache_fixed=kv_fixed,
                            kv_cache_origin=b.origin("kv_cache_scheme"), groups=tuple(groups),
                            exclusions=exclusions)


def _read_group(g: _Block, name: str, top_format) -> SchemeGroup | None:
    targets = g.names("targets")
    if not targets:
        g.error("QC402", f"config group '{name}' has no targets", "targets",
                "targets: a list of class names (Linear), module names or re: patterns")
        return None
    patterns = PeerPatterns.build("ct", targets)
    for i, pattern, reason in patterns.invalid_regexes():
        g.error("QC402", f"targets[{i}] '{pattern}' is not a valid regex: {reason}", f"targets[{i}]", _RE_HINT)
    if g.data.get("output_activations") is not None:
        g.error("QC403", "output activation quantization is not supported", "output_activations",
                "quantc quantizes weights and GEMM inputs only")
    w_b = g.sub("weights")
    if w_b is None:
        if g.data.get("weights") is None:
            g.error("QC403", "a group without weights (activation-only quantization) is not supported", "weights",
                    "quantc plans weight quantization with optional activation quantization")
        return None
    weight = _weight_key(w_b)
    act = None
    a_b = g.sub("input_activations")
    if a_b is not None:
        act = _activation_key(a_b, ACTIVATIONS, "input activations")
        if act is None:
            return None
    if weight is None:
        return None
    fmt = g.get("format", (str,), top_format)
    if fmt in FORMATS and not FORMATS[fmt](weight):
        g.error("QC403", f"format '{fmt}' cannot hold {weight} weights", "format",
                "the group's format and its weights disagree: the block is contradictory")
        return None
    entry = CheckpointEntry(weight, act[0] if act else None, act[1] if act else False, g.origin())
    kinds = frozenset({"linear", "lm_head", "router", "moe_experts", "embedding"})
    return SchemeGroup(entry, kinds=kinds, targets=patterns, name=name)
