"""Source loading: positions, and every bad input gives a diagnostic (never a traceback)."""

import time

import pytest

from quantc.diagnostics import Span
from quantc.source import MAX_FILE_BYTES, format_path, load_document, parse_text


def codes(diags):
    return [d.code for d in diags]


def test_yaml_values_and_positions():
    text = "quantc: 1\nlinear: fp8_per_channel\nrules:\n  - match: [a, 're:b']\n    skip: true\n"
    doc, diags = parse_text(text, "c.yaml", "yaml")
    assert diags == ()
    assert doc.data == {"quantc": 1, "linear": "fp8_per_channel", "rules": [{"match": ["a", "re:b"], "skip": True}]}
    assert type(doc.data["quantc"]) is int and type(doc.data["rules"]) is list
    assert doc.span_of(("linear",)) == Span("c.yaml", 2, 9, 24)
    assert doc.key_spans[("linear",)] == Span("c.yaml", 2, 1, 7)
    assert doc.span_of(("rules", 0, "match", 1)).col == 16
    assert doc.span_of(("rules", 0, "skip")).line == 5
    # unknown path: nearest known ancestor, else the file
    assert doc.span_of(("rules", 0, "nope", 3)) == doc.span_of(("rules", 0))
    assert parse_text("", "e.yaml", "yaml")[0].span_of(("x",)) == Span("e.yaml")


def test_yaml_core_scalars():
    doc, _ = parse_text("a: 0x1F\nb: 0o17\nc: 1_000\nd: .inf\ne: ~\nf: yes\ng: 1.5e3\nh: !!str 5\n", "s.yaml", "yaml")
    assert doc.data == {"a": 31, "b": 15, "c": 1000, "d": float("inf"), "e": None, "f": "yes", "g": 1500.0, "h": "5"}


def test_yaml_duplicate_key_names_both_places():
    doc, diags = parse_text("quantc: 1\nlinear: a\nlinear: b\n", "d.yaml", "yaml")
    (d,) = diags
    assert d.code == "QC006" and d.span == Span("d.yaml", 3, 1, 7)
    assert "duplicate key 'linear'" in d.message and "d.yaml:2:1" in d.message
    assert d.related == (("first defined", Span("d.yaml", 2, 1, 7)),)


@pytest.mark.parametrize("text,shown", [
    ("a: !!python/object:os.system x\n", "!!python/object:os.system"),
    ("a: !!python/object/apply:os.system [ls]\n", "!!python/object/apply:os.system"),
    ("a: !custom 1\n", "!custom"),
    ("a: !!set {x}\n", "!!set"),
])
def test_yaml_tags_outside_core_schema_are_refused(text, shown):
    doc, diags = parse_text(text, "t.yaml", "yaml")
    assert doc is None and codes(diags) == ["QC007"]
    assert f"YAML tag '{shown}' is not allowed" in diags[0].message
    assert (diags[0].span.line, diags[0].span.col) == (1, 4)


def test_yaml_10000_levels_of_nesting():
    for text in ("[" * 10000 + "]" * 10000, "a: " + "{b: " * 10000 + "1" + "}" * 10000):
        doc, diags = parse_text(text, "deep.yaml", "yaml")
        assert doc is None and codes(diags) == ["QC008"]
        assert "deeper than 64 levels" in diags[0].message


def test_billion_laughs_is_refused_fast():
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [" + ",".join(["*" + prev] * 9) + "]\n"
        prev = name
    start = time.perf_counter()
    doc, diags = parse_text(text, "lol.yaml", "yaml")
    assert time.perf_counter() - start < 1.0
    assert doc is None and codes(diags) == ["QC009"]
    assert "expands to more than" in diags[0].message and diags[0].span.line <= 6


def test_too_many_aliases():
    text = "a: &a x\nb: [" + ", ".join(["*a"] * 150) + "]\n"
    doc, diags = parse_text(text, "al.yaml", "yaml")
    assert codes(diags) == ["QC009"] and "more than 100 aliases" in diags[0].message


def test_aliases_within_limits_are_fine():
    doc, diags = parse_text("a: &x [1, 2]\nb: *x\n", "ok.yaml", "yaml")
    assert diags == () and doc.data == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize("text,code,where", [
    ("a: b: c\n", "QC005", (1, 5)),
    ("a: [1, 2\n", "QC005", None),
    ("---\na: 1\n---\nb: 2\n", "QC010", (3, 1)),
    ("? [a]\n: 1\n", "QC010", None),
    ("a: *nope\n", "QC005", None),
])
def test_yaml_malformed(text, code, where):
    doc, diags = parse_text(text, "m.yaml", "yaml")
    assert doc is None and codes(diags) == [code]
    if where:
        assert (diags[0].span.line, diags[0].span.col) == where


