"""Diagnostics as values: a source span, a diagnostic, and the reporters that print them.

Every stage returns its result together with a tuple of diagnostics and never stops at the first
problem. Only the CLI and the public API turn error diagnostics into an exit code or an exception.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True, order=True)
class Span:
    """A place in a source file; line and col are 1-based. ``line == 0`` means "the file as a whole"."""

    file: str
    line: int = 0
    col: int = 0
    end_col: int | None = None

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col or 1}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in an input.

    ``code`` is a stable identifier (``QC101``...) that tests and tools match on; ``path`` is the key
    path inside the document (``rules[2].match``) when one is known, which is how TOML and JSON errors
    are located even where no line is known.
    """

    code: str
    severity: Severity
    message: str
    span: Span | None = None
    hint: str | None = None
    path: str | None = None
    related: tuple[tuple[str, Span], ...] = field(default=())

    def render_short(self) -> str:
        where = str(self.span) if self.span else "<input>"
        path = f" [{self.path}]" if self.path else ""
        return f"{where}: {self.severity}: {self.code} {self.message}{path}"

    def to_dict(self) -> dict:
        out: dict = {"code": self.code, "severity": self.severity, "message": self.message}
        if self.span:
            out["file"] = self.span.file
            out["line"] = self.span.line
            out["col"] = self.span.col
        if self.path:
            out["path"] = self.path
        if self.hint:
            out["hint"] = self.hint
        if self.related:
            out["related"] = [{"label": label, "at": str(span)} for label, span in self.related]
        return out


class QuantcError(Exception):
    """Raised by the public API when a stage produced errors; carries every diagnostic."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = tuple(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"] or list(self.diagnostics)
        head = errors[0].render_short() if errors else "quantc error"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(head + more)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def promote_warnings(diagnostics: Iterable[Diagnostic]) -> tuple[Diagnostic, ...]:
    """``--strict``: every warning becomes an error (same code, same place)."""
    out = []
    for d in diagnostics:
        if d.severity == "warning":
            d = Diagnostic(d.code, "error", d.message, d.span, d.hint, d.path, d.related)
        out.append(d)
    return tuple(out)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid name, or None when nothing is close enough to be a plausible typo."""
    matches = difflib.get_close_matches(str(word), sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_name_hint(word: str, choices: Iterable[str]) -> str:
    choices = sorted(set(choices))
    guess = did_you_mean(word, choices)
    listing = ", ".join(choices)
    if guess:
        return f"did you mean '{guess}'? valid names: {listing}"
    return f"valid names: {listing}"


def sort_key(d: Diagnostic) -> tuple:
    span = d.span or Span("")
    return (span.file, span.line, span.col, d.code, d.message)


# --- reporters -----------------------------------------------------------------------------------


def render_text(diagnostics: Sequence[Diagnostic], sources: dict[str, str] | None = None) -> str:
    """ruff-style full form: ``file:line:col: severity: CODE message``, the source line, a caret, help."""
    sources = sources or {}
    lines: list[str] = []
    for d in sorted(diagnostics, key=sort_key):
        lines.append(d.render_short())
        text = sources.get(d.span.file) if d.span else None
        if text is not None and d.span and d.span.line > 0:
            src_lines = text.splitlines()
            if d.span.line <= len(src_lines):
                src = src_lines[d.span.line - 1]
                if len(src) > 200:
                    src = src[:200] + "…"
                gutter = f"{d.span.line:>4} | "
                lines.append(gutter + src)
                col = max(d.span.col, 1)
                width = max((d.span.end_col or col + 1) - col, 1)
                lines.append(" " * (len(gutter) - 2) + "| " + " " * (col - 1) + "^" * min(width, 80))
        for label, span in d.related:
            lines.append(f"  note: {label} at {span}")
        if d.hint:
            lines.append(f"  help: {d.hint}")
    n_err = sum(d.severity == "error" for d in diagnostics)
    n_warn = sum(d.severity == "warning" for d in diagnostics)
    if diagnostics:
        lines.append(f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}")
    return "\n".join(lines)


def render_json(diagnostics: Sequence[Diagnostic], sources: dict[str, str] | None = None) -> str:
    return json.dumps([d.to_dict() for d in sorted(diagnostics, key=sort_key)], indent=2)


REPORTERS = {"text": render_text, "json": render_json}
