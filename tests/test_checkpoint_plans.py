"""Every published quantization_config block in tests/data/checkpoints, planned against the matching
example model: the example's config.json with the checkpoint's block (and ModelOpt sidecar) in it,
through the whole pipeline, with an empty user config and with activation overrides."""

import json
import shutil
from pathlib import Path

import pytest

from quantc.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/data/checkpoints"
MODELS = ROOT / "examples/models"

# checkpoint folder -> (example model, module to look at, expected weight, activation, kernel on h100)
CASES = {
    "deepseek-v3": ("deepseek-v3-bf16", "model.layers.5.mlp.experts.17.down_proj",
                    "fp8_block_128x128", "fp8_dynamic_group_128", "moe_fp8_block"),
    "qwen3-30b-a3b-fp8": ("qwen3-30b-a3b", "model.layers.3.self_attn.q_proj",
                          "fp8_block_128x128", "fp8_dynamic_group_128", "fp8_block_gemm"),
    "gpt-oss-20b": ("gpt-oss-20b-bf16", "model.layers.0.mlp.experts.gate_up_proj", "mxfp4", "none", "moe_weight_only"),
    "llama-3.1-8b-instruct-fp8-dynamic": ("llama-3.1-8b", "model.layers.0.mlp.down_proj",
                                          "fp8_per_channel", "fp8_dynamic_per_token", "fp8_scaled_gemm"),
    "llama-3.1-8b-instruct-w8a8": ("llama-3.1-8b", "model.layers.0.self_attn.o_proj",
                                   "int8_per_channel", "int8_dynamic_per_token", "int8_gemm"),
    "llama-3.1-8b-instruct-w4a16": ("llama-3.1-8b", "model.layers.0.mlp.up_proj", "int4_group_128", "none", "int4_weight_only_gemm"),
    "llama-3.1-8b-instruct-fp8-modelopt": ("llama-3.1-8b", "model.layers.0.self_attn.k_proj",
                                           "fp8_per_tensor", "fp8_static_per_tensor", "fp8_scaled_gemm"),
    "llama-3.1-8b-instruct-awq-int4": ("llama-3.1-8b", "model.layers.0.mlp.gate_proj",
                                       "int4_group_128_asym", "none", "int4_weight_only_gemm"),
    "llama-3.1-8b-instruct-gptq-int4": ("llama-3.1-8b", "model.layers.0.mlp.gate_proj",
                                        "int4_group_128", "none", "int4_weight_only_gemm"),
}
# W4A4 checkpoints: nvfp4 x nvfp4 needs Blackwell; on an H100 only the weight-only path runs
NVFP4 = {"qwen3-8b-nvfp4": "qwen3-8b", "llama-3.1-8b-instruct-nvfp4-modelopt": "llama-3.1-8b"}


def _model_dir(tmp_path: Path, folder: str, example: str) -> Path:
    config = json.loads((MODELS / f"{example}.json").read_text())
    published = json.loads((DATA / folder / "config.json").read_text())
    config.pop("quantization_config", None)
    if "quantization_config" in published:
        config["quantization_config"] = published["quantization_config"]
    out = tmp_path / folder
    out.mkdir()
    (out / "config.json").write_text(json.dumps(config))
    if (DATA / folder / "hf_quant_config.json").exists():
        shutil.copy(DATA / folder / "hf_quant_config.json", out / "hf_quant_config.json")
    return out


def _cfg(tmp_path: Path, text: str) -> str:
    p = tmp_path / "quant.yaml"
    p.write_text(text)
    return str(p)


def test_every_published_block_is_planned():
    assert set(CASES) | set(NVFP4) == {p.name for p in DATA.iterdir() if p.is_dir()}


@pytest.mark.parametrize("folder", sorted(CASES))
def test_plan_keeps_the_checkpoint_formats(tmp_path, folder):
    example, module, weight, activation, kernel = CASES[folder]
    result = run_pipeline(_cfg(tmp_path, "quantc: 1\n"), str(_model_dir(tmp_path, folder, example)), gpu="h100")
    assert result.plan is not None, [d.render_short() for d in result.diagnostics]
    entry = result.plan.module(module)
    assert (entry.weight, entry.activation, entry.kernel) == (weight, activation, kernel)
    assert entry.provenance["weight"].startswith("checkpoint: ")
    assert result.plan.module("lm_head").weight == "none"
    assert result.plan.summary["quantized_fraction_of_bytes"] > 0.8


@pytest.mark.parametrize("folder", sorted(NVFP4))
def test_nvfp4_w4a4_needs_blackwell_and_its_dynamic_activation_can_be_overridden(tmp_path, folder):
    model = str(_model_dir(tmp_path, folder, NVFP4[folder]))
    hopper = run_pipeline(_cfg(tmp_path, "quantc: 1\n"), model, gpu="h100")
    assert hopper.plan is None
    (err,) = {d.code for d in hopper.diagnostics if d.severity == "error"}
    assert err == "QC305"
    blackwell = run_pipeline(_cfg(tmp_path, "quantc: 1\n"), model, gpu="b200")
    assert blackwell.plan.module("model.layers.0.self_attn.q_proj").kernel == "nvfp4_gemm"
    # the checkpoint's nvfp4 activations are dynamic: a default the user may override (SPEC §3 b)
    override = run_pipeline(_cfg(tmp_path, "quantc: 1\nlinear: {activation: none}\n"), model, gpu="h100")
    q = override.plan.module("model.layers.0.self_attn.q_proj")
    assert (q.weight, q.activation, q.kernel) == ("nvfp4", "none", "fp4_weight_only_gemm")
    assert q.provenance["activation"].endswith(":2:22: linear")


def test_static_activation_scales_cannot_be_overridden(tmp_path):
    model = str(_model_dir(tmp_path, "llama-3.1-8b-instruct-fp8-modelopt", "llama-3.1-8b"))
    result = run_pipeline(_cfg(tmp_path, "quantc: 1\nlinear: {activation: fp8_dynamic_per_token}\n"), model)
    (err,) = [d for d in result.diagnostics if d.severity == "error"]
    assert err.code == "QC311" and "fp8_static_per_tensor" in err.message and err.span.line == 2


def test_mxfp8_activation_override_on_the_gpt_oss_checkpoint(tmp_path):
    model = str(_model_dir(tmp_path, "gpt-oss-20b", "gpt-oss-20b-bf16"))
    result = run_pipeline(_cfg(tmp_path, "quantc: 1\nmoe: {activation: mxfp8}\nlinear: fp8_per_channel\n"), model)
    e = result.plan.module("model.layers.3.mlp.experts.down_proj")
    assert (e.weight, e.activation, e.kernel) == ("mxfp4", "mxfp8", "moe_mxfp4_mxfp8_emulated")
    # attention was left in bf16 by the checkpoint: the config quantizes it online
    q = result.plan.module("model.layers.3.self_attn.q_proj")
    assert (q.weight, q.kernel) == ("fp8_per_channel", "fp8_scaled_gemm")
