"""Import a checkpoint's quantization_config as a quantc config, and export a plan as one.

``import_quantization_config`` writes version-1 YAML whose kind settings, rules and ``ignore`` cover
exactly the modules the checkpoint stores quantized, with each peer's pattern semantics translated
into quantc's (``quantc.peer_patterns.to_quantc``). ``export_config`` goes the other way from
(module name, weight key, activation key[, kind]) entries, and re-reads what it wrote to prove that
the block maps every module back to the same keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from .checkpoint import CheckpointScheme, find_checkpoint_block, read_checkpoint_scheme
from .diagnostics import Diagnostic, Span, has_errors
from .kernel_specs import activation_pairs
from .model import ModuleInfo
from .peer_patterns import ct_target_priority, to_quantc

EXPORT_FORMATS = ("compressed-tensors", "vllm")


# --- import -------------------------------------------------------------------------------------


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _setting(weight: str, activation: str | None, kind: str | None = None, fixed: bool = False,
             diags: list | None = None) -> str:
    """``{weight, activation}`` for a config kind. A dynamic activation no kernel of that kind pairs
    with the weight (nvfp4 x nvfp4 experts) is only a default: the weight-only path is written."""
    act = activation or "none"
    if kind is not None and not fixed and act not in activation_pairs(kind, weight) \
            and "none" in activation_pairs(kind, weight):
        if diags is not None:
            diags.append(Diagnostic("QC405", "note", f"{kind}: no kernel pairs activation {act} with {weight}; "
                                    "the imported config uses the weight-only path (activation none)",
                                    Span("<import>"), "the checkpoint's activation is a dynamic default"))
        act = "none"
    return f"{{weight: {weight}, activation: {act}}}"


def import_quantization_config(path_or_dict: str | Path | dict) -> tuple[str, tuple[Diagnostic, ...]]:
    """A quantc config (YAML text) equivalent to a checkpoint's quantization block; "" on errors."""
    if isinstance(path_or_dict, dict):
        block = path_or_dict.get("quantization_config", path_or_dict)
        source, diags = "<quantization_config>", ()
    else:
        block, source, diags = find_checkpoint_block(path_or_dict)
        if block is None and not diags:
            diags = (Diagnostic("QC408", "error", "no quantization_config (nor hf_quant_config.json) found",
                                Span(source), "point at a checkpoint's config.json or its directory"),)
    if block is None:
        return "", diags
    scheme, more = read_checkpoint_scheme(block, source)
    diags = diags + more
    if scheme is None:
        return "", diags
    lines, more = _scheme_yaml(scheme)
    diags = diags + more
    if has_errors(diags):
        return "", diags
    return "\n".join(lines) + "\n", diags


def _scheme_yaml(s: CheckpointScheme) -> tuple[list[str], tuple[Diagnostic, ...]]:
    diags: list[Diagnostic] = []
    lines = [f"# imported by quantc from {Path(s.source).name} ({s.format} checkpoint)", "quantc: 1"]
    rules: list[str] = []
    if len(s.groups) == 1 and s.groups[0].targets is None:
        g = s.groups[0]
        e = g.entry
        setting = _setting(e.weight, e.activation, "linear", e.activation_fixed, diags)
        lines.append(f"linear: {setting if 'linear' in g.kinds else 'none'}")
        moe = _setting(e.weight, e.activation, "moe", e.activation_fixed, diags)
        lines.append(f"moe: {moe if 'moe_experts' in g.kinds else 'none'}")
        if "lm_head" in g.kinds:
            rules += ["  - match: lm_head", f"    linear: {setting}"]
    else:
        lines += ["linear: none", "moe: none"]
        rules += _ct_rules(s, diags)
    lines.append(f"kv_cache: {_setting('none', s.kv_cache) if s.kv_cache else 'none'}")
    if rules:
        lines.append("rules:")
        lines += rules
    ignore = []
    for ex in s.exclusions:
        for p in ex.patterns.patterns:
            q = to_quantc(ex.patterns.semantics, p)
            if q is None:
                if p != "Embedding":  # quantc never quantizes embeddings: nothing to write
                    diags.append(Diagnostic("QC409", "error", f"class name '{p}' in {ex.origin} has no quantc pattern",
                                            Span(s.source), "list the module names instead", ex.origin))
                continue
            ignore.append(f"  - {_q(q)}  # {ex.origin}: {p}")
    if ignore:
        lines.append("ignore:")
        lines += ignore
    return lines, tuple(diags)


