"""One reader per checkpoint quantization format, in a plain dict keyed by ``quant_method``.

Each reader turns the block into a ``CheckpointScheme`` or errors with the field path. Codes:
QC401 unknown format, QC402 malformed block (wrong type, missing field), QC403 a field value quantc
cannot plan (with the supported values), QC404 a scheme quantc has no key for, QC405 a field read but
without effect (note), QC406 a caveat the user should know (warning), QC407 an unused group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .checkpoint import CheckpointEntry, CheckpointScheme, Exclusion, SchemeGroup
from .diagnostics import Diagnostic, Span, has_errors, unknown_name_hint
from .peer_patterns import PeerPatterns

_MISSING = object()


class _Block:
    """A JSON block with its path prefix; typed getters that record diagnostics."""

    def __init__(self, data: dict, source: str, prefix: str, diags: list[Diagnostic]):
        self.data, self.source, self.prefix, self.diags = data, source, prefix, diags

    def path(self, key: str = "") -> str:
        return f"{self.prefix}.{key}" if key else self.prefix

    def origin(self, key: str = "") -> str:
        return f"{Path(self.source).name}: {self.path(key)}"

    def error(self, code: str, message: str, key: str = "", hint: str | None = None) -> None:
        self.diags.append(Diagnostic(code, "error", message, Span(self.source), hint, self.path(key)))

    def warn(self, code: str, message: str, key: str = "", hint: str | None = None, severity="warning") -> None:
        self.diags.append(Diagnostic(code, severity, message, Span(self.source), hint, self.path(key)))

    def get(self, key: str, types: tuple, default: Any = None, required: bool = False) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.error("QC402", f"missing field '{key}'", key, f"the {self.prefix} block needs '{key}'")
                return _MISSING
            return default
        # bool is an int in Python; a JSON true is never a number of bits
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            self.error("QC402", f"'{key}' must be {want}, got {type(value).__name__} {value!r}", key,
                       f"write '{key}' as {want}")
            return _MISSING
        return value

    def choice(self, key: str, choices: dict | tuple, default: Any = None, *, fold_case=False) -> Any:
        value = self.get(key, (str,), default)
        if value is _MISSING or value is None:
            return value
        folded = value.lower() if fold_case else value
        if folded not in choices:
            self.error("QC403", f"unsupported {key} '{value}'", key, unknown_name_hint(value, list(choices)))
            return _MISSING
        return choices[folded] if isinstance(choices, dict) else folded

    def sub(self, key: str) -> "_Block | None":
        value = self.get(key, (dict,))
        if value is None or value is _MISSING:
            return None
        return _Block(value, self.source, self.path(key), self.diags)

    def names(self, key: str) -> tuple[str, ...]:
        value = self.get(key, (list,), [])
        if value is _MISSING:
            return ()
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error("QC402", f"'{key}[{i}]' must be a module name string, got {item!r}", f"{key}[{i}]",
                           "each entry is a module name or pattern string")
            else:
                out.append(item)
        return tuple(out)


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true/false", list: "a list", dict: "an object", float: "a number"}


def _exclusion(block: _Block, key: str, semantics: str) -> tuple[Exclusion, ...]:
    names = block.names(key)
    return (Exclusion(PeerPatterns.build(semantics, names), block.path(key)),) if names else ()


# --- fp8 (DeepSeek-V3, Qwen3-FP8; vLLM Fp8Config / transformers FineGrainedFP8) -----------------

_FP8_SCHEMES = ("dynamic", "static")


def _read_fp8(b: _Block) -> CheckpointScheme | None:
    fmt = b.choice("fmt", ("e4m3",), "e4m3")
    if "activation_scheme" in b.data:
        act_key = "activation_scheme"
    elif "scheme" in b.data:  # pre-standard spelling
        act_key = "scheme"
    else:
        act_key = "activation_scheme"
    scheme = b.choice(act_key, _FP8_SCHEMES, "dynamic")
    block = b.get("weight_block_size", (list,))
    if block not in (None, _MISSING) and list(block) != [128, 128]:
        b.error("QC404", f"weight_block_size {block} has no quant key", "weight_block_size",
                "quantc's fp8 block key is fp8_block_128x128 (weight_block_size [128, 128])")
        block = _MISSING
    scale_fmt = b.get("scale_fmt", (str,))
    if scale_fmt not in (None, _MISSING):
        if scale_fmt != "ue8m0":
            b.error("QC403", f"unsupported scale_fmt '{scale_fmt}'", "scale_fmt", "supported: ue8m0")
        else:
            b.warn("QC405", "scale_fmt 'ue8m0' (power-of-two block scales) is read as fp32 block scales, "
                   "which represent it exactly", "scale_fmt", severity="note")
    for key in b.data:
        if key not in ("quant_method", "fmt", "activation_scheme", "scheme", "weight_block_size",
                       "ignored_layers", "modules_to_not_convert", "scale_fmt"):
            b.warn("QC405", f"field '{key}' has no effect on the stored format; ignored", key, severity="note")
    exclusions = _exclusion(b, "ignored_layers", "exact") + _exclusion(b, "modules_to_not_convert", "transformers")
    if _MISSING in (fmt, scheme, block):
        return None
    if scheme == "static" and block:
        b.error("QC404", "a static activation scheme with weight_block_size has no kernel", act_key,
                "block-scaled fp8 checkpoints use activation_scheme 'dynamic'")
        return None
    if scheme == "static":
        weight, act, fixed = "fp8_per_tensor", "fp8_static_per_tensor", True
    elif block:
        weight, act, fixed = "fp8_block_128x128", "fp8_dynamic_group_128", False
    else:
        weight, act, fixed = "fp8_per_tensor", "fp8_dynamic_per_token", False
    entry = CheckpointEntry(weight, act, fixed, b.origin())
    return CheckpointScheme("fp8", b.source, None, groups=(SchemeGroup(entry),), exclusions=exclusions)


# --- mxfp4 (gpt-oss) ----------------------------------------------------------------------------


def _read_mxfp4(b: _Block) -> CheckpointScheme | None:
    exclusions = _exclusion(b, "modules_to_not_convert", "transformers")
    for key in b.data:
        if key not in ("quant_method", "modules_to_not_convert"):
            b.warn("QC405", f"field '{key}' has no effect on the stored format; ignored", key, severity="note")
    entry = CheckpointEntry("mxfp4", None, False, b.origin())
    group = SchemeGroup(entry, kinds=frozenset({"moe_experts"}))
    return CheckpointScheme("mxfp4", b.source, None, groups=(group,), exclusions=exclusions)


# --- AWQ / GPTQ -------------------------------------------------------------------------------


def _int4_key(b: _Block, group_size, symmetric: bool, group_field: str) -> str | None:
    if group_size in (32, 64, 128):
        return f"int4_group_{group_size}" + ("" if symmetric else "_asym")
    if group_size is not _MISSING:
        b.error("QC404", f"4-bit weights with {group_field} {group_size} have no quant key", group_field,
                "supported group sizes: 32, 64, 128")
    return None


_AWQ_VERSIONS = ("gemm", "gemv", "exllama")


def _read_awq(b: _Block) -> CheckpointScheme | None:
    autoawq = "w_bit" in b.data  # AutoAWQ's own quant_config.json spelling
    bits_f, group_f = ("w_bit", "q_group_size") if autoawq else ("bits", "group_size")
    bits = b.get(bits_f, (int,), required=True)
    group = b.get(group_f, (int,), required=True)
    zero_point = b.get("zero_point", (bool,), True)
    b.choice("version", _AWQ_VERSIONS, "gemm", fold_case=True)
    exclusions = _exclusion(b, "modules_to_not_convert", "substring")
    if bits is not _MISSING and bits != 4:
        b.error("QC404", f"AWQ with {bits} bits has no quant key", bits_f, "supported: 4-bit AWQ")
        return None
    if _MISSING in (bits, group, zero_point):
        return None
    weight = _int4_key(b, group, not zero_point, group_f)
    if weight is None:
        return None
    entry = CheckpointEntry(weight, None, False, b.origin())
    return CheckpointScheme("awq", b.source, None, groups=(SchemeGroup(entry),), exclusions=exclusions)


def _read_gptq(b: _Block) -> CheckpointScheme | None:
    bits = b.get("bits", (int,), required=True)
    group = b.get("group_size", (int,), 128)
    sym = b.get("sym", (bool,), True)
    desc_act = b.get("desc_act", (bool,), False)
    lm_head = b.get("lm_head", (bool,), False)
    dynamic = b.get("dynamic", (dict,))
    b.choice("checkpoint_format", ("gptq", "gptq_v2"), "gptq")
    if dynamic not in (None, _MISSING) and dynamic:
        b.error("QC403", "per-module 'dynamic' overrides are not supported", "dynamic",
                "quantc reads one GPTQ scheme per checkpoint")
    if _MISSING in (bits, group, sym, desc_act, lm_head):
        return None
    if bits == 8 and group == -1 and sym:
        weight = "int8_per_channel"
    elif bits == 4:
        weight = _int4_key(b, group, sym, "group_size")
    else:
        b.error("QC404", f"GPTQ with {bits} bits and group_size {group} has no quant key", "bits",
                "supported: 4-bit with group_size 32/64/128, or 8-bit per channel (group_size -1, sym)")
        weight = None
    if weight is None:
        return None
    if desc_act:
        b.warn("QC406", "desc_act: true (act-order): the weights are stored with a g_idx permutation of K",
               "desc_act", "the runtime must load g_idx with the int4 weights; plan-time checks are unchanged")
    kinds = {"linear", "moe_experts"} | ({"lm_head"} if lm_head else set())
    entry = CheckpointEntry(weight, None, False, b.origin())
    return CheckpointScheme("gptq", b.source, None, groups=(SchemeGroup(entry, kinds=frozenset(kinds)),))


# --- ModelOpt (hf_quant_config.json, or config.json quant_method "modelopt") --------------------

# quant_algo -> (weight, activation, activation fixed by stored scales)
MODELOPT_ALGOS: dict[str, tuple[str, str | None, bool]] = {
    "FP8": ("fp8_per_tensor", "fp8_static_per_tensor", True),
    "FP8_PER_CHANNEL_PER_TOKEN": ("fp8_per_channel", "fp8_dynamic_per_token", False),
    "NVFP4": ("nvfp4", "nvfp4", False),
    "MXFP8": ("mxfp8", "mxfp8", False),
}
MODELOPT_KV = {"FP8": "fp8_static_per_tensor"}


def _read_modelopt(b: _Block) -> CheckpointScheme | None:
    algo = b.get("quant_algo", (str,), required=True)
    group = b.get("group_size", (int,))
    kv = b.get("kv_cache_quant_algo", (str,))
    ex_key = "exclude_modules" if "exclude_modules" in b.data else "ignore"
    exclusions = _exclusion(b, ex_key, "fnmatch")
    if algo is _MISSING:
        return None
    if algo.upper() not in MODELOPT_ALGOS:
        b.error("QC404", f"ModelOpt quant_algo '{algo}' has no quant key in quantc", "quant_algo",
                "supported quant_algo: " + ", ".join(MODELOPT_ALGOS))
        return None
    weight, act, fixed = MODELOPT_ALGOS[algo.upper()]
    if weight == "nvfp4" and group not in (None, 16):
        b.error("QC404", f"NVFP4 with group_size {group} has no quant key", "group_size", "NVFP4 uses group_size 16")
        return None
    kv_key = None
    if kv not in (None, _MISSING):
        kv_key = MODELOPT_KV.get(kv.upper())
        if kv_key is None:
            b.error("QC404", f"kv_cache_quant_algo '{kv}' has no quant key", "kv_cache_quant_algo",
                    "supported kv_cache_quant_algo: " + ", ".join(MODELOPT_KV))
            return None
    entry = CheckpointEntry(weight, act, fixed, b.origin())
    return CheckpointScheme("modelopt", b.source, kv_key, kv_cache_fixed=kv_key is not None,
                            kv_cache_origin=b.origin("kv_cache_quant_algo"), groups=(SchemeGroup(entry),),
                            exclusions=exclusions)


# --- dispatch -------------------------------------------------------------------------------------

def _ct(b: _Block) -> CheckpointScheme | None:
    from .checkpoint_ct import read_compressed_tensors

    return read_compressed_tensors(b)


READERS: dict[str, Callable[[_Block], CheckpointScheme | None]] = {
    "fp8": _read_fp8,
    "mxfp4": _read_mxfp4,
    "compressed-tensors": _ct,
    "modelopt": _read_modelopt,
    "awq": _read_awq,
    "gptq": _read_gptq,
}


def read_block(qconfig: Any, source: str) -> tuple[CheckpointScheme | None, tuple[Diagnostic, ...]]:
    diags: list[Diagnostic] = []
    if not isinstance(qconfig, dict):
        diags.append(Diagnostic("QC402", "error", f"the quantization block must be an object, got "
                                f"{type(qconfig).__name__}", Span(source), "quantization_config is a JSON object with a "
                                "quant_method", "quantization_config"))
        return None, tuple(diags)
    if isinstance(qconfig.get("quantization"), dict):  # ModelOpt hf_quant_config.json
        block = _Block(qconfig["quantization"], source, "quantization", diags)
        method = "modelopt"
    else:
        block = _Block(qconfig, source, "quantization_config", diags)
        method = qconfig.get("quant_method")
        if method is None:
            method = "awq" if "w_bit" in qconfig else ("modelopt" if "quant_algo" in qconfig else None)
        if not isinstance(method, str):
            block.error("QC401", "the quantization block names no quant_method" if method is None
                        else f"quant_method must be a string, got {method!r}", "quant_method",
                        "supported: " + ", ".join(READERS))
            return None, tuple(diags)
    reader = READERS.get(method.lower())
    if reader is None:
        block.error("QC401", f"unknown quantization format quant_method '{method}'", "quant_method",
                    unknown_name_hint(method, READERS))
        return None, tuple(diags)
    scheme = reader(block)
    if has_errors(diags):
        return None, tuple(diags)
    return scheme, tuple(diags)
