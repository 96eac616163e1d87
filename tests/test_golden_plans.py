"""Golden tests of what users see from ``quantc plan / compile / explain``.

1. Every example config planned against every example model it is meant for
   (tests/golden/plan/examples/<config>__<model>/): ``plan --format json`` output (model, target,
   summary, rows, kernels, diagnostics) and the exit code; for a handful also the text a person reads
   and the diagnostics printed on stderr. An infeasible combination is a golden like any other. The
   whole config x model matrix is pinned compactly in tests/golden/plan/matrix.json (exit code,
   summary, diagnostic codes).
2. CLI behaviours, one folder per case (tests/golden/{plan/cases,explain,compile}/<case>/: ``args``,
   the config, expected ``stdout``, ``stderr``, ``exit_code``); see tests/cli_golden.py.

``QUANTC_REGEN_GOLDEN=1`` rewrites the expectations; review the diff before committing.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.cli_golden import GOLDEN, REGEN, ROOT, case_folders, check_file, run_case, run_quantc

CONFIGS = "examples/configs"
MODELS = "examples/models"
ALL_MODELS = sorted(f[: -len(".json")] for f in os.listdir(os.path.join(ROOT, MODELS)) if f.endswith(".json"))

# model families named by an example config's file name prefix -> the example models of that family
FAMILIES = {
    "llama31_8b": ["llama-3.1-8b"],
    "llama31_70b": ["llama-3.1-70b"],
    "qwen3_8b": ["qwen3-8b"],
    "qwen3_30b_a3b": ["qwen3-30b-a3b"],
    "mixtral": ["mixtral-8x7b"],
    "deepseek_v3": ["deepseek-v3", "deepseek-v3-bf16"],
    "gpt_oss_20b": ["gpt-oss-20b", "gpt-oss-20b-bf16"],
    "gpt_oss_120b": ["gpt-oss-120b"],
}


def meant_for(config: str) -> list[str]:
    """The example models a config is meant for: those its header comments name as
    examples/models/<file>.json, else its file name's model family, else (a generic config) all."""
    with open(os.path.join(ROOT, CONFIGS, config), encoding="utf-8") as fh:
        header = [line for line in fh if line.lstrip().startswith(("#", "//"))]
    named = sorted(set(re.findall(r"examples/models/([\w.-]+)\.json", "".join(header))) & set(ALL_MODELS))
    if named:
        return named
    for prefix, models in sorted(FAMILIES.items(), key=lambda kv: -len(kv[0])):
        if config.startswith(prefix + "_") or os.path.splitext(config)[0] == prefix:
            return models
    return ALL_MODELS


MEANT_FOR = {c: meant_for(c) for c in sorted(os.listdir(os.path.join(ROOT, CONFIGS)))}
# combinations whose text rendering (what a person reads) is also pinned
WITH_TEXT = {
    ("llama31_8b_fp8.yaml", "llama-3.1-8b"),
    ("deepseek_v3_fp8_block.yaml", "deepseek-v3-bf16"),
    ("deepseek_v3_fp8_block.yaml", "deepseek-v3"),
    ("gpt_oss_20b_mxfp4_mxfp8.toml", "gpt-oss-20b"),
    ("qwen3_30b_a3b_mxfp4_mxfp8.yaml", "qwen3-30b-a3b"),
    ("llama31_8b_w4a16.toml", "llama-3.1-8b"),
}
PAIRS = [(c, m) for c, models in sorted(MEANT_FOR.items()) for m in models]
EXAMPLES = os.path.join(GOLDEN, "plan", "examples")


def _folder(config: str, model: str) -> str:
    return os.path.join(EXAMPLES, f"{os.path.splitext(config)[0]}__{model}")


def test_intended_models():
    assert MEANT_FOR["base_fp8.yaml"] == ALL_MODELS  # generic
    assert MEANT_FOR["deepseek_v3_fp8_block.yaml"] == ["deepseek-v3-bf16"]  # named in its header
    assert MEANT_FOR["llama31_8b_int8.json"] == ["llama-3.1-8b"]
    assert all(m in ALL_MODELS for models in MEANT_FOR.values() for m in models)