def test_non_utf8_bytes_located(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"quantc: 1\nlinear: fp8\xff\xfe\n")
    doc, diags = load_document(path)
    (d,) = diags
    assert doc is None and d.code == "QC004"
    assert "byte 0xff at offset 21" in d.message and (d.span.line, d.span.col) == (2, 12)


def test_50mb_file_rejected_before_reading(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # sparse: costs nothing to create
    start = time.perf_counter()
    doc, diags = load_document(path)
    assert time.perf_counter() - start < 0.5
    assert doc is None and codes(diags) == ["QC003"] and "52.4 MB" in diags[0].message
    assert MAX_FILE_BYTES == 10 * 1024 * 1024


def test_extension_and_missing_file(tmp_path):
    (tmp_path / "c.ini").write_text("x=1")
    assert codes(load_document(tmp_path / "c.ini")[1]) == ["QC002"]
    doc, diags = load_document(tmp_path / "nope.yaml")
    assert doc is None and codes(diags) == ["QC001"] and "cannot read" in diags[0].message


def test_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"quantc": 1}')
    doc, diags = load_document(path)
    assert diags == () and doc.data == {"quantc": 1}


TOML = '''quantc = 1
linear = "fp8_per_channel"
moe = { weight = "mxfp4", activation = "mxfp8" }

[target]
gpu = "h100"

[[rules]]
match = ["lm_head", "re:x"]
skip = true

[[rules]]
match = "a"
linear.weight = "none"
'''


def test_toml_positions():
    doc, diags = parse_text(TOML, "c.toml", "toml")
    assert diags == ()
    assert doc.data["rules"][1] == {"match": "a", "linear": {"weight": "none"}}
    assert doc.span_of(("linear",)) == Span("c.toml", 2, 10, 27)
    assert doc.span_of(("moe", "activation")).col == 40
    assert doc.key_spans[("moe", "weight")].col == 9
    assert doc.span_of(("target", "gpu")).line == 6
    assert doc.span_of(("rules", 0, "match", 1)) == Span("c.toml", 9, 21, 27)
    assert doc.span_of(("rules", 1, "linear", "weight")).line == 14
    assert doc.span_of(("rules", 1)).line == 12


@pytest.mark.parametrize("text,code,where,needle", [
    ("quantc = \n", "QC005", (1, 10), "Invalid value"),
    ("quantc = 1\nlinear = null\n", "QC005", (2, 10), "Invalid value"),
    ("a = 1\na = 2\n", "QC006", (2, 1), "duplicate key"),
    ("[t]\nx = 1\n[t]\n", "QC006", (3, 1), "duplicate key"),
    ("a = " + "[" * 10000, "QC008", None, "deeper"),
    ("a = " + "[" * 70 + "]" * 70 + "\n", "QC008", None, "deeper"),
])
def test_toml_errors(text, code, where, needle):
    doc, diags = parse_text(text, "e.toml", "toml")
    assert doc is None and codes(diags) == [code] and needle in diags[0].message
    if where:
        assert (diags[0].span.line, diags[0].span.col) == where
    if "null" in text:
        assert 'write "none"' in diags[0].hint


def test_json_positions_and_duplicates():
    text = '{"quantc": 1,\n "linear": "int8",\n "rules": [{"match": ["a", "b"], "skip": true}],\n "linear": "none"}'
    doc, diags = parse_text(text, "c.json", "json")
    assert doc.span_of(("rules", 0, "match", 1)) == Span("c.json", 3, 28, 31)
    assert doc.key_spans[("linear",)] == Span("c.json", 2, 2, 10)
    (d,) = diags
    assert d.code == "QC006" and d.span.line == 4 and "c.json:2:2" in d.message


@pytest.mark.parametrize("text,code,where", [
    ('{"quantc": }', "QC005", (1, 12)),
    ("[" * 10000, "QC008", (1, 65)),
    ('{"a": 1,}', "QC005", (1, 9)),
])
def test_json_errors(text, code, where):
    doc, diags = parse_text(text, "e.json", "json")
    assert doc is None and codes(diags) == [code]
    assert (diags[0].span.line, diags[0].span.col) == where


def test_format_path():
    assert format_path(("rules", 2, "match", 0)) == "rules[2].match[0]"
    assert format_path(()) == ""
