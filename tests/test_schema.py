"""The config schema: generated from the registries, equal to the pydantic models and the fast
yes/no check, and mapped to positioned, readable messages."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from quantc import gpus, kernel_specs, keys
from quantc.config_model import model_accepts
from quantc.schema import build_schema, conforms, load_schema, schema_diagnostics, schema_path, schema_text
from quantc.source import parse_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "configs")
SCHEMA = load_schema("quantc")
VALIDATOR = Draft202012Validator(SCHEMA)


def test_schema_file_is_generated_from_registries():
    with open(os.path.join(ROOT, "schemas", "quantc.schema.json"), encoding="utf-8") as fh:
        assert fh.read() == schema_text(build_schema()), "run `python -m quantc.schema` to regenerate"


def test_enums_equal_registries():
    d = SCHEMA["$defs"]
    assert d["shorthand"]["enum"] == list(keys.SHORTHANDS)
    assert d["weight_key_name"]["enum"] == list(keys.WEIGHT_KEYS)
    assert d["activation_key_name"]["enum"] == list(keys.ACTIVATION_KEYS)
    assert d["family"]["enum"] == list(kernel_specs.FAMILIES)
    assert SCHEMA["properties"]["target"]["properties"]["gpu"]["enum"] == list(gpus.GPUS)


def test_schema_is_valid_draft_2020_12_and_closed():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$id"] and SCHEMA["$schema"].endswith("2020-12/schema")

    def objects(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for v in node.values():
                yield from objects(v)
        elif isinstance(node, list):
            for v in node:
                yield from objects(v)

    assert all(o.get("additionalProperties") is False for o in objects(SCHEMA))


def test_fast_check_covers_every_keyword_the_schema_uses():
    supported = {"$ref", "additionalProperties", "anyOf", "const", "enum", "items", "maxItems", "minItems",
                 "minLength", "minimum", "properties", "required", "type"}
    annotations = {"title", "description", "markdownEnumDescriptions", "$id", "$schema", "$defs"}
    used = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                used.add(k)
                if k in ("properties", "$defs"):
                    for sub in v.values():
                        walk(sub)
                elif k not in ("enum", "const", "required", "markdownEnumDescriptions"):
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(SCHEMA)
    assert used - annotations <= supported


def test_schema_path_prefers_package_data_then_repo():
    assert schema_path("quantc").endswith(os.path.join("schemas", "quantc.schema.json"))
    assert schema_path("no_such") is None


@pytest.mark.parametrize("name", sorted(os.listdir(EXAMPLES)))
def test_examples_are_schema_valid(name):
    from quantc.source import load_document

    doc, diags = load_document(os.path.join(EXAMPLES, name))
    assert diags == ()
    assert list(VALIDATOR.iter_errors(doc.data)) == []
    assert conforms(doc.data, SCHEMA, SCHEMA) and model_accepts(doc.data)


# --- a generated corpus: schema, fast check and pydantic agree -----------------------------------

names = st.sampled_from(sorted(set(keys.SHORTHANDS) | set(keys.WEIGHT_KEYS) | set(keys.ACTIVATION_KEYS))
                        + ["fp8", "mxfp9", "", "h100", "triton"])
junk = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=False, allow_infinity=False,
                 min_value=-2, max_value=3), st.sampled_from([1.0, 2.5]), st.text(max_size=3))
scale = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(list(keys.SCALE_DTYPES) + ["fp16"]),
    "granularity": st.sampled_from(list(keys.GRANULARITIES)),
    "shape": st.lists(st.one_of(st.integers(-1, 200), st.just(32.0), st.just(1.5)), max_size=3),
    "dynamic": st.one_of(st.booleans(), junk),
    "extra": junk,
})
key_mapping = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(list(keys.ELEMENT_FORMATS) + ["fp16"]), "scale": st.one_of(scale, junk),
    "global_scale": scale, "symmetric": st.one_of(st.booleans(), junk), "wieght": junk,
})
key_value = st.one_of(names, key_mapping, junk)
kind_value = st.one_of(names, st.fixed_dictionaries({}, optional={"weight": key_value, "activation": key_value,
                                                                   "wieght": junk}), junk)
pattern = st.one_of(st.sampled_from(["lm_head", "*.mlp.gate", "re:model\\.layers\\.0\\..*", ""]), junk)
rule = st.fixed_dictionaries({}, optional={
    "match": st.one_of(pattern, st.lists(pattern, max_size=3)), "linear": kind_value, "moe": kind_value,
    "kv_cache": kind_value, "skip": st.one_of(st.booleans(), junk), "linar": junk,
})
config = st.fixed_dictionaries({}, optional={
    "quantc": st.one_of(st.just(1), st.just(1.0), st.just(True), junk),
    "$schema": st.one_of(st.text(max_size=3), junk),
    "extends": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=2), junk),
    "linear": kind_value, "moe": kind_value, "kv_cache": kind_value,
    "rules": st.one_of(st.lists(rule, max_size=3), junk),
    "ignore": st.one_of(st.lists(pattern, max_size=3), junk),
    "backend": st.one_of(st.fixed_dictionaries({}, optional={"linear": st.sampled_from(["triton", "torch", "x"]),
                                                             "moe": junk, "gpu": junk}), junk),
    "target": st.one_of(st.fixed_dictionaries({}, optional={
        "gpu": st.sampled_from(list(gpus.GPUS) + ["h1000"]), "tensor_parallel": st.one_of(st.integers(-1, 9), junk),
        "expert_parallel": st.one_of(st.booleans(), junk), "tp": junk}), junk),
    "extra": junk,
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config)
def test_schema_pydantic_and_fast_check_agree(data):
    verdict = VALIDATOR.is_valid(data)
    assert conforms(data, SCHEMA, SCHEMA) == verdict
    assert model_accepts(data) == verdict


# --- messages ------------------------------------------------------------------------------------


def diags_of(text, fmt="yaml"):
    doc, diags = parse_text(text, f"c.{fmt}", fmt)
    assert diags == ()
    return schema_diagnostics(doc)


def test_unknown_key_did_you_mean_at_the_key():
    (d,) = diags_of("quantc: 1\nlinear:\n  wieght: fp8_per_tensor\n")
    assert d.code == "QC101" and d.message == "unknown key 'wieght' in linear; did you mean 'weight'?"
    assert (d.span.line, d.span.col) == (3, 3) and d.path == "linear.wieght"
    assert "valid keys: weight, activation" in d.hint


def test_several_unknown_keys_all_reported():
    ds = diags_of("quantc: 1\nfoo: 1\nbar: 2\n")
    assert sorted(d.message for d in ds) == ["unknown key 'bar' in the top level", "unknown key 'foo' in the top level"]


def test_unknown_shorthand_lists_valid_names():
    (d,) = diags_of("quantc: 1\nmoe: mxfp9\n")
    assert d.code == "QC104" and "unknown shorthand 'mxfp9' in moe; did you mean" in d.message
    assert "valid names:" in d.hint and "mxfp4_mxfp8" in d.hint and (d.span.line, d.span.col) == (2, 6)


def test_unknown_activation_key_name():
    (d,) = diags_of("quantc: 1\nlinear: {activation: fp8_dynamic_per_tokn}\n")
    assert d.code == "QC104" and "did you mean 'fp8_dynamic_per_token'" in d.message and d.span.col == 22


def test_null_says_write_none():
    for text, fmt in (("quantc: 1\nlinear: {weight: null}\n", "yaml"), ('{"quantc": 1, "moe": null}', "json")):
        (d,) = diags_of(text, fmt)
        assert d.code == "QC103" and "write `none`" in d.message


def test_version_and_missing_version():
    (d,) = diags_of("quantc: 2\n")
    assert d.code == "QC106" and d.message.startswith("unsupported version 2") and d.span.col == 9
    (d,) = diags_of("linear: int8\n")
    assert d.code == "QC105" and "missing required key 'quantc'" in d.message


def test_types_ranges_and_empties():
    ds = {d.path: d for d in diags_of(
        "quantc: 1\nlinear: 5\ntarget: {tensor_parallel: 0, expert_parallel: 1, gpu: h1000}\n"
        "rules:\n  - match: []\n    skip: true\nignore: ['']\n")}
    assert ds["linear"].message == "linear: expected a shorthand or a {weight, activation} mapping, got an integer (5)"
    assert ds["target.tensor_parallel"].code == "QC108"
    assert ds["target.expert_parallel"].message.startswith("target.expert_parallel: expected true or false")
    assert "did you mean 'h100'" in ds["target.gpu"].message
    assert ds["rules[0].match"].code == "QC107" and ds["ignore[0]"].message == "empty pattern at ignore[0]"


def test_empty_document():
    (d,) = diags_of("")
    assert d.message == "the config is empty"
