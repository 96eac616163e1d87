"""Import (checkpoint block -> quantc config) and export (plan entries -> checkpoint block)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quantc.checkpoint import find_checkpoint_block, read_checkpoint_scheme
from quantc.interop import export_config, import_quantization_config
from quantc.model import Inventory, ModuleInfo
from quantc.patterns import PatternSet
from quantc.peer_patterns import PeerPatterns, to_quantc
from quantc.validate import check_config

DATA = Path(__file__).parent / "data" / "checkpoints"


def mod(name, kind="linear", experts=1):
    return ModuleInfo(name, kind, 4096, 4096, num_experts=experts)


def sample_modules():
    out = [mod("model.embed_tokens", "embedding"), mod("lm_head", "lm_head")]
    for i in (0, 1, 3, 11):
        out += [mod(f"model.layers.{i}.self_attn.{p}_proj") for p in "qkvo"]
        out += [mod(f"model.layers.{i}.mlp.{p}_proj") for p in ("gate", "up", "down")]
        out += [mod(f"model.layers.{i}.mlp.gate", "router"), mod(f"model.layers.{i}.mlp.router", "router")]
        out += [mod(f"model.layers.{i}.mlp.experts.{e}.{p}_proj", "moe_experts") for e in (0, 17) for p in ("gate", "down")]
        out += [mod(f"model.layers.{i}.mlp.experts.gate_up_proj", "moe_experts", 32)]
    return out


def resolve_with_quantc(yaml_text, tmp_path, modules):
    """(weight, activation) per module under the imported config, through quantc's own lowering."""
    from quantc.lower import Lowering
    from quantc.patterns import name_shape

    path = tmp_path / "imported.yaml"
    path.write_text(yaml_text)
    config, diags = check_config(path)
    assert config is not None, [d.render_short() for d in diags]
    assert not [d for d in diags if d.severity == "error"]
    lw = Lowering(config, Inventory("t", "t", tuple(modules)), None, None, ())
    out = {}
    for m in modules:
        rules, ignore_hit = lw.split_hits(lw.matched_patterns(m, name_shape(m.name)))
        res = lw.resolve(m, rules, ignore_hit)
        out[m.name] = (res.weight.value, res.activation.value)
    return out


@pytest.mark.parametrize("folder", sorted(p.name for p in DATA.iterdir() if p.is_dir()))
def test_import_maps_the_same_modules_to_the_same_weight_keys(folder, tmp_path):
    text, diags = import_quantization_config(DATA / folder)
    assert text.startswith("# imported by quantc") and not [d for d in diags if d.severity == "error"]
    block, source, _ = find_checkpoint_block(DATA / folder)
    scheme, _ = read_checkpoint_scheme(block, source)
    modules = sample_modules()
    got = resolve_with_quantc(text, tmp_path, modules)
    for m in modules:
        if m.kind == "embedding":
            continue
        entry = scheme.entry_for(m)
        want_w = entry.weight if entry else "none"
        if folder.startswith(("llama", "qwen3-8b")) and m.num_experts > 1 and entry is None:
            # compressed-tensors' Linear class never covers a fused 3D expert tensor; the imported
            # `*` rule does (documented limitation, noted at import)
            continue
        assert got[m.name][0] == want_w, (folder, m.name)
        if entry is not None and entry.activation_fixed:
            assert got[m.name][1] == entry.activation


def test_import_of_a_dict_and_of_a_config_json_dict():
    block = json.loads((DATA / "deepseek-v3" / "config.json").read_text())
    a, _ = import_quantization_config(block)
    b, _ = import_quantization_config(block["quantization_config"])
    assert a == b and "linear: {weight: fp8_block_128x128, activation: fp8_dynamic_group_128}" in a


def test_import_errors_carry_the_reader_diagnostics():
    text, diags = import_quantization_config({"quant_method": "compressed-tensors", "config_groups": {
        "g": {"targets": ["Linear"], "weights": {"num_bits": 3, "type": "int", "strategy": "channel"}}}})
    assert text == "" and diags[0].code == "QC404" and "int 3-bit" in diags[0].message
    text, diags = import_quantization_config(DATA)  # a folder without config.json
    assert text == "" and diags[0].code == "QC408" and diags[0].hint