def _ct_rules(s: CheckpointScheme, diags: list[Diagnostic]) -> list[str]:
    """compressed-tensors groups as rules. vLLM prefers an exact-name target over a regex over a
    class name, and the first group on ties; quantc's later rule wins, so rules are written by
    tier (class, regex, exact) and, inside a tier, in reverse group order."""
    out = []
    for tier in (0, 1, 2):
        for g in reversed(s.groups):
            pats = [p for p in g.targets.patterns if ct_target_priority(p) == tier]
            if not pats:
                continue
            match = []
            for p in pats:
                if tier == 0:
                    if p != "Linear":
                        diags.append(Diagnostic("QC409", "error", f"class target '{p}' has no quantc pattern",
                                                Span(s.source), "name the modules instead", g.entry.origin))
                        continue
                    match.append("*")  # every Linear; embeddings are never quantized by quantc
                else:
                    match.append(to_quantc("ct", p))
            if not match:
                continue
            e = g.entry
            out += [f"  - match: [{', '.join(_q(m) for m in match)}]  # {e.origin}",
                    f"    linear: {_setting(e.weight, e.activation, 'linear', e.activation_fixed, diags)}",
                    f"    moe: {_setting(e.weight, e.activation, 'moe', e.activation_fixed, diags)}"]
    return out


# --- export -------------------------------------------------------------------------------------

# weight key -> compressed-tensors QuantizationArgs and the format that stores it
_CT_WEIGHTS: dict[str, tuple[dict, str]] = {
    "fp8_per_tensor": ({"num_bits": 8, "type": "float", "strategy": "tensor"}, "float-quantized"),
    "fp8_per_channel": ({"num_bits": 8, "type": "float", "strategy": "channel"}, "float-quantized"),
    "fp8_block_128x128": ({"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]},
                          "float-quantized"),
    "int8_per_channel": ({"num_bits": 8, "type": "int", "strategy": "channel"}, "int-quantized"),
    "nvfp4": ({"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}, "nvfp4-pack-quantized"),
    **{f"int4_group_{g}{sfx}": ({"num_bits": 4, "type": "int", "strategy": "group", "group_size": g}, "pack-quantized")
       for g in (32, 64, 128) for sfx in ("", "_asym")},
}
_CT_ACTS: dict[str, dict] = {
    "fp8_dynamic_per_token": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
    "fp8_dynamic_per_tensor": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": True},
    "fp8_static_per_tensor": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False},
    "fp8_dynamic_group_128": {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128, "dynamic": True},
    "int8_dynamic_per_token": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True},
    "nvfp4": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "dynamic": "local"},
}
# vLLM's own fp8 method: (weight, activation) -> block fields
_VLLM_FP8 = {
    ("fp8_block_128x128", "fp8_dynamic_group_128"): {"activation_scheme": "dynamic", "weight_block_size": [128, 128]},
    ("fp8_per_tensor", "fp8_dynamic_per_token"): {"activation_scheme": "dynamic"},
    ("fp8_per_tensor", "fp8_static_per_tensor"): {"activation_scheme": "static"},
}


def _kind_of(name: str) -> str:
    """A module's kind from its HF name, for entries that do not carry one."""
    last = name.rsplit(".", 1)[-1]
    if last == "lm_head":
        return "lm_head"
    if last in ("gate", "router") and ".mlp." in f".{name}":
        return "router"
    if "embed" in last:
        return "embedding"
    if last in ("kv_cache", "attn_kv_cache"):
        return "kv_cache"
    return "moe_experts" if ".experts." in name else "linear"


def _normalize(entries: Iterable[Sequence]) -> list[tuple[str, str, str, str, int]]:
    out = []
    for e in entries:
        name, weight, act = e[0], e[1], e[2] or "none"
        kind = e[3] if len(e) > 3 and e[3] else _kind_of(name)
        out.append((name, weight, act, kind, e[4] if len(e) > 4 else 1))
    return out


def export_config(plan_or_entries: Any, format: str = "compressed-tensors") -> tuple[dict, tuple[Diagnostic, ...]]:
    """A quantization_config block for ``format``; ({}, errors) where it cannot express the plan.

    ``plan_or_entries``: a quantc Plan, or (module name, weight key, activation key[, kind[,
    num_experts]]) tuples; without a kind, it is guessed from the HF name.
    """
    if hasattr(plan_or_entries, "modules"):
        entries = _normalize((m.name, m.weight, m.activation, m.kind, m.num_experts) for m in plan_or_entries.modules)
    else:
        entries = _normalize(plan_or_entries)
    src = Span("<export>")
    if format not in EXPORT_FORMATS:
        return {}, (Diagnostic("QC410", "error", f"unknown export format '{format}'", src,
                               "formats: " + ", ".join(EXPORT_FORMATS)),)
    block, diags = (_export_ct if format == "compressed-tensors" else _export_vllm)(entries)
    if has_errors(diags):
        return {}, tuple(diags)
    diags = tuple(diags) + _round_trip(block, entries, format)
    return ({} if has_errors(diags) else block), diags


def _cannot(name: str, weight: str, act: str, fmt: str, why: str) -> Diagnostic:
    return Diagnostic("QC411", "error", f"{fmt} cannot express module '{name}' ({weight} x {act}): {why}",
                      Span("<export>"), "export with the other --format, or change this module's scheme", name)


