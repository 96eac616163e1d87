"""Source loading: YAML, TOML or JSON text -> one plain tree plus the position of every key and value.

The tree holds only dict / list / str / int / float / bool / None. Positions are kept in two tables
keyed by path (a tuple of str keys and int indices): ``spans`` (where the value starts) and
``key_spans`` (where a mapping key is written). Loading never raises on bad input: it returns
``(None, diagnostics)``.

YAML is read with ruamel's round-trip parser (every event carries its line and column), and the
tree is composed here, iteratively, from the event stream. That gives three guarantees the stock
constructors do not: only core-schema tags are accepted (anything else is reported, never
constructed); nesting depth is bounded without recursion; and aliases are never expanded: an alias
re-uses the anchored object while its expanded size is counted, so a billion-laughs file is refused
after a few events.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .diagnostics import Diagnostic, Span

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}

# stable codes of the loading stage
CODES = {
    "QC001": "file cannot be read",
    "QC002": "unsupported file extension",
    "QC003": "file too large",
    "QC004": "file is not UTF-8",
    "QC005": "syntax error",
    "QC006": "duplicate key",
    "QC007": "tag not allowed",
    "QC008": "nesting too deep",
    "QC009": "too many aliases / expansion too large",
    "QC010": "unsupported document structure",
}

Path = tuple


@dataclass(frozen=True)
class Document:
    file: str
    text: str
    format: str
    data: Any
    spans: Mapping[tuple, Span] = field(default_factory=dict, hash=False)
    key_spans: Mapping[tuple, Span] = field(default_factory=dict, hash=False)

    def span_of(self, path: tuple) -> Span:
        """The span of the value at ``path``, else of its nearest known ancestor, else the file."""
        path = tuple(path)
        while True:
            if path in self.spans:
                return self.spans[path]
            if path in self.key_spans:
                return self.key_spans[path]
            if not path:
                return Span(self.file)
            path = path[:-1]

    def key_span_of(self, path: tuple) -> Span:
        """Where the key that ends ``path`` is written (falls back to the value's span)."""
        return self.key_spans.get(tuple(path)) or self.span_of(path)


def format_path(path: tuple) -> str:
    """``("rules", 2, "match")`` -> ``rules[2].match``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _diag(code: str, message: str, span: Span, hint: str | None = None, related=()) -> Diagnostic:
    return Diagnostic(code, "error", message, span, hint, None, tuple(related))


# --- entry points --------------------------------------------------------------------------------


def load_document(path: str | os.PathLike) -> tuple[Document | None, tuple[Diagnostic, ...]]:
    """Read and parse one config file. The size limit is checked before anything is read."""
    file = os.fspath(path)
    fmt = FORMATS.get(os.path.splitext(file)[1].lower())
    if fmt is None:
        return None, (_diag("QC002", f"unsupported config file extension '{os.path.splitext(file)[1]}'",
                            Span(file), "use .yaml, .yml, .toml or .json"),)
    try:
        size = os.stat(file).st_size
        if size > MAX_FILE_BYTES:
            return None, (_diag("QC003", f"config file is {size / 1e6:.1f} MB; the limit is "
                                f"{MAX_FILE_BYTES // (1024 * 1024)} MB", Span(file),
                                "a quantc config is a few hundred lines; is this the right file?"),)
        with open(file, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, (_diag("QC001", f"cannot read config file: {exc.strerror or exc}", Span(file)),)
    if len(raw) > MAX_FILE_BYTES:  # grew while we looked
        return None, (_diag("QC003", "config file is larger than the 10 MB limit", Span(file)),)
    text, diag = decode_utf8(raw, file)
    if diag:
        return None, (diag,)
    return parse_text(text, file, fmt)


def decode_utf8(raw: bytes, file: str) -> tuple[str, Diagnostic | None]:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start:exc.start + 1].hex()
        return "", _diag("QC004", f"file is not valid UTF-8: byte 0x{bad} at offset {exc.start}",
                         Span(file, line, col), "save the file as UTF-8")


def parse_text(text: str, file: str, fmt: str) -> tuple[Document | None, tuple[Diagnostic, ...]]:
    """Parse ``text`` (already decoded) in format ``fmt`` ("yaml", "toml" or "json")."""
    parser = PARSERS.get(fmt)
    if parser is None:
        return None, (_diag("QC002", f"unknown config format '{fmt}'", Span(file), "use yaml, toml or json"),)
    return parser(text, file)


# --- YAML ----------------------------------------------------------------------------------------

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}


def _yaml_scalar(tag: str, value: str) -> Any:
    kind = tag[len(_CORE):]
    if kind == "str":
        return value
    if kind == "null":
        return None
    if kind == "bool":
        return value.lower() in ("true", "yes", "on", "y")
    text = value.replace("_", "")
    if kind == "int":
        sign = -1 if text.startswith("-") else 1
        body = text.lstrip("+-")
        base = {"0x": 16, "0o": 8, "0b": 2}.get(body[:2].lower(), 10)
        return sign * int(body[2:] if base != 10 else body, base)
    lowered = text.lower()
    if lowered.lstrip("+-") in (".inf", "inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered in (".nan", "nan"):
        return float("nan")
    return float(text)


def _mark_span(file: str, mark, end_mark=None) -> Span:
    end = end_mark.column + 1 if end_mark is not None and end_mark.line == mark.line else None
    return Span(file, mark.line + 1, mark.column + 1, end)


class _YamlError(Exception):
    def __init__(self, diag: Diagnostic):
        self.diag = diag


def _parse_yaml(text: str, file: str):
    from ruamel.yaml import YAML, events
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.nodes import ScalarNode

    yaml = YAML(typ="rt")
    resolver = yaml.resolver
    spans: dict[tuple, Span] = {}
    key_spans: dict[tuple, Span] = {}
    diags: list[Diagnostic] = []
    anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, expanded node count)
    # stack frames: [container, path, pending_key, key_span, node_count, anchor, index]
    stack: list[list] = []
    root: list = []
    n_aliases = 0
    total_nodes = 0
    documents = 0

    def attach(value: Any, nodes: int, span: Span) -> None:
        nonlocal total_nodes
        total_nodes += nodes
        if total_nodes > MAX_EXPANDED_NODES:
            raise _YamlError(_diag("QC009", f"the document expands to more than {MAX_EXPANDED_NODES} nodes",
                                   span, "a config never needs this much data; remove the aliases"))
        if not stack:
            root.append(value)
            return
        frame = stack[-1]
        container, path = frame[0], frame[1]
        frame[4] += nodes
        if isinstance(container, list):
            spans[path + (len(container),)] = span
            container.append(value)
            return
        if frame[2] is _NO_KEY:
            if isinstance(value, (dict, list)):
                raise _YamlError(_diag("QC010", "mapping keys must be plain strings", span,
                                       "write the key as a string"))
            key = value if isinstance(value, str) else _key_text(frame[7])
            if key in container:
                first = key_spans.get(path + (key,))
                related = (("first defined", first),) if first else ()
                diags.append(_diag("QC006", f"duplicate key '{key}' in {format_path(path) or 'the top level'}"
                                   + (f" (first defined at {first})" if first else ""),
                                   span, "remove one of them: YAML keeps only the last", related))
            frame[2], frame[3] = key, span
            return
        key = frame[2]
        key_spans.setdefault(path + (key,), frame[3])
        spans.setdefault(path + (key,), span)
        if key not in container:
            container[key] = value
        frame[2] = _NO_KEY

    try:
        for event in yaml.parse(text):
            if isinstance(event, events.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _YamlError(_diag("QC010", "a config file holds one YAML document; found a second one",
                                           _mark_span(file, event.start_mark), "remove the '---' and what follows"))
                continue
            tag = getattr(event, "tag", None)
            if isinstance(event, events.ScalarEvent):
                span = _mark_span(file, event.start_mark, event.end_mark)
                if tag in (None, "!"):
                    tag = str(resolver.resolve(ScalarNode, event.value, event.implicit)) if tag is None else _CORE + "str"
                tag = str(tag)
                if tag not in _SCALAR_TAGS:
                    raise _YamlError(_tag_error(tag, span))
                try:
                    value = _yaml_scalar(tag, event.value)
                except ValueError:
                    raise _YamlError(_diag("QC005", f"'{event.value}' is not a valid {tag[len(_CORE):]}", span))
                if stack and isinstance(stack[-1][0], dict) and stack[-1][2] is _NO_KEY:
                    stack[-1][7] = event.value
                if event.anchor:
                    anchors[event.anchor] = (value, 1)
                attach(value, 1, span)
            elif isinstance(event, (events.MappingStartEvent, events.SequenceStartEvent)):
                span = _mark_span(file, event.start_mark)
                is_map = isinstance(event, events.MappingStartEvent)
                if tag is not None and str(tag) != _CORE + ("map" if is_map else "seq"):
                    raise _YamlError(_tag_error(tag, span))
                if len(stack) >= MAX_DEPTH:
                    raise _YamlError(_diag("QC008", f"nesting is deeper than {MAX_DEPTH} levels", span,
                                           "a quantc config nests a few levels at most"))
                if stack and isinstance(stack[-1][0], dict) and stack[-1][2] is _NO_KEY:
                    raise _YamlError(_diag("QC010", "mapping keys must be plain strings", span,
                                           "write the key as a string"))
                parent = stack[-1] if stack else None
                if parent is None:
                    path: tuple = ()
                elif isinstance(parent[0], list):
                    path = parent[1] + (len(parent[0]),)
                else:
                    path = parent[1] + (parent[2],)
                stack.append([{} if is_map else [], path, _NO_KEY, None, 1, event.anchor, span, None])
            elif isinstance(event, (events.MappingEndEvent, events.SequenceEndEvent)):
                frame = stack.pop()
                container, nodes, anchor, span = frame[0], frame[4], frame[5], frame[6]
                if anchor:
                    anchors[anchor] = (container, nodes)
                attach(container, nodes, span)
            elif isinstance(event, events.AliasEvent):
                span = _mark_span(file, event.start_mark, event.end_mark)
                n_aliases += 1
                if n_aliases > MAX_ALIASES:
                    raise _YamlError(_diag("QC009", f"more than {MAX_ALIASES} aliases", span,
                                           "a config never needs this many; write the values out"))
                if event.anchor not in anchors:
                    raise _YamlError(_diag("QC005", f"alias '*{event.anchor}' names no anchor defined before it", span))
                value, nodes = anchors[event.anchor]
                if stack and isinstance(stack[-1][0], dict) and stack[-1][2] is _NO_KEY and not isinstance(value, str):
                    raise _YamlError(_diag("QC010", "mapping keys must be plain strings", span))
                attach(value, nodes, span)
    except _YamlError as exc:
        return None, tuple(diags) + (exc.diag,)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        span = _mark_span(file, mark) if mark is not None else Span(file)
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return None, (_diag("QC005", f"YAML syntax error: {problem}{context}", span),)
    except (YAMLError, ValueError) as exc:
        return None, (_diag("QC005", f"YAML syntax error: {exc}", Span(file)),)
    data = root[0] if root else None
    return Document(file, text, "yaml", data, spans, key_spans), tuple(diags)


class _NoKey:
    def __repr__(self) -> str:
        return "<no key>"


_NO_KEY = _NoKey()


def _key_text(raw: str | None) -> str:
    return "" if raw is None else raw


def _tag_error(tag, span: Span) -> Diagnostic:
    tag = str(tag)
    shown = "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag
    return _diag("QC007", f"YAML tag '{shown}' is not allowed", span,
                 "quantc reads only plain YAML (strings, numbers, booleans, lists, mappings); remove the tag")


# --- TOML ----------------------------------------------------------------------------------------

_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEYVAL = re.compile(r"^(\s*)((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'))*)\s*=\s*")
_TOML_INLINE_KEY = re.compile(r"([{,]\s*)([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=\s*")
_TOML_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'")


def _parse_toml(text: str, file: str):
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, (_toml_error(str(exc), text, file),)
    except RecursionError:
        return None, (_diag("QC008", f"nesting is deeper than {MAX_DEPTH} levels", Span(file)),)
    if _too_deep(data):
        return None, (_diag("QC008", f"nesting is deeper than {MAX_DEPTH} levels", Span(file)),)
    spans, key_spans = _toml_positions(text, file, data)
    return Document(file, text, "toml", data, spans, key_spans), ()


def _too_deep(data: Any) -> bool:
    todo = [(data, 0)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)
    return False


def _toml_error(msg: str, text: str, file: str) -> Diagnostic:
    lines = text.splitlines() or [""]
    m = _TOML_POS.search(msg)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
    else:  # "at end of document"
        line, col = len(lines), len(lines[-1]) + 1
    clean = _TOML_POS.sub("", msg).replace("(at end of document)", "").strip()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    if "Cannot overwrite" in clean or "twice" in clean:
        key_col = len(src) - len(src.lstrip()) + 1
        return _diag("QC006", f"duplicate key in TOML: {clean.lower()}", Span(file, line, key_col),
                     "each key and table may be defined once; remove the repeated one")
    hint = None
    if re.search(r"=\s*(null|nil|None|~)\s*(#.*)?$", src):
        hint = 'TOML has no null: write "none" for "not quantized", or leave the key out'
    return _diag("QC005", f"TOML syntax error: {clean}", Span(file, line, col), hint)


def _split_dotted(key: str) -> tuple[str, ...]:
    parts = []
    for m in re.finditer(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|([A-Za-z0-9_\-]+)", key):
        parts.append(next(g for g in m.groups() if g is not None))
    return tuple(parts)


def _toml_positions(text: str, file: str, data: Any):
    """Best-effort positions: table headers, ``key =`` lines, keys of one-line inline tables and the
    strings of one-line arrays. Anything else falls back to the nearest ancestor's span."""
    spans: dict[tuple, Span] = {(): Span(file, 1, 1)}
    key_spans: dict[tuple, Span] = {}
    table: tuple = ()
    array_counts: dict[tuple, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        header = _TOML_HEADER.match(line)
        if header and not _TOML_KEYVAL.match(line):
            names = _split_dotted(header.group(2))
            col = line.index(header.group(1)) + 1
            if header.group(1) == "[[":
                idx = array_counts.get(names, 0)
                array_counts[names] = idx + 1
                table = names + (idx,)
                key_spans.setdefault(names, Span(file, lineno, col))
            else:
                table = names
                key_spans.setdefault(table, Span(file, lineno, col))
            spans.setdefault(table, Span(file, lineno, col))
            continue
        m = _TOML_KEYVAL.match(line)
        if not m:
            continue
        path = table + _split_dotted(m.group(2))
        key_spans.setdefault(path, Span(file, lineno, len(m.group(1)) + 1, m.end(2) + 1))
        value_col = m.end() + 1
        spans.setdefault(path, Span(file, lineno, value_col, _value_end(line, m.end())))
        rest = line[m.end():]
        if rest.startswith("{"):
            for im in _TOML_INLINE_KEY.finditer(rest):
                sub = path + _split_dotted(im.group(2))
                kcol = m.end() + im.start(2) + 1
                key_spans.setdefault(sub, Span(file, lineno, kcol))
                vcol = m.end() + im.end()
                spans.setdefault(sub, Span(file, lineno, vcol + 1, _value_end(line, vcol)))
        elif rest.startswith("["):
            for i, sm in enumerate(_TOML_STRING.finditer(rest)):
                spans.setdefault(path + (i,), Span(file, lineno, m.end() + sm.start() + 1, m.end() + sm.end() + 1))
    return spans, key_spans


def _value_end(line: str, start: int) -> int | None:
    """End column (exclusive, 1-based) of a string value starting at ``start`` (0-based), if quoted."""
    m = _TOML_STRING.match(line, start)
    return m.end() + 1 if m else None


# --- JSON ----------------------------------------------------------------------------------------

_JSON_TOKEN = re.compile(r"\s*(?:(\"(?:[^\"\\]|\\.)*\")|([{}\[\],:])|(-?[0-9][0-9.eE+\-]*|true|false|null))", re.S)


def _parse_json(text: str, file: str):
    import json

    spans, key_spans, diags, depth_diag = _json_positions(text, file)
    if depth_diag:
        return None, (depth_diag,)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (_diag("QC005", f"JSON syntax error: {exc.msg}", Span(file, exc.lineno, exc.colno)),)
    except RecursionError:  # pragma: no cover - depth is checked above
        return None, (_diag("QC008", f"nesting is deeper than {MAX_DEPTH} levels", Span(file)),)
    return Document(file, text, "json", data, spans, key_spans), tuple(diags)


def _json_positions(text: str, file: str):
    """An iterative scanner over JSON tokens: positions of keys and values, duplicate keys, depth.
    It stops quietly at anything it does not understand; json.loads then reports the syntax error."""
    import json

    spans: dict[tuple, Span] = {}
    key_spans: dict[tuple, Span] = {}
    diags: list[Diagnostic] = []
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def span_at(offset: int, end: int | None = None) -> Span:
        import bisect

        i = bisect.bisect_right(line_starts, offset) - 1
        col = offset - line_starts[i] + 1
        end_col = end - line_starts[i] + 1 if end is not None and "\n" not in text[offset:end] else None
        return Span(file, i + 1, col, end_col)

    # frame: [path, is_object, index_or_key, expecting_key, seen_keys]
    stack: list[list] = []
    pos = 0

    def value_path() -> tuple:
        if not stack:
            return ()
        frame = stack[-1]
        return frame[0] + (frame[2],)

    while pos < len(text):
        m = _JSON_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        string, punct, literal = m.groups()
        start = m.start(m.lastindex)
        frame = stack[-1] if stack else None
        if frame is not None and frame[1] and frame[3] and string is not None:
            try:
                key = json.loads(string)
            except ValueError:
                break
            kpath = frame[0] + (key,)
            here = span_at(start, m.end())
            if key in frame[4]:
                first = key_spans.get(kpath)
                diags.append(_diag("QC006", f"duplicate key '{key}' in {format_path(frame[0]) or 'the top level'}"
                                   + (f" (first defined at {first})" if first else ""),
                                   here, "remove one of them", (("first defined", first),) if first else ()))
            else:
                frame[4].add(key)
                key_spans[kpath] = here
            frame[2], frame[3] = key, False
            continue
        if punct in ("{", "["):
            path = value_path()
            spans.setdefault(path, span_at(start))
            if len(stack) >= MAX_DEPTH:
                return spans, key_spans, diags, _diag("QC008", f"nesting is deeper than {MAX_DEPTH} levels",
                                                      span_at(start), "a quantc config nests a few levels at most")
            stack.append([path, punct == "{", 0 if punct == "[" else None, punct == "{", set()])
        elif punct in ("}", "]"):
            if not stack:
                break
            stack.pop()
        elif punct == ",":
            if frame is None:
                break
            if frame[1]:
                frame[3] = True
            else:
                frame[2] += 1
        elif punct == ":":
            continue
        else:
            spans.setdefault(value_path(), span_at(start, m.end()))
    return spans, key_spans, diags, None


PARSERS = {"yaml": _parse_yaml, "toml": _parse_toml, "json": _parse_json}