def test_import_of_class_ignore_is_an_error():
    text, diags = import_quantization_config({"quant_method": "compressed-tensors", "config_groups": {
        "g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
        "ignore": ["LlamaDecoderLayer"]})
    assert text == "" and diags[-1].code == "QC409" and "LlamaDecoderLayer" in diags[-1].message


# --- translation of each peer's semantics into quantc's language --------------------------------

NAMES = [m.name for m in sample_modules()] + ["model.layers.1.mlp.gate_proj_extra", "xmodel.layers.1.mlp.gate",
                                              "model.visual.blocks.0.attn.qkv", "model.layers.12.self_attn.q_proj"]


@pytest.mark.parametrize("semantics, pattern", [
    ("ct", "re:.*mlp.down_proj"), ("ct", "re:.*mlp.gate$"), ("ct", "re:model\\.layers\\.1\\..*"),
    ("ct", "lm_head"), ("ct", "model.layers.0.mlp.gate"),
    ("transformers", "mlp.gate"), ("transformers", "model.layers.*.self_attn"), ("transformers", "lm_head"),
    ("transformers", "model.layers.1.mlp.gate"), ("substring", "visual"), ("substring", "layers.1."),
    ("exact", "model.layers.1.self_attn"), ("fnmatch", "model.layers.1*"), ("fnmatch", "*.mlp.gate"),
])
def test_translated_pattern_matches_exactly_the_same_names(semantics, pattern):
    peer = PeerPatterns.build(semantics, [pattern])
    ours = PatternSet([to_quantc(semantics, pattern)])
    for name in NAMES:
        assert peer.matches(name) == ours.matches(0, name), (pattern, to_quantc(semantics, pattern), name)


def test_ct_regex_translation_example():
    # re.match is anchored at the start only: the quantc form appends ".*" for the rest of the name
    assert to_quantc("ct", "re:.*mlp.down_proj") == "re:(?:.*mlp.down_proj).*"
    assert to_quantc("transformers", "lm_head") == "*lm_head*"


# --- export ---------------------------------------------------------------------------------------

DENSE = [("model.layers.0.self_attn.q_proj", "fp8_per_channel", "fp8_dynamic_per_token"),
         ("model.layers.0.mlp.down_proj", "fp8_per_channel", "fp8_dynamic_per_token"),
         ("model.layers.1.mlp.down_proj", "int4_group_128", "none"),
         ("lm_head", "none", "none"), ("model.layers.0.mlp.gate", "none", "none")]


def test_export_compressed_tensors_round_trip():
    block, diags = export_config(DENSE, "compressed-tensors")
    assert not diags
    assert block["format"] == "mixed-precision" and block["ignore"] == ["lm_head", "model.layers.0.mlp.gate"]
    assert block["config_groups"]["group_0"]["targets"] == ["Linear"]
    assert block["config_groups"]["group_1"]["targets"] == ["model.layers.1.mlp.down_proj"]
    scheme, _ = read_checkpoint_scheme(json.loads(json.dumps(block)), "config.json")
    for name, w, a in DENSE:
        entry = scheme.entry_for(mod(name, "lm_head" if name == "lm_head" else "linear"))
        got = (entry.weight, entry.activation or "none") if entry else ("none", "none")
        assert got == (w, a), name


def test_export_vllm_fp8_block_round_trip():
    entries = [("model.layers.0.self_attn.q_proj", "fp8_block_128x128", "fp8_dynamic_group_128"),
               ("model.layers.0.mlp.experts.3.up_proj", "fp8_block_128x128", "fp8_dynamic_group_128", "moe_experts"),
               ("model.layers.0.mlp.gate", "none", "none", "router"), ("lm_head", "none", "none")]
    block, diags = export_config(entries, "vllm")
    assert not diags
    assert block == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                     "weight_block_size": [128, 128], "ignored_layers": ["lm_head", "model.layers.0.mlp.gate"]}


def test_export_vllm_mxfp4_experts():
    entries = [("model.layers.0.mlp.experts.gate_up_proj", "mxfp4", "none", "moe_experts", 32),
               ("model.layers.0.self_attn.q_proj", "none", "none")]
    block, diags = export_config(entries, "vllm")
    assert not diags and block["quant_method"] == "mxfp4"


@pytest.mark.parametrize("entries, fmt, text", [
    ([("model.layers.0.mlp.experts.gate_up_proj", "mxfp4", "mxfp8", "moe_experts", 32)], "compressed-tensors",
     "cannot express module 'model.layers.0.mlp.experts.gate_up_proj' (mxfp4 x mxfp8)"),
    ([("model.layers.0.self_attn.q_proj", "mxfp8", "mxfp8")], "compressed-tensors", "no QuantizationArgs for weight mxfp8"),
    (DENSE, "vllm", "one scheme per checkpoint"),
    ([("model.layers.0.self_attn.q_proj", "int8_per_channel", "int8_dynamic_per_token")], "vllm",
     "vllm cannot express module 'model.layers.0.self_attn.q_proj' (int8_per_channel x int8_dynamic_per_token)"),
    # vLLM's fp8 method never quantizes lm_head: the re-read catches it
    ([("lm_head", "fp8_per_tensor", "fp8_dynamic_per_token", "lm_head")], "vllm", "would load it as none x none"),
    ([("x", "fp8_per_tensor", "none")], "pickle", "unknown export format 'pickle'"),
])
def test_export_errors_name_the_module_and_scheme(entries, fmt, text):
    block, diags = export_config(entries, fmt)
    assert block == {}
    errors = [d for d in diags if d.severity == "error"]
    assert errors and any(text in d.message for d in errors) and all(d.hint for d in errors)


# --- CLI ------------------------------------------------------------------------------------------


def run_cli(*args):
    code = "import sys; from quantc.cli import main; sys.argv = ['quantc', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_cli_import_and_export(tmp_path):
    out = tmp_path / "q.yaml"
    r = run_cli("import", str(DATA / "gpt-oss-20b" / "config.json"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "moe: {weight: mxfp4, activation: none}" in out.read_text()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"modules": [{"name": n, "weight": w, "activation": a} for n, w, a in DENSE]}))
    r = run_cli("export", str(plan), "--format", "compressed-tensors", "-o", str(tmp_path / "o.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"
    r = run_cli("export", str(plan), "--format", "vllm")
    assert r.returncode == 1 and "one scheme per checkpoint" in r.stderr
    r = run_cli("export", str(plan), "--format", "gguf")
    assert r.returncode == 2
    r = run_cli("import", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not found" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "hqq"}}))
    r = run_cli("import", str(bad))
    assert r.returncode == 1 and re.search(r"config\.json: error: QC401 unknown quantization format", r.stderr)
