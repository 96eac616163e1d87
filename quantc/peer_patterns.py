"""The module-name pattern languages of other tools, matched exactly as their loaders do, and
translated into quantc's own language (SPEC §3 Patterns).

Semantics replicated (``name`` is a full dotted module name):

==================  ==========================================================================
``ct``              compressed-tensors ``targets``/``ignore``: ``re:X`` is ``re.match(X, name)``
                    (anchored at the start only); a plain string is a class name (``Linear``) or
                    an exact module name.
``transformers``    transformers ``modules_to_not_convert`` (fp8, mxfp4): the walk skips a whole
                    subtree, so a key applies to the module or any ancestor ``a``. Older releases
                    test ``key in a`` (substring: ``mlp.gate`` also hits ``mlp.gate_proj``), newer
                    ones ``re.match(key, a)`` or ``a.endswith(key)`` (``model.layers.*.self_attn``
                    works as a regex). A checkpoint of either era was written by one of them, so a
                    module is excluded when any of the tests holds.
``substring``       AWQ ``modules_to_not_convert`` (vLLM ``is_layer_skipped_awq``): ``key in name``.
``exact``           vLLM fp8 ``ignored_layers``: the module's full name, or one of its ancestors'.
``fnmatch``         ModelOpt ``exclude_modules``: ``fnmatchcase`` (``*`` crosses dots) on the name or
                    an ancestor's name: a listed parent covers its children.
==================  ==========================================================================

Matching is cached per *name shape* (``quantc.patterns.name_shape``) for every pattern that cannot
tell two layer indices apart; patterns that can (digits, ``\\d``, ``[``, a bare ``.``...) are tested
per name. Each group of patterns is compiled into one regular expression, so a 45k-module map
costs one C-level match per shape or name.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable

from .patterns import name_shape  # one shape function for the whole compiler

SEMANTICS = ("ct", "transformers", "substring", "exact", "fnmatch")

# The class name every quantizable kind has in HF modeling code (nn.Linear); fused gpt-oss expert
# tensors are not Linear modules.
_CLASS_OF_KIND = {
    "linear": "Linear",
    "lm_head": "Linear",
    "router": "Linear",
    "moe_experts": "Linear",
    "embedding": "Embedding",
}

def class_name(kind: str, num_experts: int = 1) -> str | None:
    if kind == "moe_experts" and num_experts > 1:
        return None  # a fused 3D expert tensor (gpt-oss) is no nn.Linear
    return _CLASS_OF_KIND.get(kind)


# --- shape safety ------------------------------------------------------------------------------

# Regex pieces that can tell "12" from "#": digits, classes, counted repeats, a lone any-char.
_REGEX_INDEX_SENSITIVE = re.compile(r"\d|\\[dDwWsSbB]|\[|\{|\.(?![*+])")


def _regex_shape_safe(regex: str) -> bool:
    stripped = re.sub(r"\\[.\-_/]", "x", regex)  # escaped literals are plain characters
    return not _REGEX_INDEX_SENSITIVE.search(stripped)


def _literal_shape_safe(text: str) -> bool:
    return not any(c.isdigit() for c in text)


def _glob_shape_safe(text: str) -> bool:
    return _literal_shape_safe(text) and not any(c in text for c in "?[")


# --- one peer pattern, as regular expressions ----------------------------------------------------


def _parts(semantics: str, pattern: str) -> list[tuple[str, str, bool]]:
    """(mode, regex, shape-safe) triples whose union is the pattern; mode "match" is ``re.match``
    on the module's own name (ancestor semantics folded in), "search" is ``re.search`` of a literal.
    compressed-tensors plain strings and ``exact`` entries are handled as literals by the caller."""
    if semantics == "ct":
        body = pattern[3:]
        if not _compiles(body):
            return []  # reported by invalid_regexes(); matches nothing
        return [("match", f"(?:{body})", _regex_shape_safe(body))]
    if semantics == "substring":
        return [("search", re.escape(pattern), _literal_shape_safe(pattern))]
    if semantics == "fnmatch":
        return [("match", _glob_ancestor_regex(pattern), _glob_shape_safe(pattern))]
    if semantics == "transformers":
        # substring (covers endswith; ancestors are prefixes), then re.match on the name or a prefix
        out = [("search", re.escape(pattern), _literal_shape_safe(pattern))]
        if _compiles(pattern):
            out.append(("match", f"(?:{pattern})", _literal_shape_safe(pattern) and _regex_shape_safe(pattern)))
        return out
    raise ValueError(f"unknown pattern semantics {semantics!r}")


def _glob_ancestor_regex(glob: str) -> str:
    # fnmatch.translate gives (?s:...)\Z; matching the name or an ancestor = the glob followed by
    # the end or a dot (the rest of the name is then below a matched ancestor).
    core = fnmatch.translate(glob)
    assert core.startswith("(?s:") and core.endswith(")\\Z")
    return core[:-2] + r"(?:\.|\Z)"


def _compiles(regex: str) -> bool:
    try:
        re.compile(regex)
    except re.error:
        return False
    return True


@dataclass(frozen=True)
class PeerPatterns:
    """A list of one tool's patterns, matched with that tool's semantics.

    Split for speed: ``matches_name`` tests what depends on the exact name (index-testing regexes,
    literal names: a set lookup), ``matches_shape`` what only depends on the name shape and kind.
    """

    semantics: str
    patterns: tuple[str, ...]
    _safe_re: re.Pattern | None = field(default=None, repr=False, compare=False)
    _name_re: re.Pattern | None = field(default=None, repr=False, compare=False)
    _name_search: re.Pattern | None = field(default=None, repr=False, compare=False)
    _exact: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _safe_classes: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, semantics: str, patterns: Iterable[str]) -> "PeerPatterns":
        patterns = tuple(patterns)
        safe, unsafe, unsafe_lit, classes, exact = [], [], [], set(), set()
        for p in patterns:
            if semantics == "exact" or (semantics == "ct" and not p.startswith("re:")):
                if semantics == "ct" and ct_target_priority(p) == 0:
                    classes.add(p)
                else:
                    exact.add(p)
                continue
            for mode, regex, is_safe in _parts(semantics, p):
                if is_safe:  # on a shape, a search is a match after any prefix
                    safe.append(regex if mode == "match" else ".*" + regex)
                else:
                    (unsafe if mode == "match" else unsafe_lit).append(regex)
        comp = lambda parts: re.compile("|".join(f"(?:{p})" for p in parts), re.S) if parts else None
        return cls(semantics, patterns, comp(safe), comp(unsafe), comp(unsafe_lit), frozenset(exact),
                   frozenset(classes))

    def invalid_regexes(self) -> list[tuple[int, str, str]]:
        """(index, pattern, reason) of ``re:`` entries that do not compile."""
        out = []
        for i, p in enumerate(self.patterns):
            if self.semantics == "ct" and p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    out.append((i, p, str(e)))
        return out

    @property
    def shape_only(self) -> bool:
        return self._name_re is None and self._name_search is None and not self._exact

    def matches_name(self, name: str) -> bool:
        if self._exact:
            if name in self._exact:
                return True
            if self.semantics == "exact":  # an ancestor listed
                i = name.rfind(".")
                while i > 0:
                    if name[:i] in self._exact:
                        return True
                    i = name.rfind(".", 0, i)
        if self._name_search is not None and self._name_search.search(name):
            return True
        return self._name_re is not None and self._name_re.match(name) is not None

    def matches_shape(self, shape: str, kind: str = "linear", num_experts: int = 1) -> bool:
        if self._safe_classes:
            cname = class_name(kind, num_experts)
            if cname is not None and cname in self._safe_classes:
                return True
        if self._safe_re is None:
            return False
        hit = self._cache.get(shape)
        if hit is None:
            hit = self._cache[shape] = self._safe_re.match(shape) is not None
        return hit

    def matches(self, name: str, kind: str = "linear", num_experts: int = 1) -> bool:
        if self.matches_name(name):
            return True
        if self._safe_re is None and not self._safe_classes:
            return False
        return self.matches_shape(name_shape(name), kind, num_experts)

    def which(self, name: str, kind: str = "linear", num_experts: int = 1) -> list[str]:
        """The patterns that match (slow path, for messages and tests)."""
        return [p for p in self.patterns if PeerPatterns.build(self.semantics, [p]).matches(name, kind, num_experts)]

    def has_class_targets(self) -> bool:
        return bool(self._safe_classes)


def ct_target_priority(pattern: str) -> int:
    """vLLM's compressed-tensors target resolution: exact name (2) beats ``re:`` (1) beats a class
    name (0)."""
    if pattern.startswith("re:"):
        return 1
    return 0 if pattern in set(_CLASS_OF_KIND.values()) or pattern[:1].isupper() else 2


# --- quantc's own pattern language, and translation into it -----------------------------------


_GLOB_META = set("*?[]")
_REGEX_META = set(".^$*+?{}[]\\|()")


def to_quantc(semantics: str, pattern: str) -> str | None:
    """The quantc pattern that matches exactly the module names ``pattern`` matches under
    ``semantics``; None for a compressed-tensors class name (no name pattern expresses it)."""
    plain = not (set(pattern) & _GLOB_META)
    if semantics == "ct":
        if pattern.startswith("re:"):
            # re.match(X, name) == fullmatch of X followed by anything; an ancestor match implies
            # a match on the name itself (same prefix), so ancestor semantics add nothing.
            return f"re:(?:{pattern[3:]}).*"
        if ct_target_priority(pattern) == 0:
            return None
        # exact leaf name; a Linear has no module children, so ancestor semantics add nothing
        return pattern if plain else "re:" + re.escape(pattern)
    if semantics == "substring":
        return f"*{pattern}*" if plain else f"re:.*{re.escape(pattern)}.*"
    if semantics == "exact":
        return pattern if plain else "re:" + re.escape(pattern)
    if semantics == "fnmatch":
        return pattern  # the same glob, the same ancestor rule
    if semantics == "transformers":
        if not (set(pattern) & _REGEX_META) or not _compiles(pattern):
            # re.match of a literal is a prefix test, implied by the substring test
            return f"*{pattern}*" if plain else f"re:.*{re.escape(pattern)}.*"
        return f"re:.*{re.escape(pattern)}.*|(?:{pattern}).*"
    raise ValueError(f"unknown pattern semantics {semantics!r}")
