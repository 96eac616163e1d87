"""The compiled plan (SPEC §5): a frozen value, its JSON form, atomic save and checked load.

JSON layout (``schemas/plan.schema.json``)::

    {"format": "quantc-plan", "version": 1, "hash": "<sha256 of the rest>",
     "sources": [{"path", "sha256"}], "model": {...}, "target": {...}, "tuned_on": {...},
     "summary": {...}, "warnings": [...],
     "kernels": {"<entry id>": {"kernel", "n", "k", "source", "buckets": [[m_max, {config}], ...]}},
     "groups": [{"names": [<name templates>], "entry": {<fields shared by the group>}}]}

Modules with identical entries are stored once per group, and their names as templates whose
``{a-b}`` / ``{a,b,c}`` parts expand to layer and expert indices, so a 45,000-module DeepSeek-V3 plan
is a few hundred groups. The bytes are deterministic: same inputs, same file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from .diagnostics import Diagnostic, QuantcError, Span

PLAN_FORMAT = "quantc-plan"
PLAN_VERSION = 1
M_MAX_LAST = 2**31 - 1


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1


@dataclass(frozen=True)
class KernelTableEntry:
    id: str
    kernel: str
    n: int
    k: int
    buckets: tuple[tuple[int, KernelConfig], ...]
    source: str = "default"  # "tuned", "nearest n=..,k=..", "default", "h100 table (no h200 entry)"

    def config_for(self, m: int) -> KernelConfig:
        for m_max, config in self.buckets:
            if m <= m_max:
                return config
        return self.buckets[-1][1]


class ModulePlan(NamedTuple):
    """One module's resolved entry. A NamedTuple rather than a frozen dataclass: plans of 100k
    modules build and load one of these per module, and tuple construction is several times cheaper."""

    name: str
    kind: str
    n: int
    k: int
    num_experts: int
    layer: int | None
    weight: str
    activation: str
    method: str
    kernel: str | None
    kernel_entry: str | None
    fused_group: str | None
    moe_block: str | None
    tp_split: str
    provenance: dict


_GROUPED_FIELDS = [f for f in ModulePlan._fields if f not in ("name", "layer", "fused_group", "moe_block")]
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


# --- name templates ----------------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"\d+")


def _ranges(values: list[int]) -> str:
    values = sorted(set(values))
    parts, start, prev = [], values[0], values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = v
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def _parse_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def compress_names(names: list[str]) -> list[str]:
    """Names -> templates. A template is exact: it expands to precisely the names it came from."""
    by_shape: dict[str, list[tuple[str, ...]]] = {}
    order: list[str] = []
    for name in names:
        if "{" in name or "}" in name:
            raise ValueError(f"module name with braces cannot be templated: {name}")
        shape = _DIGIT_RUN.sub("{}", name)
        nums = tuple(_DIGIT_RUN.findall(name))
        if shape not in by_shape:
            by_shape[shape] = []
            order.append(shape)
        by_shape[shape].append(nums)
    out: list[str] = []
    for shape in order:
        out.extend(_compress_shape(shape, by_shape[shape]))
    return out


def compress_same_shape(shape0: str, names: list[str]) -> list[str]:
    """``compress_names`` for names already known to share ``shape0`` (digit runs replaced by one
    ``0``, as ``patterns.name_shape`` makes): every ``0`` in it stands for exactly one digit run."""
    return _compress_shape(shape0.replace("0", "{}"), [tuple(_DIGIT_RUN.findall(n)) for n in names])


def _compress_shape(shape: str, tuples: list[tuple[str, ...]]) -> list[str]:
    if not tuples[0]:
        return [shape]
    # only canonical decimal numbers (no leading zeros) can be turned into ranges
    if any(len(d) > 1 and d[0] == "0" for t in tuples for d in t):
        return [shape.format(*t) for t in tuples]
    # split on the first position into rows that share the remaining positions
    rows: dict[tuple[str, ...], list[int]] = {}
    for t in tuples:
        rows.setdefault(t[1:], []).append(int(t[0]))
    # rows whose first-position sets are equal collapse into one template per distinct set
    by_set: dict[tuple[int, ...], list[tuple[str, ...]]] = {}
    for rest, firsts in rows.items():
        by_set.setdefault(tuple(sorted(set(firsts))), []).append(rest)
    out = []
    for firsts, rests in by_set.items():
        first = "{" + _ranges(list(firsts)) + "}" if len(firsts) > 1 else str(firsts[0])
        head, tail = shape.split("{}", 1)
        if rests and rests[0]:
            for sub in _compress_shape(tail, rests):
                out.append(head + first + sub)
        else:
            out.append(head + first + tail)
    return out


_TEMPLATE_PART = re.compile(r"\{([0-9,\-]+)\}")


def expand_template(template: str) -> list[str]:
    parts = _TEMPLATE_PART.split(template)
    literals, choices = parts[0::2], [_parse_ranges(p) for p in parts[1::2]]
    if not choices:
        return [template]
    out = []
    for combo in itertools.product(*choices):
        pieces = [literals[0]]
        for value, lit in zip(combo, literals[1:]):
            pieces.append(str(value))
            pieces.append(lit)
        out.append("".join(pieces))
    return out


# --- the plan --------------------------------------------------------------------------------


class Plan:
    """A resolved plan: every module's entry, the kernel table, target and provenance."""

    def __init__(
        self,
        *,
        modules: tuple[ModulePlan, ...] | None = None,
        kernels: dict[str, KernelTableEntry],
        target: dict,
        model: dict,
        sources: list[dict],
        summary: dict,
        warnings: list[str],
        tuned_on: dict,
        groups: list | None = None,
        version: int = PLAN_VERSION,
        content_hash: str | None = None,
    ):
        self.version = version
        self.kernels = kernels
        self.target = target
        self.model = model
        self.sources = sources
        self.summary = summary
        self.warnings = warnings
        self.tuned_on = tuned_on
        self._modules = modules
        self._groups = groups
        self._index: dict[str, ModulePlan] | None = None
        self._hash = content_hash

    # modules are expanded from groups lazily: loading a plan stays cheap
    @property
    def modules(self) -> tuple[ModulePlan, ...]:
        if self._modules is None:
            self._modules = tuple(_expand_groups(self._groups or []))
        return self._modules

    def module(self, name: str) -> ModulePlan | None:
        if self._index is None:
            self._index = {m.name: m for m in self.modules}
        return self._index.get(name)

    def kernel_config(self, module: ModulePlan, m: int) -> KernelConfig | None:
        if module.kernel_entry is None:
            return None
        return self.kernels[module.kernel_entry].config_for(m)

    # --- JSON ---
    def to_dict(self) -> dict:
        body = {
            "format": PLAN_FORMAT,
            "version": self.version,
            "sources": self.sources,
            "model": self.model,
            "target": self.target,
            "tuned_on": self.tuned_on,
            "summary": self.summary,
            "warnings": self.warnings,
            "kernels": {
                kid: {
                    "kernel": e.kernel,
                    "n": e.n,
                    "k": e.k,
                    "source": e.source,
                    "buckets": [[m_max, asdict(cfg)] for m_max, cfg in e.buckets],
                }
                for kid, e in sorted(self.kernels.items())
            },
            "groups": self._groups if self._groups is not None else _group_modules(self.modules),
        }
        body["hash"] = _content_hash(body)
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @property
    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = self.to_dict()["hash"]
        return self._hash

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temporary file in the same folder, then a rename."""
        write_atomic(Path(path), self.to_json())


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent or "."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _content_hash(body: dict) -> str:
    clean = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _group_modules(modules: tuple[ModulePlan, ...]) -> list:
    from .patterns import name_shape

    groups: dict[tuple, tuple[dict, list[str]]] = {}
    for m in modules:
        # fused_group / moe_block are stored relative to the name, so whole layers share one group
        fused, moe = _relative(m.name, m.fused_group), _relative(m.name, m.moe_block)
        layer_from_name = m.layer == _layer_of(m.name)
        key = (m.kind, m.n, m.k, m.num_experts, m.weight, m.activation, m.method, m.kernel, m.kernel_entry, m.tp_split,
               tuple(sorted(m.provenance.items())), _freeze(fused), _freeze(moe), layer_from_name,
               None if layer_from_name else m.layer)
        slot = groups.get(key)
        if slot is None:
            entry = {f: getattr(m, f) for f in _GROUPED_FIELDS}
            entry["derived"] = {"fused_group": fused, "moe_block": moe}
            entry["layer_from_name"] = layer_from_name
            if not layer_from_name:
                entry["layer"] = m.layer
            slot = groups[key] = (entry, [])
        slot[1].append(m.name)
    out = []
    for entry, names in groups.values():
        by_shape: dict[str, list[str]] = {}
        for n in names:
            by_shape.setdefault(name_shape(n), []).append(n)
        templates = [t for shape, members in by_shape.items() for t in compress_same_shape(shape, members)]
        out.append({"entry": entry, "names": templates})
    return out


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


def _relative(name: str, value: str | None):
    """Store a related name as (levels up, suffix) from the module's own name when possible."""
    if value is None:
        return None
    parts = name.split(".")
    for up in range(len(parts), 0, -1):
        prefix = ".".join(parts[:up])
        if value == prefix:
            return [len(parts) - up, ""]
        if value.startswith(prefix + "."):
            return [len(parts) - up, value[len(prefix) + 1 :]]
    return value


