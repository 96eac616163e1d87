"""Regression tests for compiler bugs found while writing the plan/explain goldens (all fixed).

Each test states the expected behaviour and feeds the input that used to break it.
"""

from __future__ import annotations

import json
import os

from quantc.pipeline import run_pipeline
from tests.cli_golden import ROOT, run_quantc

MODELS = os.path.join(ROOT, "examples", "models")


def _cfg(tmp_path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_explain_error_names_the_explained_module(tmp_path):
    """Lowering memoises a decision per (kind, shape, scheme) and its error message embeds the first
    module's name, so `explain model.layers.5.self_attn.q_proj` reports an error about layers.0."""
    cfg = _cfg(tmp_path, "quantc: 1\nlinear: w4a16\n")
    code, out, _ = run_quantc(["explain", cfg, "model.layers.5.self_attn.q_proj", "--model",
                               "examples/models/gpt-oss-20b-bf16.json", "--format", "json"])
    data = json.loads(out)
    assert code == 1 and [e["code"] for e in data["errors"]] == ["QC301"]
    assert "model.layers.0." not in data["errors"][0]["message"]


def test_group_conflicts_have_a_location(tmp_path):
    """QC330 / QC331 are emitted with span None (printed as `<input>: error: ...`); an error needs a
    file:line:col — e.g. the rule that split the group, with the other setting as a related span."""
    cfg = _cfg(tmp_path, "quantc: 1\nlinear: fp8_per_channel\nrules:\n  - match: '*.q_proj'\n    linear: int8\n")
    result = run_pipeline(cfg, os.path.join(MODELS, "llama-3.1-8b.json"))
    (d,) = [d for d in result.diagnostics if d.code == "QC330"]
    assert d.span is not None and d.span.file == cfg and d.span.line > 0


def test_uneven_expert_parallel_split_is_checked_for_per_expert_checkpoints(tmp_path):
    """32 fused gpt-oss experts over 3 expert-parallel ranks give QC320; 128 per-expert Qwen3-MoE
    experts over 3 ranks give nothing, because the check only looks at fused modules (num_experts > 1)
    and not at the size of the moe_block."""
    cfg = _cfg(tmp_path, "quantc: 1\nmoe: fp8_per_channel\ntarget: {gpu: h100, tensor_parallel: 3, expert_parallel: true}\n")
    fused = run_pipeline(cfg, os.path.join(MODELS, "gpt-oss-20b-bf16.json"))
    per_expert = run_pipeline(cfg, os.path.join(MODELS, "qwen3-30b-a3b.json"))
    assert "QC320" in {d.code for d in fused.diagnostics}
    assert "QC320" in {d.code for d in per_expert.diagnostics}


def test_plan_text_never_truncates_counts_shapes_or_schemes():
    """On DeepSeek-V3 the `decided by` column takes the width and rich truncates the essential columns:
    the expert rows read `14…` instead of 14848 modules and `fp8_block_128x…` for the weight key."""
    code, text, _ = run_quantc(["plan", "examples/configs/deepseek_v3_fp8_block.yaml", "--model",
                                "examples/models/deepseek-v3-bf16.json"])
    assert code == 0
    expert_rows = [line for line in text.splitlines() if ".mlp.experts." in line]
    assert len(expert_rows) == 3
    for line in expert_rows:
        assert " 14848 " in line and "fp8_block_128x128" in line and "fp8_dynamic_group_128" in line


def test_bad_kernel_table_names_the_file(tmp_path):
    """A --tables file that is not valid JSON gives `<input>: error: QC510 cannot read kernel table:
    Expecting property name ...`: neither the span nor the message says which file."""
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "h100.json").write_text('{"kernel": 1,\n')
    result = run_pipeline(os.path.join(ROOT, "examples/configs/llama31_8b_fp8.yaml"),
                          os.path.join(MODELS, "llama-3.1-8b.json"), tables=(str(tables),))
    (d,) = [d for d in result.diagnostics if d.code == "QC510"]
    assert "h100.json" in d.message or (d.span is not None and d.span.file.endswith("h100.json"))


def test_explain_lists_the_user_setting_the_checkpoint_replaced(tmp_path):
    """With `moe: w4a16` on the mxfp4 gpt-oss checkpoint, explain shows `weight: mxfp4 <- checkpoint`
    overriding only the built-in default: the user's int4_group_128 (cfg.yaml:4:6), the very setting
    the QC310 error is about, is missing from the weight's history."""
    cfg = _cfg(tmp_path, "quantc: 1\nlinear: fp8_per_channel\n\nmoe: w4a16\n")
    code, out, _ = run_quantc(["explain", cfg, "model.layers.0.mlp.experts.gate_up_proj", "--model",
                               "examples/models/gpt-oss-20b.json", "--format", "json"])
    data = json.loads(out)
    assert code == 1
    assert any(o.startswith(f"int4_group_128 from {cfg}:4:6") for o in data["weight"]["overridden"]), data["weight"]
