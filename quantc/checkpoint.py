"""Pre-quantized checkpoints: read a checkpoint's quantization_config and say, per module, which
quant keys its stored tensors are in (SPEC §3 "Pre-quantized checkpoints are constraints").

``read_checkpoint_scheme(qconfig, source)`` dispatches on the format to one reader in
``quantc.checkpoint_formats`` and returns a ``CheckpointScheme``; ``scheme.entry_for(module)`` is what
lowering consumes. Which modules a format stores quantized follows the loader that wrote it:

* ``fp8``, ``mxfp4``, ``awq``, ``gptq``, ``modelopt``: the linear layers and experts the format
  covers, minus its exclusion list. lm_head, MoE routers and embeddings are never stored quantized by
  these loaders (vLLM builds them with no quant method; transformers leaves them as they are), so
  ``entry_for`` returns None for them. ``mxfp4`` (gpt-oss) quantizes MoE experts only.
* ``compressed-tensors``: every module a config group targets (class ``Linear`` covers lm_head and
  routers too, as in llm-compressor), minus ``ignore``. Target priority as in vLLM: exact name, then
  ``re:``, then class name; ties go to the first group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .diagnostics import Diagnostic, Span
from .peer_patterns import PeerPatterns, ct_target_priority, name_shape

if TYPE_CHECKING:
    from .model import ModuleInfo

# kinds the non-compressed-tensors formats may store quantized
DEFAULT_QUANTIZED_KINDS = frozenset({"linear", "moe_experts"})


@dataclass(frozen=True)
class CheckpointEntry:
    weight: str  # canonical weight key (quantc.keys.WEIGHT_KEYS) the checkpoint stores this module in
    activation: str | None  # activation key the checkpoint declares, None if it declares none (weight-only)
    # True: static scales are stored -> a different user key is an error; False: a dynamic default
    activation_fixed: bool
    origin: str  # where it came from, e.g. "config.json: quantization_config.config_groups.group_0"


@dataclass(frozen=True)
class SchemeGroup:
    """One (weight, activation) the checkpoint stores, and which modules it covers.

    ``targets`` None = every module of ``kinds``; otherwise compressed-tensors targets.
    """

    entry: CheckpointEntry
    kinds: frozenset[str] = DEFAULT_QUANTIZED_KINDS
    targets: PeerPatterns | None = None
    name: str = ""

    def priority(self, module: "ModuleInfo") -> int | None:
        """None: not covered; else the vLLM priority of the best matching target."""
        if module.kind not in self.kinds:
            return None
        if self.targets is None:
            return 0
        best = None
        for p in self.targets.patterns:
            single = _single(self.targets.semantics, p)
            if single.matches(module.name, module.kind, module.num_experts):
                prio = ct_target_priority(p)
                best = prio if best is None else max(best, prio)
        return best


_SINGLE_CACHE: dict[tuple[str, str], PeerPatterns] = {}


def _single(semantics: str, pattern: str) -> PeerPatterns:
    key = (semantics, pattern)
    if key not in _SINGLE_CACHE:
        _SINGLE_CACHE[key] = PeerPatterns.build(semantics, [pattern])
    return _SINGLE_CACHE[key]


@dataclass(frozen=True)
class Exclusion:
    patterns: PeerPatterns
    origin: str  # "quantization_config.ignore"


@dataclass(frozen=True)
class CheckpointScheme:
    format: str  # "fp8" | "mxfp4" | "compressed-tensors" | "modelopt" | "awq" | "gptq"
    source: str  # the file the block came from
    kv_cache: str | None  # activation key for the kv cache if declared, else None
    kv_cache_fixed: bool = False
    kv_cache_origin: str = ""
    groups: tuple[SchemeGroup, ...] = ()
    exclusions: tuple[Exclusion, ...] = ()
    _memo: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def entry_for(self, module: "ModuleInfo") -> CheckpointEntry | None:
        """None: the checkpoint leaves this module unquantized (the config may quantize it online)."""
        if module.kind == "kv_cache":
            if self.kv_cache is None:
                return None
            return CheckpointEntry("none", self.kv_cache, self.kv_cache_fixed, self.kv_cache_origin)
        name = module.name
        for ex in self.exclusions:
            if ex.patterns.matches_name(name):
                return None
        shape_only = self._memo.get("shape_only")
        if shape_only is None:
            shape_only = self._memo["shape_only"] = all(g.targets is None or g.targets.shape_only for g in self.groups)
        # without name-dependent targets, every name of one shape gets the same answer
        key = (name_shape(name) if shape_only else name, module.kind, module.num_experts)
        if key in self._memo:
            return self._memo[key]
        result = None
        if not any(ex.patterns.matches_shape(name_shape(name), module.kind, module.num_experts)
                   for ex in self.exclusions):
            result = self._resolve_groups(module)
        self._memo[key] = result
        return result

    def _resolve_groups(self, module: "ModuleInfo") -> CheckpointEntry | None:
        hits = [
            g for g in self.groups
            if module.kind in g.kinds
            and (g.targets is None or g.targets.matches(module.name, module.kind, module.num_experts))
        ]
        if len(hits) > 1:  # overlapping groups, resolved by vLLM's target priority
            hits.sort(key=lambda g: -(g.priority(module) or 0))  # stable: ties keep group order
        return hits[0].entry if hits else None

    def excluded_by(self, module: "ModuleInfo") -> list[str]:
        """The exclusion entries that match a module (for explain and tests)."""
        out = []
        for ex in self.exclusions:
            out += [f"{ex.origin}: {p}" for p in ex.patterns.which(module.name, module.kind, module.num_experts)]
        return out


def read_checkpoint_scheme(
    qconfig: dict, source: str, inventory_hint=None
) -> tuple[CheckpointScheme | None, tuple[Diagnostic, ...]]:
    """Map a checkpoint's quantization block onto quant keys.

    ``qconfig`` is config.json's ``quantization_config`` or a ModelOpt ``hf_quant_config.json``
    document; ``inventory_hint`` (an Inventory or a list of ModuleInfo) lets the reader warn about
    config groups that cover no module. Returns (None, errors) when the block cannot be read.
    """
    from .checkpoint_formats import read_block

    scheme, diags = read_block(qconfig, source)
    if scheme is not None and inventory_hint is not None:
        diags = diags + _unused_groups(scheme, inventory_hint)
    return scheme, diags


def _unused_groups(scheme: CheckpointScheme, inventory) -> tuple[Diagnostic, ...]:
    modules = getattr(inventory, "modules", inventory)
    if not any(g.targets is not None for g in scheme.groups):
        return ()
    used = set()
    for m in modules:
        e = scheme.entry_for(m)
        if e is not None:
            used.add(e.origin)
    out = []
    for g in scheme.groups:
        if g.entry.origin not in used:
            out.append(Diagnostic(
                "QC407", "warning", f"config group '{g.name}' covers no module of this model",
                Span(scheme.source), "check its targets against the model's module names",
                path=g.entry.origin.split(": ", 1)[-1],
            ))
    return tuple(out)


def find_checkpoint_block(path: str | Path) -> tuple[dict | None, str, tuple[Diagnostic, ...]]:
    """The quantization block of a checkpoint directory, config.json or hf_quant_config.json.

    config.json's ``quantization_config`` wins; without one, a ModelOpt ``hf_quant_config.json`` next
    to it holds the truth. Returns (block or None, the file it came from, diagnostics).
    """
    p = Path(path)
    if p.is_dir():
        cfg, sidecar = p / "config.json", p / "hf_quant_config.json"
    elif p.name == "hf_quant_config.json":
        cfg, sidecar = None, p
    else:
        cfg, sidecar = p, p.parent / "hf_quant_config.json"
    for f in (cfg, sidecar):
        if f is None or not f.exists():
            continue
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return None, str(f), (Diagnostic("QC402", "error", f"cannot read {f.name}: {e}", Span(str(f)),
                                             "the file must be a JSON object"),)
        if not isinstance(doc, dict):
            return None, str(f), (Diagnostic("QC402", "error", f"{f.name} is not a JSON object", Span(str(f)),
                                             "the file must be a JSON object"),)
        if f is sidecar:
            return doc, str(f), ()
        if doc.get("quantization_config") is not None:
            return doc["quantization_config"], str(f), ()
        if "quant_method" in doc or "quantization" in doc or "w_bit" in doc:
            return doc, str(f), ()  # a bare block (AutoAWQ quant_config.json, a copied block)
    return None, str(cfg or sidecar), ()