def test_no_stale_example_goldens():
    expected = {os.path.basename(_folder(c, m)) for c, m in PAIRS}
    assert set(os.listdir(EXAMPLES)) == expected or REGEN


@pytest.mark.parametrize("config,model", PAIRS, ids=[f"{c}@{m}" for c, m in PAIRS])
def test_example_plan_json(config, model):
    folder = _folder(config, model)
    args = ["plan", f"{CONFIGS}/{config}", "--model", f"{MODELS}/{model}.json"]
    code, out, err = run_quantc([*args, "--format", "json"])
    assert "Traceback" not in err and err == ""  # json mode prints nothing but the data
    data = json.loads(out)
    check_file(os.path.join(folder, "plan.json"), out)
    check_file(os.path.join(folder, "exit_code"), f"{code}\n")
    # what the JSON says agrees with the exit code, and paths in it are relative
    errors = [d for d in data["diagnostics"] if d["severity"] == "error"]
    if code == 0:
        assert not errors and set(data) == {"model", "target", "summary", "rows", "kernels", "diagnostics"}
        assert data["model"]["source"] == f"{MODELS}/{model}.json"
        assert sum(r["count"] for r in data["rows"]) == data["summary"]["modules"] == data["model"]["num_modules"]
    else:
        assert code == 1 and errors and set(data) == {"diagnostics"}
    assert ROOT not in out
    if (config, model) in WITH_TEXT:
        tcode, text, terr = run_quantc(args)
        assert tcode == code
        check_file(os.path.join(folder, "plan.txt"), text)
        check_file(os.path.join(folder, "stderr.txt"), terr)
        for d in data["diagnostics"]:  # every diagnostic of the data is printed for the person too
            assert f"{d['code']} " in terr


@pytest.mark.parametrize("case", case_folders("plan", "cases"))
def test_plan_case(case, tmp_path):
    run_case(os.path.join(GOLDEN, "plan", "cases", case), str(tmp_path))


@pytest.mark.parametrize("case", case_folders("explain"))
def test_explain_case(case, tmp_path):
    run_case(os.path.join(GOLDEN, "explain", case), str(tmp_path))


@pytest.mark.parametrize("case", case_folders("compile"))
def test_compile_case(case, tmp_path):
    from quantc import load_plan

    code, _, _ = run_case(os.path.join(GOLDEN, "compile", case), str(tmp_path))
    written = tmp_path / "plan.json"
    if code == 0:
        assert load_plan(written).summary["modules"] > 0
    else:  # nothing is written when the plan is infeasible or the command is misused
        assert not written.exists() and list(tmp_path.iterdir()) == []


def test_golden_exit_codes_cover_all_three():
    codes = set()
    for sub in (("plan", "cases"), ("explain",), ("compile",)):
        for case in case_folders(*sub):
            with open(os.path.join(GOLDEN, *sub, case, "exit_code")) as fh:
                codes.add(int(fh.read()))
    assert codes == {0, 1, 2}


def test_every_example_config_against_every_example_model():
    """The whole matrix, compactly: for each (config, model), the exit code, the summary (modules,
    per-scheme counts and bytes) and the diagnostic codes. A config meant for another architecture
    typically warns that its rules match nothing, or fails a feasibility check: that is the point."""
    matrix = {}
    for config in sorted(MEANT_FOR):
        for model in ALL_MODELS:
            code, out, err = run_quantc(["plan", f"{CONFIGS}/{config}", "--model", f"{MODELS}/{model}.json",
                                         "--format", "json"])
            assert "Traceback" not in err
            data = json.loads(out)
            entry = {"exit_code": code, "diagnostics": sorted({d["code"] for d in data["diagnostics"]})}
            if code == 0:
                s = data["summary"]
                entry["summary"] = {"modules": s["modules"], "bytes_before": s["bytes_before"],
                                    "bytes_after": s["bytes_after"],
                                    "schemes": {k: v["modules"] for k, v in s["schemes"].items()}}
            matrix[f"{config} @ {model}"] = entry
    assert len(matrix) == len(MEANT_FOR) * len(ALL_MODELS)
    check_file(os.path.join(GOLDEN, "plan", "matrix.json"), json.dumps(matrix, indent=1, sort_keys=True) + "\n")