def _export_ct(entries) -> tuple[dict, list[Diagnostic]]:
    diags: list[Diagnostic] = []
    by_scheme: dict[tuple[str, str], list[str]] = {}
    kv_acts, unquantized = set(), []
    fused = {name for name, *_, n_exp in entries if n_exp > 1}  # 3D expert tensors are no nn.Linear
    for name, w, a, kind, _ in entries:
        if kind == "kv_cache":
            if a != "none":
                kv_acts.add(a)
            continue
        if w == "none":
            if a != "none":
                diags.append(_cannot(name, w, a, "compressed-tensors", "activation-only quantization"))
            unquantized.append(name)
            continue
        if w not in _CT_WEIGHTS:
            diags.append(_cannot(name, w, a, "compressed-tensors", f"no QuantizationArgs for weight {w}"))
        elif a != "none" and a not in _CT_ACTS:
            diags.append(_cannot(name, w, a, "compressed-tensors", f"no QuantizationArgs for activation {a}"))
        else:
            by_scheme.setdefault((w, a), []).append(name)
    block: dict = {"quant_method": "compressed-tensors", "quantization_status": "compressed"}
    if len(kv_acts) > 1:
        diags.append(Diagnostic("QC411", "error", f"compressed-tensors has one kv_cache_scheme; the plan uses "
                                f"{', '.join(sorted(kv_acts))}", Span("<export>"), "use one kv cache key"))
    kv = next(iter(kv_acts), None)
    if kv is not None and kv not in ("fp8_static_per_tensor", "fp8_dynamic_per_tensor"):
        diags.append(_cannot("kv_cache", "none", kv, "compressed-tensors", "kv_cache_scheme is fp8 per tensor"))
    if diags:
        return {}, diags
    # the most common scheme targets class Linear; the others name their modules (exact beats class)
    ordered = sorted(by_scheme.items(), key=lambda kv_: (-len(kv_[1]), kv_[0]))
    groups, formats = {}, set()
    for i, ((w, a), names) in enumerate(ordered):
        args, fmt = _CT_WEIGHTS[w]
        args = {**args, "symmetric": not w.endswith("_asym"), "dynamic": False}
        formats.add(fmt)
        groups[f"group_{i}"] = {
            "targets": ["Linear", *sorted(set(names) & fused)] if i == 0 else sorted(names),
            "weights": args,
            "input_activations": {**_CT_ACTS[a], "symmetric": True} if a != "none" else None,
            "output_activations": None,
            "format": fmt,
        }
    block["format"] = formats.pop() if len(formats) == 1 else "mixed-precision"
    block["config_groups"] = groups
    block["ignore"] = sorted(unquantized)
    block["kv_cache_scheme"] = ({**_CT_ACTS[kv], "symmetric": True} if kv else None)
    return block, diags


def _export_vllm(entries) -> tuple[dict, list[Diagnostic]]:
    diags: list[Diagnostic] = []
    schemes = {(w, a) for _, w, a, kind, _ in entries if w != "none" and kind != "kv_cache"}
    if len(schemes) > 1:
        names = ", ".join(f"{w} x {a}" for w, a in sorted(schemes))
        return {}, [Diagnostic("QC411", "error", f"vllm's own formats hold one scheme per checkpoint; the plan "
                               f"uses {names}", Span("<export>"), "export with --format compressed-tensors")]
    if any(kind == "kv_cache" and a != "none" for _, _, a, kind, _ in entries):
        diags.append(Diagnostic("QC405", "note", "vllm's fp8/mxfp4 blocks carry no kv cache scheme; pass "
                                "--kv-cache-dtype fp8 to vLLM", Span("<export>")))
    unquantized = sorted(n for n, w, _, kind, _ in entries if w == "none" and kind != "kv_cache")
    (w, a), = schemes or {("none", "none")}
    if (w, a) in _VLLM_FP8:
        return {"quant_method": "fp8", "fmt": "e4m3", **_VLLM_FP8[(w, a)], "ignored_layers": unquantized}, diags
    if w == "mxfp4" and a == "none":
        return {"quant_method": "mxfp4", "modules_to_not_convert": unquantized}, diags
    name = next((n for n, ww, aa, *_ in entries if (ww, aa) == (w, a)), "<none>")
    return {}, [_cannot(name, w, a, "vllm", "vLLM's fp8 and mxfp4 methods do not have this scheme")]


def _round_trip(block: dict, entries, fmt: str) -> tuple[Diagnostic, ...]:
    """Re-read the block: every module must map back to its keys (the exporter's own check)."""
    scheme, diags = read_checkpoint_scheme(block, "<export>")
    if scheme is None:
        return tuple(diags)
    out = []
    for name, w, a, kind, n_exp in entries:
        got = scheme.entry_for(ModuleInfo(name, kind, 1, 1, num_experts=n_exp))
        got_keys = ("none", "none") if got is None else (got.weight, got.activation or "none")
        want = (w, a) if kind != "kv_cache" else ("none", a)
        if kind == "kv_cache" and fmt == "vllm":
            continue
        if got_keys != want:
            out.append(Diagnostic("QC411", "error", f"{fmt} cannot express module '{name}' ({w} x {a}): the "
                                  f"block would load it as {got_keys[0]} x {got_keys[1]}", Span("<export>"),
                                  "export with --format compressed-tensors, which names modules exactly", name))
    return tuple(out)
