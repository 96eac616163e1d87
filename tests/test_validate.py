"""Semantic checks, extends merging and the Config value; a mutation property: only diagnostics."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantc.diagnostics import QuantcError
from quantc.validate import check_config, check_files, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "configs")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def diags(tmp_path, text, name="c.yaml"):
    return check_config(write(tmp_path, name, text))[1]


def one(tmp_path, text, code, name="c.yaml"):
    found = [d for d in diags(tmp_path, text, name) if d.code == code]
    assert len(found) == 1, [d.render_short() for d in diags(tmp_path, text, name)]
    return found[0]


@pytest.mark.parametrize("name", sorted(os.listdir(EXAMPLES)))
def test_examples_have_no_errors(name):
    config, ds = check_config(os.path.join(EXAMPLES, name))
    assert config is not None and [d for d in ds if d.severity == "error"] == []


def test_config_value_canonical_with_spans_and_origins(tmp_path):
    path = write(tmp_path, "a.yaml", "quantc: 1\nlinear: fp8_per_block\nmoe: {activation: mxfp8}\n"
                 "rules:\n  - match: lm_head\n    skip: true\n  - match: ['*.q_proj']\n"
                 "    linear: {weight: {dtype: int4, scale: {granularity: group, shape: [1, 64]}, symmetric: true}}\n"
                 "ignore: ['*.mlp.gate']\ntarget: {gpu: h200, tensor_parallel: 4}\nbackend: {moe: triton}\n")
    c = load_config(path)
    lin = c.kinds["linear"]
    assert (lin.weight.value, lin.activation.value) == ("fp8_block_128x128", "fp8_dynamic_group_128")
    assert lin.weight.span.line == 2 and lin.weight.origin == f"linear ({path})"
    assert c.kinds["moe"].weight is None and c.kinds["moe"].activation.value == "mxfp8"
    assert c.kinds["kv_cache"].is_empty()
    r0, r1 = c.rules
    assert r0.skip and r0.patterns[0].text == "lm_head" and r0.span.line == 5 and r0.label == f"rules[0] ({path})"
    assert r1.kinds["linear"].weight.value == "int4_group_64" and r1.kinds["linear"].activation is None
    assert [p.text for p in c.ignore] == ["*.mlp.gate"] and c.ignore[0].span.line == 9
    assert c.target.gpu.value == "h200" and c.target.tensor_parallel == 4 and c.target.tensor_parallel_span.line == 10
    assert c.backend["moe"].value == "triton"
    assert c.files[0][0] == "a.yaml" and len(c.files[0][1]) == 64 and path in c.sources


def test_bad_regex_column_inside_pattern(tmp_path):
    d = one(tmp_path, "quantc: 1\nrules:\n  - match: 're:model\\.layers\\.(0|1\\..*'\n    skip: true\n", "QC110")
    assert "missing ), unterminated subpattern at position 15" in d.message
    # the opening quote (col 12) + "re:" + 15 characters of the pattern: the "("
    assert (d.span.line, d.span.col) == (3, 31)


def test_bad_regex_in_double_quotes_counts_escapes(tmp_path):
    d = one(tmp_path, 'quantc: 1\nignore: ["re:a\\\\.b(["]\n', "QC110")
    line = 'ignore: ["re:a\\\\.b(["]'
    assert line[d.span.col - 1] == "(" or line[d.span.col - 1] == "["


def test_rule_sets_nothing_and_skip_conflict(tmp_path):
    d = one(tmp_path, "quantc: 1\nrules:\n  - match: x\n", "QC111")
    assert d.message == "rules[0] sets nothing" and (d.span.line, d.span.col) == (3, 5)
    d = one(tmp_path, "quantc: 1\nrules:\n  - match: x\n    skip: true\n    linear: int8\n", "QC117")
    assert "skip: true and also sets linear" in d.message


def test_activation_no_kernel_pairs(tmp_path):
    d = one(tmp_path, "quantc: 1\nlinear: {weight: fp8_per_channel, activation: mxfp8}\n", "QC112")
    assert d.message == "linear: no linear kernel pairs activation mxfp8 with weight fp8_per_channel"
    assert (d.span.line, d.span.col) == (2, 47) and "fp8_dynamic_per_token" in d.hint
    d = one(tmp_path, "quantc: 1\nmoe: nvfp4\n", "QC112")
    assert "(shorthand 'nvfp4')" in d.message and d.hint.endswith(": none")


def test_kv_cache_has_no_weights(tmp_path):
    d = one(tmp_path, "quantc: 1\nkv_cache: fp8_per_tensor\n", "QC113")
    assert "the KV cache has no weights" in d.message and d.span.col == 11
    d = one(tmp_path, "quantc: 1\nkv_cache: {weight: int8_per_channel}\n", "QC113")
    assert d.path == "kv_cache.weight"
    assert check_config(write(tmp_path, "k.yaml", "quantc: 1\nkv_cache: {activation: fp8_dynamic_per_tensor}\n"))[0]


def test_fp8_static_is_a_warning(tmp_path):
    path = write(tmp_path, "s.yaml", "quantc: 1\nlinear: {weight: fp8_per_tensor, activation: fp8_static_per_tensor}\n")
    config, ds = check_config(path)
    (d,) = ds
    assert config is not None and d.severity == "warning" and d.code == "QC114" and "checkpoint" in d.message


def test_key_mapping_not_in_catalog(tmp_path):
    d = one(tmp_path, "quantc: 1\nlinear: {weight: {dtype: int4, scale: {shape: [1, 48]}}}\n", "QC116")
    assert "no weight key in the catalog has these fields" in d.message
    d = one(tmp_path, "quantc: 1\nlinear: {weight: {dtype: int4}}\n", "QC116")
    assert "ambiguous" in d.message


def test_syntactic_shadowing_names_later_rule(tmp_path):
    path = write(tmp_path, "sh.yaml", "quantc: 1\nrules:\n  - match: [a, b]\n    linear: {weight: none}\n"
                 "  - match: [b, a]\n    linear: int8\n  - match: [a]\n    moe: none\n")
    config, ds = check_config(path)
    (d,) = ds
    assert d.code == "QC115" and d.severity == "warning" and d.span.line == 3
    assert f"rules[0] ({path}) is shadowed by rules[1] ({path})" in d.message
    assert d.related[0][1].line == 5


def test_empty_ignore_entry(tmp_path):
    d = one(tmp_path, "quantc: 1\nignore: [lm_head, '']\n", "QC107")
    assert d.message == "empty pattern at ignore[1]" and d.span.col == 19


def test_all_problems_reported_not_the_first(tmp_path):
    ds = diags(tmp_path, "quantc: 1\nlinear: fp8_per_tensr\nmoe: {wieght: mxfp4}\nrules:\n  - match: 're:('\n"
               "kv_cache: ~\n")
    assert {d.code for d in ds} >= {"QC104", "QC101", "QC110", "QC111", "QC103"}


def test_toml_and_json_errors_located(tmp_path):
    d = one(tmp_path, 'quantc = 1\n[target]\ngpu = "h1000"\n', "QC109", name="c.toml")
    assert (d.span.line, d.span.col) == (3, 7) and d.path == "target.gpu"
    d = one(tmp_path, '{"quantc": 1,\n "rules": [{"match": "x"}]}', "QC111", name="c.json")
    assert d.span.line == 2 and d.path == "rules[0]"


# --- extends -------------------------------------------------------------------------------------


def test_extends_merge(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path, "base/b.yaml", "quantc: 1\nlinear: fp8_per_channel\nmoe: mxfp4\n"
          "rules:\n  - match: lm_head\n    skip: true\nignore: [x, y]\ntarget: {gpu: h100, tensor_parallel: 2}\n")
    top = write(tmp_path, "top.toml", 'quantc = 1\nextends = "base/b.yaml"\nmoe = { activation = "mxfp8" }\n'
                'ignore = ["y", "z"]\n[target]\ntensor_parallel = 4\n[[rules]]\nmatch = "a"\nlinear = "none"\n')
    c = load_config(top)
    assert c.kinds["linear"].weight.value == "fp8_per_channel"
    assert c.kinds["moe"].weight.value == "mxfp4" and c.kinds["moe"].activation.value == "mxfp8"
    assert c.kinds["moe"].weight.origin.endswith("(base/b.yaml)") or "b.yaml" in c.kinds["moe"].weight.origin
    assert c.kinds["moe"].activation.span.file == top
    assert [r.index for r in c.rules] == [0, 1] and c.rules[0].label.startswith("rules[0]")
    assert "b.yaml" in c.rules[0].label and c.rules[1].label == f"rules[0] ({top})"
    assert [p.text for p in c.ignore] == ["x", "y", "z"]
    assert c.target.gpu.value == "h100" and c.target.tensor_parallel == 4
    assert [f for f, _ in c.files] == ["top.toml", os.path.join("base", "b.yaml")]
    assert len(c.sources) == 2


def test_extends_missing_base_at_its_span(tmp_path):
    d = one(tmp_path, "quantc: 1\nextends: [nope.yaml]\n", "QC120")
    assert "base config not found: nope.yaml" in d.message and (d.span.line, d.span.col) == (2, 11)


def test_extends_cycle_shows_chain(tmp_path):
    write(tmp_path, "b.yaml", "quantc: 1\nextends: c.yaml\n")
    write(tmp_path, "c.yaml", "quantc: 1\nextends: b.yaml\n")
    a = write(tmp_path, "a.yaml", "quantc: 1\nextends: b.yaml\n")
    config, ds = check_config(a)
    (d,) = ds
    assert config is None and d.code == "QC121"
    assert d.message.endswith("b.yaml -> " + str(tmp_path / "c.yaml") + " -> " + str(tmp_path / "b.yaml"))


def test_base_errors_are_reported_in_the_base(tmp_path):
    write(tmp_path, "b.yaml", "quantc: 1\nlinear: fp9\n")
    config, ds = check_config(write(tmp_path, "a.yaml", "quantc: 1\nextends: b.yaml\n"))
    (d,) = ds
    assert config is None and d.code == "QC104" and d.span.file.endswith("b.yaml") and d.span.line == 2


def test_load_config_raises_with_all_diagnostics(tmp_path):
    with pytest.raises(QuantcError) as info:
        load_config(write(tmp_path, "e.yaml", "quantc: 3\nfoo: 1\n"))
    assert {d.code for d in info.value.diagnostics} == {"QC106", "QC101"}


def test_check_files(tmp_path):
    good = write(tmp_path, "g.yaml", "quantc: 1\n")
    out = check_files([good, str(tmp_path / "missing.yaml")])
    assert out[0][0] == good and out[0][1] is not None and out[0][2] == ()
    assert out[1][1] is None and out[1][2][0].code == "QC001"


# --- property: any mutation gives diagnostics, never another exception ---------------------------

SEED = open(os.path.join(EXAMPLES, "llama31_8b_fp8.yaml")).read()
SEED_TOML = open(os.path.join(EXAMPLES, "llama31_8b_w4a16.toml")).read()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([("m.yaml", SEED), ("m.toml", SEED_TOML)]), st.integers(0, 10_000), st.integers(0, 8),
       st.sampled_from(["", ":", "-", "[", "]", "{", "'", '"', "!!", "&a", "*a", "\n", "  ", "\t", "~", "null",
                        "re:(", "=", "#", "\x00", "é", "0x", "- match:"]))
def test_text_mutations_give_only_diagnostics(tmp_path, seed, pos, cut, insert):
    name, text = seed
    pos %= len(text) + 1
    mutated = text[:pos] + insert + text[pos + cut:]
    (tmp_path / name).write_text(mutated, encoding="utf-8")
    config, ds = check_config(str(tmp_path / name))
    assert config is not None or any(d.severity == "error" for d in ds)


leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4),
                 st.sampled_from(["none", "int8", "mxfp4", "fp8_static_per_tensor", "re:(", "", "h100"]))
tree = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                 st.dictionaries(st.sampled_from(
                                                     ["quantc", "linear", "moe", "kv_cache", "rules", "match", "skip",
                                                      "weight", "activation", "ignore", "target", "gpu", "extends",
                                                      "scale", "dtype", "shape", "x"]), kids, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["quantc", "linear", "moe", "kv_cache", "rules", "ignore", "target",
                                        "backend", "extends"]), tree, max_size=5))
def test_tree_mutations_give_only_diagnostics(tmp_path, data):
    import json

    data.setdefault("quantc", 1)
    (tmp_path / "t.json").write_text(json.dumps(data))
    config, ds = check_config(str(tmp_path / "t.json"))
    assert (config is None) == any(d.severity == "error" for d in ds)
