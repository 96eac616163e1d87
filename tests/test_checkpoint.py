"""Pre-quantized checkpoints: published blocks mapped per module, exclusion semantics, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantc.checkpoint import find_checkpoint_block, read_checkpoint_scheme
from quantc.keys import ACTIVATION_KEYS, WEIGHT_KEYS
from quantc.model import ModuleInfo
from quantc.peer_patterns import PeerPatterns, name_shape

DATA = Path(__file__).parent / "data" / "checkpoints"


def mod(name, kind="linear", experts=1):
    return ModuleInfo(name, kind, 256, 256, num_experts=experts)


Q = mod("model.layers.3.self_attn.q_proj")
EXPERT = mod("model.layers.3.mlp.experts.17.gate_proj", "moe_experts")
FUSED = mod("model.layers.3.mlp.experts.gate_up_proj", "moe_experts", experts=32)
ROUTER = mod("model.layers.3.mlp.gate", "router")
GPT_ROUTER = mod("model.layers.3.mlp.router", "router")
LM_HEAD = mod("lm_head", "lm_head")
EMBED = mod("model.embed_tokens", "embedding")
KV = mod("model.layers.3.self_attn.kv_cache", "kv_cache")


def load(folder):
    block, source, diags = find_checkpoint_block(DATA / folder)
    assert block is not None and not diags
    scheme, diags = read_checkpoint_scheme(block, source)
    assert scheme is not None, [d.render_short() for d in diags]
    return scheme, diags


def keys(entry):
    return None if entry is None else (entry.weight, entry.activation, entry.activation_fixed)


# folder -> format, then module -> expected (weight, activation, fixed) or None
PUBLISHED = {
    "deepseek-v3": ("fp8", {
        Q: ("fp8_block_128x128", "fp8_dynamic_group_128", False),
        EXPERT: ("fp8_block_128x128", "fp8_dynamic_group_128", False),
        ROUTER: None, LM_HEAD: None, EMBED: None, KV: None}),
    "qwen3-30b-a3b-fp8": ("fp8", {
        EXPERT: ("fp8_block_128x128", "fp8_dynamic_group_128", False), ROUTER: None, LM_HEAD: None}),
    "gpt-oss-20b": ("mxfp4", {
        FUSED: ("mxfp4", None, False), Q: None, GPT_ROUTER: None, LM_HEAD: None, EMBED: None}),
    "llama-3.1-8b-instruct-fp8-dynamic": ("compressed-tensors", {
        Q: ("fp8_per_channel", "fp8_dynamic_per_token", False), LM_HEAD: None, EMBED: None, KV: None}),
    "llama-3.1-8b-instruct-w8a8": ("compressed-tensors", {
        Q: ("int8_per_channel", "int8_dynamic_per_token", False), LM_HEAD: None}),
    "llama-3.1-8b-instruct-w4a16": ("compressed-tensors", {
        Q: ("int4_group_128", None, False), LM_HEAD: None}),
    "qwen3-8b-nvfp4": ("compressed-tensors", {Q: ("nvfp4", "nvfp4", False), LM_HEAD: None}),
    "llama-3.1-8b-instruct-fp8-modelopt": ("modelopt", {
        Q: ("fp8_per_tensor", "fp8_static_per_tensor", True), LM_HEAD: None,
        KV: ("none", "fp8_static_per_tensor", True)}),
    "llama-3.1-8b-instruct-nvfp4-modelopt": ("modelopt", {Q: ("nvfp4", "nvfp4", False), LM_HEAD: None, KV: None}),
    "llama-3.1-8b-instruct-awq-int4": ("awq", {Q: ("int4_group_128_asym", None, False), LM_HEAD: None}),
    "llama-3.1-8b-instruct-gptq-int4": ("gptq", {Q: ("int4_group_128", None, False), LM_HEAD: None}),
}


def test_every_folder_is_covered():
    assert {p.name for p in DATA.iterdir() if p.is_dir()} == set(PUBLISHED)


@pytest.mark.parametrize("folder", sorted(PUBLISHED))
def test_published_block_maps_modules(folder):
    fmt, expected = PUBLISHED[folder]
    scheme, _ = load(folder)
    assert scheme.format == fmt
    for module, want in expected.items():
        got = scheme.entry_for(module)
        assert keys(got) == want, module.name
        if got is not None:
            assert got.weight in WEIGHT_KEYS and (got.activation is None or got.activation in ACTIVATION_KEYS)
            assert got.origin.startswith(("config.json: ", "hf_quant_config.json: "))


def test_compressed_tensors_class_target_covers_routers_but_not_fused_experts():
    scheme, _ = load("llama-3.1-8b-instruct-fp8-dynamic")
    # llm-compressor quantizes every nn.Linear it is not told to ignore, routers included
    assert scheme.entry_for(ROUTER).weight == "fp8_per_channel"
    # a fused 3D expert tensor is no nn.Linear
    assert scheme.entry_for(FUSED) is None
    assert scheme.entry_for(EXPERT).origin == "config.json: quantization_config.config_groups.group_0"


def test_gptq_desc_act_warns_about_g_idx():
    _, diags = load("llama-3.1-8b-instruct-gptq-int4")
    assert [d.code for d in diags] == ["QC406"]
    assert diags[0].path == "quantization_config.desc_act" and "g_idx" in diags[0].message


def test_modelopt_sidecar_is_used_when_config_has_no_block():
    block, source, _ = find_checkpoint_block(DATA / "llama-3.1-8b-instruct-fp8-modelopt" / "config.json")
    assert source.endswith("hf_quant_config.json") and block["quantization"]["quant_algo"] == "FP8"


# --- fp8 activation_scheme mapping (SPEC §3) -------------------------------------------------


@pytest.mark.parametrize("block, want", [
    ({"activation_scheme": "dynamic", "weight_block_size": [128, 128]},
     ("fp8_block_128x128", "fp8_dynamic_group_128", False)),
    ({"activation_scheme": "dynamic"}, ("fp8_per_tensor", "fp8_dynamic_per_token", False)),
    ({"activation_scheme": "static"}, ("fp8_per_tensor", "fp8_static_per_tensor", True)),
    ({"scheme": "static"}, ("fp8_per_tensor", "fp8_static_per_tensor", True)),  # pre-standard key
])
def test_fp8_activation_scheme(block, want):
    scheme, diags = read_checkpoint_scheme({"quant_method": "fp8", **block}, "config.json")
    assert not diags
    assert keys(scheme.entry_for(Q)) == want


def test_compressed_tensors_static_and_dynamic_activations_and_kv_cache():
    def group(act):
        return {"quant_method": "compressed-tensors", "format": "float-quantized",
                "config_groups": {"g": {"targets": ["Linear"],
                                        "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"},
                                        "input_activations": act}},
                "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}}
    static, _ = read_checkpoint_scheme(group({"num_bits": 8, "type": "float", "strategy": "tensor",
                                              "dynamic": False}), "config.json")
    dynamic, _ = read_checkpoint_scheme(group({"num_bits": 8, "type": "float", "strategy": "tensor",
                                               "dynamic": True}), "config.json")
    assert keys(static.entry_for(Q)) == ("fp8_per_tensor", "fp8_static_per_tensor", True)
    assert keys(dynamic.entry_for(Q)) == ("fp8_per_tensor", "fp8_dynamic_per_tensor", False)
    assert static.kv_cache == "fp8_static_per_tensor"
    assert keys(static.entry_for(KV)) == ("none", "fp8_static_per_tensor", True)


# --- exclusion semantics, per peer ---------------------------------------------------------------


def test_transformers_modules_to_not_convert_is_substring_and_prefix_regex():
    block = {"quant_method": "fp8", "weight_block_size": [128, 128],
             "modules_to_not_convert": ["mlp.gate", "model.layers.*.self_attn"]}
    scheme, _ = read_checkpoint_scheme(block, "config.json")
    # the substring test makes `mlp.gate` hit `mlp.gate_proj` too, as transformers does
    assert scheme.entry_for(mod("model.layers.1.mlp.gate_proj")) is None
    assert scheme.entry_for(mod("model.layers.7.self_attn.o_proj")) is None  # regex prefix
    assert scheme.entry_for(mod("model.layers.1.mlp.down_proj")) is not None
    assert scheme.excluded_by(mod("model.layers.1.mlp.gate_proj")) == ["quantization_config.modules_to_not_convert: mlp.gate"]


def test_vllm_ignored_layers_is_exact_name_or_ancestor():
    block = {"quant_method": "fp8", "ignored_layers": ["model.layers.1.mlp.gate", "model.layers.2.self_attn"]}
    scheme, _ = read_checkpoint_scheme(block, "config.json")
    assert scheme.entry_for(mod("model.layers.1.mlp.gate_proj")) is not None  # exact, not substring
    assert scheme.entry_for(mod("model.layers.2.self_attn.q_proj")) is None  # ancestor listed
    assert scheme.entry_for(mod("model.layers.12.self_attn.q_proj")) is not None


def test_compressed_tensors_re_is_match_at_start_only():
    block = {"quant_method": "compressed-tensors", "format": "float-quantized",
             "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                                                          "strategy": "channel"}}},
             "ignore": ["lm_head", "re:.*mlp.gate$", "re:model.layers.1\\."]}
    scheme, _ = read_checkpoint_scheme(block, "config.json")
    assert scheme.entry_for(ROUTER) is None
    assert scheme.entry_for(mod("model.layers.3.mlp.gate_proj")) is not None  # `$` anchors the end
    assert scheme.entry_for(mod("model.layers.1.mlp.down_proj")) is None  # re.match: prefix
    assert scheme.entry_for(mod("model.layers.11.mlp.down_proj")) is not None
    assert scheme.entry_for(mod("x.model.layers.1.mlp.down_proj")) is not None  # anchored at start


def test_compressed_tensors_exact_target_beats_class_target():
    w8 = {"num_bits": 8, "type": "float", "strategy": "channel"}
    w4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}
    block = {"quant_method": "compressed-tensors", "format": "mixed-precision",
             "config_groups": {"a": {"targets": ["Linear"], "weights": w8, "format": "float-quantized"},
                               "b": {"targets": ["model.layers.0.mlp.down_proj", "re:.*o_proj$"], "weights": w4,
                                     "format": "pack-quantized"}}}
    scheme, _ = read_checkpoint_scheme(block, "config.json")
    assert scheme.entry_for(mod("model.layers.0.mlp.down_proj")).weight == "int4_group_128"
    assert scheme.entry_for(mod("model.layers.4.self_attn.o_proj")).weight == "int4_group_128"
    assert scheme.entry_for(mod("model.layers.1.mlp.down_proj")).weight == "fp8_per_channel"


def test_modelopt_exclude_modules_is_fnmatch_with_parents():
    doc = {"quantization": {"quant_algo": "NVFP4", "group_size": 16,
                            "exclude_modules": ["lm_head", "model.layers.0.self_attn*", "*.mlp.gate"]}}
    scheme, _ = read_checkpoint_scheme(doc, "hf_quant_config.json")
    assert scheme.entry_for(mod("model.layers.0.self_attn.q_proj")) is None
    assert scheme.entry_for(mod("model.layers.10.self_attn.q_proj")) is not None
    assert scheme.entry_for(mod("model.layers.5.mlp.gate_proj")) is not None  # fnmatch is whole-name


def test_awq_modules_to_not_convert_is_substring():
    block = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": False, "version": "gemm",
             "modules_to_not_convert": ["visual"]}
    scheme, _ = read_checkpoint_scheme(block, "config.json")
    assert scheme.entry_for(mod("model.visual.blocks.0.attn.qkv")) is None
    assert keys(scheme.entry_for(Q)) == ("int4_group_64", None, False)


def test_autoawq_own_spelling():
    scheme, diags = read_checkpoint_scheme({"zero_point": True, "q_group_size": 128, "w_bit": 4,
                                            "version": "GEMM"}, "quant_config.json")
    assert not diags and scheme.format == "awq"
    assert scheme.entry_for(Q).weight == "int4_group_128_asym"


def test_exclusions_naming_norms_are_fine():
    scheme, diags = read_checkpoint_scheme({"quant_method": "fp8", "modules_to_not_convert": [
        "model.layers.0.input_layernorm", "model.norm"]}, "config.json")
    assert not diags and scheme.entry_for(Q) is not None


# --- errors --------------------------------------------------------------------------------------


def err(block, source="config.json"):
    scheme, diags = read_checkpoint_scheme(block, source)
    assert scheme is None
    errors = [d for d in diags if d.severity == "error"]
    assert errors and all(d.span.file == source and d.hint for d in errors)
    return errors[0]


CT_W = {"num_bits": 8, "type": "float", "strategy": "channel"}


def ct(weights=CT_W, act=None, **top):
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": act}},
            **top}


@pytest.mark.parametrize("block, code, path, text", [
    ({"quant_method": "bitsandbytes"}, "QC401", "quantization_config.quant_method", "unknown quantization format"),
    ({"quant_method": "fp9"}, "QC401", "quantization_config.quant_method", "did you mean 'fp8'"),
    ({"bits": 4}, "QC401", "quantization_config.quant_method", "names no quant_method"),
    ({"quant_method": "fp8", "activation_scheme": "sometimes"}, "QC403",
     "quantization_config.activation_scheme", "unsupported activation_scheme 'sometimes'"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "QC403", "quantization_config.fmt", "unsupported fmt 'e5m2'"),
    ({"quant_method": "fp8", "weight_block_size": [64, 64]}, "QC404", "quantization_config.weight_block_size",
     "weight_block_size [64, 64] has no quant key"),
    ({"quant_method": "fp8", "weight_block_size": "128"}, "QC402", "quantization_config.weight_block_size",
     "must be a list"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "QC404",
     "quantization_config.activation_scheme", "static activation scheme with weight_block_size"),
    ({"quant_method": "fp8", "ignored_layers": "lm_head"}, "QC402", "quantization_config.ignored_layers",
     "must be a list"),
    (ct({**CT_W, "strategy": "row"}), "QC403", "quantization_config.config_groups.group_0.weights.strategy",
     "unsupported strategy 'row'"),
    (ct({**CT_W, "num_bits": 6}), "QC404", "quantization_config.config_groups.group_0.weights",
     "float 6-bit, strategy channel have no quant key"),
    (ct({**CT_W, "num_bits": "8"}), "QC402", "quantization_config.config_groups.group_0.weights.num_bits",
     "'num_bits' must be an integer, got str '8'"),
    (ct({**CT_W, "type": "fixed"}), "QC403", "quantization_config.config_groups.group_0.weights.type",
     "unsupported type 'fixed'"),
    (ct(act={"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": False}), "QC404",
     "quantization_config.config_groups.group_0.input_activations", "input activations int 8-bit"),
    (ct({**CT_W, "dynamic": True}), "QC403", "quantization_config.config_groups.group_0.weights.dynamic",
     "dynamic scales are not a stored format"),
    (ct(format="marlin-24"), "QC403", "quantization_config.format", "format 'marlin-24'"),
    (ct(format="int-quantized"), "QC403", "quantization_config.config_groups.group_0.format",
     "format 'int-quantized' cannot hold fp8_per_channel"),
    (ct(ignore=["re:(unclosed"]), "QC402", "quantization_config.ignore[0]", "not a valid regex"),
    (ct(transform_config={"config_groups": {"u": {}}}), "QC403", "quantization_config.transform_config",
     "rotated or sparse"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"targets": [], "weights": CT_W}}}, "QC402",
     "quantization_config.config_groups.g.targets", "has no targets"),
    ({"quant_method": "compressed-tensors"}, "QC402", "quantization_config.config_groups",
     "missing field 'config_groups'"),
    ({"quant_method": "awq", "bits": 3, "group_size": 128}, "QC404", "quantization_config.bits",
     "AWQ with 3 bits"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "marlin"}, "QC403",
     "quantization_config.version", "unsupported version 'marlin'"),
    ({"quant_method": "gptq", "bits": 4, "group_size": -1}, "QC404", "quantization_config.group_size",
     "4-bit weights with group_size -1 have no quant key"),
    ({"quant_method": "gptq", "bits": 4, "sym": "yes"}, "QC402", "quantization_config.sym", "true/false"),
    ({"quant_method": "gptq"}, "QC402", "quantization_config.bits", "missing field 'bits'"),
])
def test_errors_name_the_field(block, code, path, text):
    d = err(block)
    assert (d.code, d.path) == (code, path)
    assert text in d.message or text in (d.hint or "")


def test_modelopt_w4a8_awq_names_it_and_the_supported_ones():
    d = err({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "W4A8_AWQ", "group_size": 128}},
            "hf_quant_config.json")
    assert d.code == "QC404" and d.path == "quantization.quant_algo"
    assert "W4A8_AWQ" in d.message and "FP8" in d.hint and "NVFP4" in d.hint


def test_modelopt_kv_cache_algo_unknown():
    d = err({"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "INT8"}}, "hf_quant_config.json")
    assert d.path == "quantization.kv_cache_quant_algo" and "INT8" in d.message


def test_malformed_block_types():
    d = err(["quant_method", "fp8"])
    assert d.code == "QC402" and "must be an object" in d.message
    d = err({"quant_method": "compressed-tensors", "config_groups": {"g": "Linear"}})
    assert d.path == "quantization_config.config_groups.g"


def test_unused_group_is_a_warning_with_inventory():
    w4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}
    block = {"quant_method": "compressed-tensors", "format": "pack-quantized",
             "config_groups": {"a": {"targets": ["Linear"], "weights": w4},
                               "vision": {"targets": ["re:model.visual.*"], "weights": w4}}}
    scheme, diags = read_checkpoint_scheme(block, "config.json", inventory_hint=[Q, EXPERT])
    assert scheme is not None
    assert [(d.code, d.path) for d in diags] == [("QC407", "quantization_config.config_groups.vision")]


# --- name-shape caching: correct for index-testing patterns, and fast ------------------------------


NAMES = [f"model.layers.{i}.{p}" for i in (0, 1, 2, 10, 11, 12, 61, 100) for p in
         ("self_attn.q_proj", "mlp.gate", "mlp.gate_proj", "mlp.experts.7.down_proj", "mlp.shared_experts.up_proj")]


@pytest.mark.parametrize("semantics, pattern", [
    ("ct", "re:model\\.layers\\.1\\."), ("ct", "re:.*layers\\.(1|2)\\.mlp"), ("ct", "re:.*mlp.gate$"),
    ("ct", "re:model.layers.\\d\\..*"), ("ct", "re:model.layers.[0-2]\\."), ("ct", "re:model.layers..\\."),
    ("transformers", "model.layers.1.mlp"), ("transformers", "mlp.gate"), ("transformers", "model.layers.*.mlp"),
    ("fnmatch", "model.layers.1?.*"), ("fnmatch", "*.experts.*"), ("exact", "model.layers.1.mlp.gate"),
    ("substring", "layers.1.")])
def test_shape_cache_agrees_with_direct_match(semantics, pattern):
    cached = PeerPatterns.build(semantics, [pattern])
    for name in NAMES + NAMES:  # twice: the second pass reads the cache
        fresh = PeerPatterns.build(semantics, [pattern])
        assert cached.matches(name) == fresh.matches(name) == _reference(semantics, pattern, name), name


def _reference(semantics, pattern, name):
    import fnmatch
    parts = name.split(".")
    chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
    if semantics == "ct":
        return bool(re.match(pattern[3:], name)) if pattern.startswith("re:") else pattern == name
    if semantics == "transformers":
        return any(pattern in a or re.match(pattern, a) or a.endswith(pattern) for a in chain)
    if semantics == "fnmatch":
        return any(fnmatch.fnmatchcase(a, pattern) for a in chain)
    if semantics == "exact":
        return pattern in chain
    return pattern in name


def test_deepseek_scale_map_matches_every_module():
    """45k modules through both matchers (speed is measured in bench/plan_speed.py, not here)."""
    names = []
    for layer in range(61):
        names += [mod(f"model.layers.{layer}.self_attn.{p}") for p in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa",
                                                                         "kv_b_proj", "o_proj")]
        names += [mod(f"model.layers.{layer}.mlp.experts.{e}.{p}", "moe_experts")
                  for e in range(256) for p in ("gate_proj", "up_proj", "down_proj")]
    assert len(names) > 45_000
    block = {"quant_method": "compressed-tensors", "format": "float-quantized",
             "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                                                          "strategy": "block",
                                                                          "block_structure": [128, 128]}}},
             "ignore": ["lm_head", "re:.*mlp.gate$", "re:.*kv_a_proj.*"] + [f"model.layers.{i}.mlp.gate" for i in range(61)]}
    hf_block = {"quant_method": "fp8", "weight_block_size": [128, 128],
                "modules_to_not_convert": ["lm_head"] + [f"model.layers.{i}.mlp.gate" for i in range(61)]}
    for blk in (block, hf_block):
        scheme, _ = read_checkpoint_scheme(blk, "config.json")
        entries = [scheme.entry_for(m) for m in names]
        assert sum(e is None for e in entries) == (61 if blk is block else 0)
    assert len({name_shape(m.name) for m in names}) < 10
