"""Config validation: load a file (and its ``extends`` bases), check it, and build the merged Config.

Stages, each returning values plus diagnostics and never stopping at the first problem:
``source.load_document`` (positions) -> ``schema.schema_diagnostics`` (structure, names, types) ->
``_layer`` (semantic checks and canonical Settings for one file) -> ``merge_layers`` (SPEC §3:
kind settings and target per field, rules appended, ignore united) -> ``Config``.

The semantic pass is tolerant: it reads only the parts that have the right shape and leaves the
rest to the schema's diagnostics, so one malformed value never hides the other problems.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from .config import FIELDS, LAYER_KINDS, Config, KindSetting, Pattern, Rule, Setting, Target
from .diagnostics import Diagnostic, QuantcError, Span, has_errors
from .source import Document, format_path, load_document

VERSION = 1

CODES = {
    "QC110": "invalid regular expression in a pattern",
    "QC111": "rule sets nothing",
    "QC112": "no kernel pairs this activation with this weight",
    "QC113": "kv_cache has no weights",
    "QC114": "fp8_static_per_tensor needs checkpoint scales",
    "QC115": "rule shadowed by a later rule with the same patterns",
    "QC116": "key mapping matches no catalog key",
    "QC117": "rule both skips and sets keys",
    "QC120": "extends: base file not found",
    "QC121": "extends: cycle",
    "QC122": "extends: version differs",
}


@dataclass(frozen=True)
class Layer:
    """What one file (with its bases merged in) contributes, before the top-level Config is built."""

    version: int | None
    kinds: dict[str, KindSetting] = field(default_factory=dict, hash=False)
    rules: tuple[Rule, ...] = ()
    ignore: tuple[Pattern, ...] = ()
    backend: dict[str, Setting] = field(default_factory=dict, hash=False)
    target: Target = Target()


# --- public API ----------------------------------------------------------------------------------


def check_config(path: str | os.PathLike) -> tuple[Config | None, tuple[Diagnostic, ...]]:
    """Every diagnostic of the file and its bases; the Config when there is no error."""
    ctx = _Context(os.path.dirname(os.path.abspath(os.fspath(path))))
    layer = ctx.load(os.fspath(path), os.fspath(path), chain=(), at=None)
    diags = tuple(ctx.diags)
    if layer is None:
        return None, diags
    layer = replace(layer, rules=tuple(replace(r, index=i) for i, r in enumerate(layer.rules)))
    diags += shadowed_rules(layer.rules)
    if has_errors(diags):
        return None, diags
    config = Config(
        version=layer.version or VERSION,
        path=os.fspath(path),
        files=tuple(ctx.files),
        kinds={k: layer.kinds.get(k, KindSetting()) for k in LAYER_KINDS},
        rules=layer.rules,
        ignore=layer.ignore,
        backend=dict(layer.backend),
        target=layer.target,
        sources=dict(ctx.sources),
    )
    return config, diags


def load_config(path: str | os.PathLike) -> Config:
    """The merged Config; raises QuantcError carrying every diagnostic when there is an error."""
    config, diags = check_config(path)
    if config is None:
        raise QuantcError(diags)
    return config


def check_files(paths: Iterable[str | os.PathLike]) -> list[tuple[str, Config | None, tuple[Diagnostic, ...]]]:
    return [(os.fspath(p), *check_config(p)) for p in paths]


# --- loading with extends ------------------------------------------------------------------------


class _Context:
    def __init__(self, top_dir: str):
        self.top_dir = top_dir
        self.diags: list[Diagnostic] = []
        self.files: list[tuple[str, str]] = []
        self.sources: dict[str, str] = {}
        self.done: dict[str, Layer | None] = {}  # realpath -> layer (a base shared by two parents)

    def load(self, path: str, display: str, chain: tuple[tuple[str, str], ...], at: Span | None) -> Layer | None:
        real = os.path.realpath(path)
        if real in self.done:
            return self.done[real]
        from .schema import schema_diagnostics

        doc, diags = load_document(path)
        self.diags.extend(diags)
        if doc is None:
            self.done[real] = None
            return None
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        self.files.append((os.path.relpath(real, self.top_dir), digest))
        self.sources[display] = doc.text
        self.diags.extend(schema_diagnostics(doc))
        own, extends, diags = file_layer(doc)
        self.diags.extend(diags)
        chain = chain + ((real, display),)
        merged: Layer | None = None
        for rel, span in extends:
            base = self._load_base(path, display, rel, span, chain)
            if base is None:
                continue
            if base.version is not None and own.version is not None and base.version != own.version:
                self.diags.append(Diagnostic("QC122", "error", f"base config {rel} has version {base.version}, "
                                             f"this file has {own.version}", span, "use the same `quantc:` version in every file"))
            merged = base if merged is None else merge_layers(merged, base)
        layer = own if merged is None else merge_layers(merged, own)
        self.done[real] = layer
        return layer

    def _load_base(self, path, display, rel, span, chain) -> Layer | None:
        base_path = os.path.join(os.path.dirname(path), rel)
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), rel))
        real = os.path.realpath(base_path)
        names = [d for r, d in chain]
        if real in [r for r, _ in chain]:
            cycle = " -> ".join(names[[r for r, _ in chain].index(real):] + [base_display])
            self.diags.append(Diagnostic("QC121", "error", f"extends cycle: {cycle}", span,
                                         "remove one of the `extends` entries in this chain"))
            return None
        if not os.path.isfile(base_path):
            self.diags.append(Diagnostic("QC120", "error", f"base config not found: {rel} (looked for {base_display})",
                                         span, "extends paths are relative to the file that names them"))
            return None
        return self.load(base_path, base_display, chain, span)


def merge_layers(base: Layer, over: Layer) -> Layer:
    """SPEC §3: kind settings and target per field (``over`` wins), rules appended, ignore united."""
    kinds = {}
    for kind in LAYER_KINDS:
        b, o = base.kinds.get(kind), over.kinds.get(kind)
        if b is None or o is None:
            if b or o:
                kinds[kind] = b or o
            continue
        kinds[kind] = KindSetting(*(o.get(f) or b.get(f) for f in FIELDS))
    seen = {p.text for p in base.ignore}
    ignore = base.ignore + tuple(p for p in over.ignore if p.text not in seen)
    bt, ot = base.target, over.target
    target = Target(
        gpu=ot.gpu or bt.gpu,
        tensor_parallel=ot.tensor_parallel if ot.tensor_parallel_span else bt.tensor_parallel,
        tensor_parallel_span=ot.tensor_parallel_span or bt.tensor_parallel_span,
        expert_parallel=ot.expert_parallel if ot.expert_parallel_span else bt.expert_parallel,
        expert_parallel_span=ot.expert_parallel_span or bt.expert_parallel_span,
    )
    return Layer(over.version if over.version is not None else base.version, kinds,
                 base.rules + over.rules, ignore, {**base.backend, **over.backend}, target)


# --- one file's semantic checks ------------------------------------------------------------------


def file_layer(doc: Document) -> tuple[Layer, list[tuple[str, Span]], list[Diagnostic]]:
    """The file's own settings (canonical names, spans, origins), its ``extends`` entries and the
    semantic diagnostics. Values of the wrong shape are skipped: the schema reports those."""
    data = doc.data if isinstance(doc.data, dict) else {}
    checker = _Checker(doc)
    version = data.get("quantc") if type(data.get("quantc")) is int else None
    kinds = {}
    for kind in LAYER_KINDS:
        if kind in data:
            setting = checker.kind_setting((kind,), kind, f"{kind} ({doc.file})")
            if setting is not None:
                kinds[kind] = setting
    rules = []
    for i, raw in enumerate(data.get("rules") or []) if isinstance(data.get("rules"), list) else ():
        rule = checker.rule(i, raw)
        if rule is not None:
            rules.append(rule)
    ignore = tuple(checker.patterns(("ignore",), data.get("ignore")))
    backend = {}
    if isinstance(data.get("backend"), dict):
        from .kernel_specs import FAMILIES

        for kind, family in data["backend"].items():
            if kind in LAYER_KINDS and isinstance(family, str) and family in FAMILIES:
                backend[kind] = Setting(family, doc.span_of(("backend", kind)), f"backend.{kind} ({doc.file})")
    target = checker.target(data.get("target"))
    extends = []
    raw_ext = data.get("extends")
    entries = [raw_ext] if isinstance(raw_ext, str) else raw_ext if isinstance(raw_ext, list) else []
    for i, rel in enumerate(entries):
        if isinstance(rel, str) and rel:
            path = ("extends",) if isinstance(raw_ext, str) else ("extends", i)
            extends.append((rel, doc.span_of(path)))
    return Layer(version, kinds, tuple(rules), ignore, backend, target), extends, checker.diags


class _Checker:
    def __init__(self, doc: Document):
        self.doc = doc
        self.diags: list[Diagnostic] = []

    def error(self, code: str, message: str, path: tuple, hint: str | None = None, severity="error", span=None):
        self.diags.append(Diagnostic(code, severity, message, span or self.doc.span_of(path), hint,
                                     format_path(path) or None))

    # kind settings ---------------------------------------------------------------------------

    def kind_setting(self, path: tuple, kind: str, origin: str) -> KindSetting | None:
        from .keys import SHORTHANDS

        value = self.doc.data
        for part in path:
            value = value[part]
        span = self.doc.span_of(path)
        if isinstance(value, str):
            if value not in SHORTHANDS:
                return None  # unknown shorthand: reported by the schema
            w, a = SHORTHANDS[value]
            weight, act = Setting(w, span, origin), Setting(a, span, origin)
            self._check_pair(path, kind, weight, act, shorthand=value)
            return KindSetting(weight, act)
        if not isinstance(value, dict):
            return None
        weight = self._key(path + ("weight",), "weight", value.get("weight"), origin)
        act = self._key(path + ("activation",), "activation", value.get("activation"), origin)
        if act is not None and act.value == "fp8_static_per_tensor":
            self.error("QC114", f"{format_path(path)}: activation fp8_static_per_tensor needs static scales "
                       "from a pre-quantized checkpoint", path + ("activation",),
                       "planning fails unless the checkpoint stores input scales; use fp8_dynamic_per_tensor "
                       "or fp8_dynamic_per_token otherwise", severity="warning")
        self._check_pair(path, kind, weight, act)
        return KindSetting(weight, act)

    def _key(self, path: tuple, role: str, value: Any, origin: str) -> Setting | None:
        from .keys import KEYS_BY_ROLE, key_from_mapping

        span = self.doc.span_of(path)
        if isinstance(value, str):
            return Setting(value, span, origin) if value in KEYS_BY_ROLE[role] else None
        if isinstance(value, dict) and _mapping_shape_ok(value):
            key, reason = key_from_mapping(role, value)
            if key is None:
                self.error("QC116", f"{format_path(path)}: {reason}", path,
                           f"write a {role} key name instead (valid: {', '.join(sorted(KEYS_BY_ROLE[role]))})")
                return None
            return Setting(key.name, span, origin)
        return None

    def _check_pair(self, path, kind, weight: Setting | None, act: Setting | None, shorthand: str | None = None):
        from .kernel_specs import activation_pairs

        if kind == "kv_cache" and weight is not None and weight.value != "none":
            hint = "write e.g. `kv_cache: {activation: fp8_dynamic_per_tensor}`; the KV cache stores activations only"
            where = path if shorthand else path + ("weight",)
            what = f"shorthand '{shorthand}' sets weight {weight.value}" if shorthand else f"weight {weight.value}"
            self.error("QC113", f"{format_path(path)}: the KV cache has no weights ({what}); its weight must be none",
                       where, hint)
            return
        if weight is None or act is None:
            return
        pairs = activation_pairs(kind, weight.value)
        if act.value not in pairs:
            where = path if shorthand else path + ("activation",)
            via = f" (shorthand '{shorthand}')" if shorthand else ""
            valid = ", ".join(sorted(pairs)) or "none at all"
            self.error("QC112", f"{format_path(path)}: no {kind} kernel pairs activation {act.value} with weight "
                       f"{weight.value}{via}", where, f"activations that pair with {weight.value} for {kind}: {valid}")

    # rules and patterns ----------------------------------------------------------------------

    def rule(self, i: int, raw: Any) -> Rule | None:
        if not isinstance(raw, dict):
            return None
        path = ("rules", i)
        label = f"rules[{i}] ({self.doc.file})"
        patterns = tuple(self.patterns(path + ("match",), raw.get("match")))
        kinds = {}
        for kind in LAYER_KINDS:
            if kind in raw:
                setting = self.kind_setting(path + (kind,), kind, label)
                if setting is not None:
                    kinds[kind] = setting
        skip = raw.get("skip") is True
        set_kinds = [k for k in LAYER_KINDS if k in raw]
        if skip and set_kinds:
            self.error("QC117", f"rules[{i}] has skip: true and also sets {', '.join(set_kinds)}", path,
                       "skip means weight and activation none for every kind; drop one of them")
        elif not set_kinds and not skip:
            self.error("QC111", f"rules[{i}] sets nothing", path,
                       "add linear/moe/kv_cache settings or `skip: true`, or remove the rule")
        if not patterns and raw.get("match") is None:
            return None
        return Rule(i, label, patterns, kinds, skip, self.doc.span_of(path))

    def patterns(self, path: tuple, raw: Any) -> list[Pattern]:
        entries = [(path, raw)] if isinstance(raw, str) else [(path + (j,), p) for j, p in enumerate(raw)] \
            if isinstance(raw, list) else []
        out = []
        for p_path, text in entries:
            if not isinstance(text, str) or not text:
                continue  # wrong type / empty: reported by the schema
            span = self.doc.span_of(p_path)
            if text.startswith("re:"):
                try:
                    re.compile(text[3:])
                except re.error as exc:
                    col = self._raw_col(span, 3 + (exc.pos or 0))
                    self.error("QC110", f"invalid regular expression in {format_path(p_path)}: {exc.msg} "
                               f"at position {exc.pos}", p_path,
                               "the pattern after `re:` is a Python regex matched with re.fullmatch",
                               span=Span(span.file, span.line, col) if span.line else span)
            out.append(Pattern(text, span))
        return out

    def _raw_col(self, span: Span, offset: int) -> int:
        """Column of the ``offset``-th decoded character of the string value at ``span``: skips the
        opening quote and counts each escape sequence (``\\.``, ``\\xNN``, ``''``) as one character."""
        lines = self.doc.text.splitlines()
        if not 0 < span.line <= len(lines):
            return span.col
        line, i = lines[span.line - 1], span.col - 1
        quote = line[i] if i < len(line) and line[i] in "\"'" else ""
        i += len(quote)
        for _ in range(offset):
            if i >= len(line):
                break
            if quote == '"' and line[i] == "\\":
                i += {"x": 4, "u": 6, "U": 10}.get(line[i + 1: i + 2], 2)
            elif quote == "'" and self.doc.format == "yaml" and line[i: i + 2] == "''":
                i += 2
            else:
                i += 1
        return i + 1

    # target ----------------------------------------------------------------------------------

    def target(self, raw: Any) -> Target:
        from .gpus import GPUS

        if not isinstance(raw, dict):
            return Target()
        file = self.doc.file
        gpu = raw.get("gpu")
        tp = raw.get("tensor_parallel")
        ep = raw.get("expert_parallel")
        tp_ok = type(tp) is int and tp >= 1
        ep_ok = type(ep) is bool
        return Target(
            gpu=Setting(gpu, self.doc.span_of(("target", "gpu")), f"target.gpu ({file})") if isinstance(gpu, str) and gpu in GPUS else None,
            tensor_parallel=tp if tp_ok else 1,
            tensor_parallel_span=self.doc.span_of(("target", "tensor_parallel")) if tp_ok else None,
            expert_parallel=ep if ep_ok else False,
            expert_parallel_span=self.doc.span_of(("target", "expert_parallel")) if ep_ok else None,
        )


def _mapping_shape_ok(value: dict) -> bool:
    """Only mappings the schema accepts are matched against the catalog (others are reported there)."""
    from .keys import MAPPING_FIELDS, SCALE_FIELDS

    if any(k not in MAPPING_FIELDS for k in value):
        return False
    for name in ("scale", "global_scale"):
        scale = value.get(name)
        if scale is not None and (not isinstance(scale, dict) or any(k not in SCALE_FIELDS for k in scale)):
            return False
    return True


# --- syntactic shadowing ---------------------------------------------------------------------------


def _fields_set(rule: Rule) -> set[tuple[str, str]]:
    if rule.skip:
        return {(k, f) for k in LAYER_KINDS for f in FIELDS}
    return {(k, f) for k, s in rule.kinds.items() for f in FIELDS if s.get(f) is not None}


def shadowed_rules(rules: tuple[Rule, ...]) -> tuple[Diagnostic, ...]:
    """A rule is shadowed (syntactically) when a later rule with the same patterns sets every field it
    sets. Lowering does the model-aware check (different patterns that cover the same modules)."""
    out = []
    for i, rule in enumerate(rules):
        mine = _fields_set(rule)
        texts = {p.text for p in rule.patterns}
        if not mine or not texts:
            continue
        for later in rules[i + 1:]:
            if {p.text for p in later.patterns} == texts and mine <= _fields_set(later):
                out.append(Diagnostic("QC115", "warning", f"{rule.label} is shadowed by {later.label}: same match "
                                      "patterns, and it sets every field this rule sets", rule.span,
                                      "remove this rule, or merge the two", None, ((later.label, later.span),)))
                break
    return tuple(out)
