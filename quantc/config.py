"""The validated, merged config that lowering consumes: plain frozen values that keep their spans.

``quantc.validate.load_config`` produces a ``Config`` from one file (its ``extends`` bases merged in);
every key name in it is canonical (shorthands expanded, mappings matched to catalog names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span

LAYER_KINDS = ("linear", "moe", "kv_cache")
FIELDS = ("weight", "activation")


@dataclass(frozen=True)
class Setting:
    """One field's value (a canonical key name) and the place that wrote it."""

    value: str
    span: Span
    origin: str  # human label: "linear (examples/a.yaml)", "rules[2]", "--set", "built-in default"


@dataclass(frozen=True)
class KindSetting:
    """A layer kind's (weight, activation); None = unset, so a lower level's value is kept."""

    weight: Setting | None = None
    activation: Setting | None = None

    def get(self, field_name: str) -> Setting | None:
        return getattr(self, field_name)

    def is_empty(self) -> bool:
        return self.weight is None and self.activation is None


@dataclass(frozen=True)
class Pattern:
    """A module pattern: a glob (fnmatchcase on dotted names, ``*`` crosses dots) or ``re:`` + regex
    (re.fullmatch). Matches a module when it matches its name or one of its ancestors' names."""

    text: str
    span: Span

    @property
    def is_regex(self) -> bool:
        return self.text.startswith("re:")


@dataclass(frozen=True)
class Rule:
    index: int  # position in the merged rule list
    label: str  # "rules[2] (examples/base.yaml)"
    patterns: tuple[Pattern, ...]
    kinds: dict[str, KindSetting] = field(default_factory=dict, hash=False)  # linear/moe/kv_cache -> setting
    skip: bool = False
    span: Span = Span("")


@dataclass(frozen=True)
class Target:
    gpu: Setting | None = None
    tensor_parallel: int = 1
    tensor_parallel_span: Span | None = None
    expert_parallel: bool = False
    expert_parallel_span: Span | None = None


@dataclass(frozen=True)
class Config:
    version: int
    path: str  # the top-level file
    files: tuple[tuple[str, str], ...]  # (path relative to the top-level file's folder, sha256) in load order
    kinds: dict[str, KindSetting] = field(hash=False)  # merged kind defaults (bases, then this file)
    rules: tuple[Rule, ...] = ()
    ignore: tuple[Pattern, ...] = ()
    backend: dict[str, Setting] = field(default_factory=dict, hash=False)  # layer kind -> family
    target: Target = Target()
    sources: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # file -> text
