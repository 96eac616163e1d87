"""Module patterns (SPEC §3): one language, matched fast on 100k-module models.

A glob is matched with ``fnmatchcase`` against the full dotted name (``*`` crosses dots); ``re:`` +
regex is a ``re.fullmatch``. A pattern matches a module when it matches the module's name or the name
of one of its ancestors (whole dotted components): ``model.visual`` covers everything under it and
``*.mlp.gate`` never touches ``mlp.gate_proj``.

Speed: most patterns cannot tell one layer index from another (``*.self_attn.q_proj``). For those, the
answer is the same for every name of one *shape* (digit runs replaced by ``0``), so it is computed once
per shape. A pattern that might test digits (``re:model\\.layers\\.(0|1)\\..*``, ``layers.1?.*``) is
matched per name; ancestors shared by many modules are cached either way.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Iterable

_DIGITS = re.compile(r"\d+")


_SHAPES: dict[str, str] = {}


def name_shape(name: str) -> str:
    """``model.layers.17.mlp`` -> ``model.layers.0.mlp``. Memoised: lowering, checkpoint matching and
    reports all ask for the shape of the same 45,000 names."""
    shape = _SHAPES.get(name)
    if shape is None:
        if len(_SHAPES) > 2_000_000:
            _SHAPES.clear()
        shape = _SHAPES[name] = _DIGITS.sub("0", name)
    return shape


def ancestors_and_self(name: str) -> list[str]:
    """``a.b.c`` -> ``[a.b.c, a.b, a]``."""
    out = [name]
    i = name.rfind(".")
    while i > 0:
        name = name[:i]
        out.append(name)
        i = name.rfind(".")
    return out


# Regex pieces that treat every digit run alike: literals other than digits and word classes, `.*`,
# groups and alternation. Anything else (a digit, `\d`, `[`, `{`, `?`, a bare `.`) might look at digits.
_SHAPE_SAFE_RE_TOKEN = re.compile(r"\\[^\w]|\.\*|[^\\\d\[\]{}?.+\w]|[A-Za-z_]|\((?!\?)|\)")


def _regex_is_shape_safe(regex: str) -> bool:
    pos = 0
    while pos < len(regex):
        m = _SHAPE_SAFE_RE_TOKEN.match(regex, pos)
        if not m:
            return False
        pos = m.end()
    return True


def _glob_is_shape_safe(glob: str) -> bool:
    return not any(c.isdigit() or c in "?[" for c in glob)


_REGEX_META = set(".^$*+?{}[]\\|()")


def literal_prefix(text: str) -> str:
    """A prefix every string the pattern matches must start with ("" when none is certain).

    Lets the per-name path skip a pattern for every module outside, say, ``model.layers.7.``: a
    string that an ancestor-or-self match needs starts with the prefix only if the name does."""
    if not text.startswith("re:"):
        out = []
        for c in text:
            if c in "*?[":
                break
            out.append(c)
        return "".join(out)
    regex = text[3:]
    if _has_top_level_alternation(regex):
        return ""
    out = []
    i = 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            if i + 1 < len(regex) and not regex[i + 1].isalnum():
                out.append(regex[i + 1])
                i += 2
                continue
            break
        if c in _REGEX_META:
            if c in "*?{" and out:
                out.pop()  # the quantifier makes the previous literal optional
            break
        out.append(c)
        i += 1
    return "".join(out)


def _has_top_level_alternation(regex: str) -> bool:
    depth, i = 0, 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # skip a character class: `[]...]`, `[^]...]` and escapes inside
            i += 1
            if i < len(regex) and regex[i] == "^":
                i += 1
            if i < len(regex) and regex[i] == "]":
                i += 1
            while i < len(regex) and regex[i] != "]":
                i += 2 if regex[i] == "\\" else 1
            i += 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _covers_descendants(text: str) -> bool:
    """True when matching an ancestor implies matching every name under it: the pattern ends in an
    unrestricted ``.*`` (a glob's trailing ``*``), which absorbs the rest of any longer name. Then the
    module's own name alone decides, and its ancestors need not be tried."""
    if not text.startswith("re:"):
        return text.endswith("*") and not text.endswith("[*]")
    regex = text[3:]
    if not regex.endswith(".*") or _has_top_level_alternation(regex):
        return False
    backslashes = len(regex[:-2]) - len(regex[:-2].rstrip("\\"))
    return backslashes % 2 == 0  # `\.*` is a literal dot repeated, not "anything"


@dataclass(frozen=True)
class CompiledPattern:
    text: str
    fullmatch: Callable[[str], object]
    shape_safe: bool
    prefix: str = ""
    covers_descendants: bool = False


def compile_pattern(text: str) -> CompiledPattern:
    """Compile a pattern; raises re.error for a regex that does not compile (validation reports it)."""
    if text.startswith("re:"):
        regex = text[3:]
        compiled = re.compile(regex)
        return CompiledPattern(text, compiled.fullmatch, _regex_is_shape_safe(regex), literal_prefix(text),
                               _covers_descendants(text))
    compiled = re.compile(fnmatch.translate(text))
    return CompiledPattern(text, compiled.match, _glob_is_shape_safe(text), literal_prefix(text),
                           _covers_descendants(text))


class PatternSet:
    """Answers "which of these patterns match module X" for many modules, with caches."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = [compile_pattern(p) for p in patterns]
        self._by_string: list[dict[str, bool]] = [{} for _ in self.patterns]

    def _matches_string(self, i: int, s: str) -> bool:
        cache = self._by_string[i]
        hit = cache.get(s)
        if hit is None:
            hit = cache[s] = self.patterns[i].fullmatch(s) is not None
        return hit

    def matches(self, i: int, name: str, shape: str | None = None) -> bool:
        pattern = self.patterns[i]
        if pattern.shape_safe:
            key = shape if shape is not None else name_shape(name)
            cache = self._by_string[i]
            hit = cache.get("\0" + key)
            if hit is None:
                if pattern.covers_descendants:
                    hit = pattern.fullmatch(key) is not None
                else:
                    hit = any(pattern.fullmatch(a) is not None for a in ancestors_and_self(key))
                cache["\0" + key] = hit
            return hit
        if not name.startswith(pattern.prefix):
            return False
        if pattern.covers_descendants:
            return pattern.fullmatch(name) is not None
        return any(self._matches_string(i, a) for a in ancestors_and_self(name))