def _resolve_relative(name: str, rel) -> str | None:
    if rel is None or isinstance(rel, str):
        return rel
    up, suffix = rel
    parts = name.split(".")
    base = ".".join(parts[: len(parts) - up])
    return f"{base}.{suffix}" if suffix else base


def _expand_groups(groups: list) -> list[ModulePlan]:
    out = []
    for group in groups:
        entry = dict(group["entry"])
        derived = entry.pop("derived")
        layer_from_name = entry.pop("layer_from_name")
        fixed_layer = entry.pop("layer", None)
        for template in group["names"]:
            for name in expand_template(template):
                out.append(
                    ModulePlan(
                        name=name,
                        layer=_layer_of(name) if layer_from_name else fixed_layer,
                        fused_group=_resolve_relative(name, derived["fused_group"]),
                        moe_block=_resolve_relative(name, derived["moe_block"]),
                        **entry,
                    )
                )
    return out


def plan_from_dict(data: dict, origin: str = "<plan>") -> Plan:
    problems = []
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise QuantcError([Diagnostic("QC501", "error", "not a quantc compiled plan (missing \"format\": \"quantc-plan\")", Span(origin),
                                      hint="compile one with `quantc compile CONFIG --model M -o plan.json`")])
    if data.get("version") != PLAN_VERSION:
        problems.append(Diagnostic("QC502", "error", f"plan format version {data.get('version')!r} is not supported (this quantc reads version {PLAN_VERSION})",
                                   Span(origin), hint="recompile the plan with this version of quantc"))
    expected = _content_hash(data)
    if data.get("hash") != expected:
        problems.append(Diagnostic("QC503", "error", "plan content does not match its hash: the file was edited or truncated",
                                   Span(origin), hint="recompile the plan instead of editing it"))
    if problems:
        raise QuantcError(problems)
    try:
        kernels = {
            kid: KernelTableEntry(
                id=kid,
                kernel=e["kernel"],
                n=e["n"],
                k=e["k"],
                source=e.get("source", "default"),
                buckets=tuple((m_max, KernelConfig(**cfg)) for m_max, cfg in e["buckets"]),
            )
            for kid, e in data["kernels"].items()
        }
        return Plan(
            kernels=kernels,
            target=data["target"],
            model=data["model"],
            sources=data["sources"],
            summary=data["summary"],
            warnings=data["warnings"],
            tuned_on=data["tuned_on"],
            groups=data["groups"],
            version=data["version"],
            content_hash=data["hash"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise QuantcError([Diagnostic("QC504", "error", f"malformed plan: {exc!r}", Span(origin),
                                      hint="recompile the plan")]) from None


def load_plan(path: str | os.PathLike) -> Plan:
    """Load and check a compiled plan (format, version, self-hash). Raises QuantcError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantcError([Diagnostic("QC500", "error", f"cannot read plan: {exc}", Span(str(path)))]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuantcError([Diagnostic("QC501", "error", f"plan is not valid JSON: {exc.msg}", Span(str(path), exc.lineno, exc.colno),
                                      hint="recompile the plan")]) from None
    return plan_from_dict(data, str(path))
