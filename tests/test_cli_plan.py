"""Error paths of lowering, ``--set`` and plan loading, fed real inputs: every diagnostic code that
quantc/lower.py, quantc/overrides.py and quantc/plan.py can emit is produced here from a bad config,
flag or plan file, and its message and location are checked. Also: ``compile -o`` + ``load_plan``
round-trips to the same data ``plan --format json`` prints, and compiled bytes are deterministic.
"""

from __future__ import annotations

import copy
import json
import os
import re

import pytest

from quantc import QuantcError, load_plan
from quantc.pipeline import run_pipeline
from tests.cli_golden import ROOT, run_quantc

MODELS = os.path.join(ROOT, "examples", "models")


def model(name: str) -> str:
    return os.path.join(MODELS, f"{name}.json")


def static_fp8_llama(tmp_path) -> str:
    """Llama-3.1-8B as an fp8 checkpoint with stored static input scales."""
    with open(model("llama-3.1-8b")) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static"}
    folder = tmp_path / "llama-fp8-static"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder / "config.json")


# code, config text (written to cfg.yaml), model, pipeline kwargs, message regex, location (str(span);
# "{model}" is the model file; "" where the message itself must carry the places), hint regex
CASES = [
    ("QC301", "quantc: 1\nlinear: w4a16\n", "gpt-oss-20b-bf16", {},
     r"model\.layers\.0\.self_attn\.q_proj .*K = 2880 is not a multiple of 128, the weight key int4_group_128 groups along K",
     "cfg.yaml:2:9", r"choose a weight key whose groups divide 2880 \(e\.g\. .*int4_group_32.*\), or skip this module"),
    ("QC301", "quantc: 1\nlinear: {weight: fp8_per_channel}\nrules:\n  - match: '*.self_attn'\n    linear: fp8_per_block\n",
     "gpt-oss-20b-bf16", {},
     r"K = 2880 is not a multiple of 128, the activation key fp8_dynamic_group_128 groups along K", "cfg.yaml:5:13",
     r"activation key whose groups divide 2880 \(e\.g\. fp8_dynamic_per_token, .*\), or skip this module"),
    ("QC305", "quantc: 1\nlinear: fp8_per_channel\n", "llama-3.1-8b", {"gpu": "a100"},
     r"no kernel can run weight fp8_per_channel x activation fp8_dynamic_per_token \(linear\) on a100 \(sm_80\): "
     r"fp8_scaled_gemm: needs sm_89\+", "cfg.yaml:2:9", r"only bf16 activations \(activation: none, the weight-only path\) run with weight fp8_per_channel on a100"),
    ("QC305", "quantc: 1\nlinear: int8\nbackend: {linear: torch}\n", "llama-3.1-8b", {},
     r"int8_gemm: family triton is not the pinned backend torch \(cfg\.yaml:3:19\)", "cfg.yaml:2:9",
     r"no kernel runs weight int8_per_channel for linear layers on h100; choose another scheme"),
    ("QC305", "quantc: 1\nlinear: nvfp4\n", "llama-3.1-8b", {"gpu": "h100"},
     r"no kernel can run weight nvfp4 x activation nvfp4 \(linear\) on h100 \(sm_90\): nvfp4_gemm: needs sm_100\+",
     "cfg.yaml:2:9", r"only bf16 activations \(activation: none, the weight-only path\) run with weight nvfp4 on h100"),
    ("QC307", "quantc: 1\nlinear: {weight: fp8_per_tensor, activation: fp8_static_per_tensor}\n", "llama-3.1-8b", {},
     r"model\.layers\.0\.self_attn\.q_proj \(and \d+ more modules like it\): activation fp8_static_per_tensor needs "
     r"calibrated scales from a checkpoint, and none provides them", "cfg.yaml:2:46", r"use fp8_dynamic_per_tensor"),
    ("QC310", "quantc: 1\nmoe: w4a16\n", "gpt-oss-20b", {},
     r"the config sets weight int4_group_128 \(cfg\.yaml:2:6: moe\) but the checkpoint stores it as mxfp4 "
     r"\(gpt-oss-20b\.json: quantization_config\)", "cfg.yaml:2:6", r"set weight mxfp4 \(or leave it unset\)"),
    ("QC310", "quantc: 1\n", "deepseek-v3", {"overrides": ["linear.weight=int8_per_channel"]},
     r"the config sets weight int8_per_channel \(--set linear\.weight=int8_per_channel\) but the checkpoint stores it as "
     r"fp8_block_128x128", "--set linear.weight=int8_per_channel", r"set weight fp8_block_128x128 \(or leave it unset\)"),
    ("QC311", "quantc: 1\nlinear: {activation: fp8_dynamic_per_token}\n", "<static-fp8>", {},
     r"the config sets activation fp8_dynamic_per_token \(cfg\.yaml:2:22: linear\) but the checkpoint fixes "
     r"fp8_static_per_tensor with stored static scales", "cfg.yaml:2:22",
     r"remove the activation setting for this module or set it to fp8_static_per_tensor"),
    ("QC320", "quantc: 1\nmoe: mxfp4\ntarget: {tensor_parallel: 3, expert_parallel: true}\n", "gpt-oss-20b-bf16", {},
     r"model\.layers\.0\.mlp\.experts\.gate_up_proj .*32 experts do not split evenly over 3 ranks \(expert parallel\)",
     "cfg.yaml:3:27", r"choose a tensor_parallel size that divides the expert count"),
    ("QC321", "quantc: 1\nlinear: fp8_per_channel\n", "llama-3.1-8b", {"tp": 3},
     r"model\.layers\.0\.self_attn\.q_proj .*N = 4096 does not split evenly over tensor_parallel = 3",
     "--set target.tensor_parallel=3", r"choose a tensor_parallel size that divides N"),
    ("QC321", "quantc: 1\nlinear: fp8_per_channel\ntarget:\n  tensor_parallel: 3\n", "llama-3.1-8b", {},
     r"model\.layers\.0\.self_attn\.o_proj .*K = 4096 does not split evenly over tensor_parallel = 3", "cfg.yaml:4:20",
     r"choose a tensor_parallel size that divides K"),
    ("QC322", "quantc: 1\nlinear: fp8_per_block\n", "qwen3-30b-a3b", {"tp": 8},
     r"model\.layers\.0\.self_attn\.k_proj .*with tensor_parallel = 8 each rank holds N = 64 rows, which cuts a "
     r"128-row block of fp8_block_128x128 at a shard edge", "cfg.yaml:2:9",
     r"choose tensor_parallel so that N / tp is a multiple of 128, or a per-channel key"),
    ("QC322", "quantc: 1\nmoe: mxfp4\ntarget: {expert_parallel: false}\n", "gpt-oss-20b-bf16", {"tp": 4},
     r"model\.layers\.0\.mlp\.experts\.down_proj .*each rank holds K = 720 columns, which cuts a group of 32 of mxfp4",
     "cfg.yaml:2:6", r"choose tensor_parallel so that K / tp is a multiple of 32"),
    ("QC322", "quantc: 1\n", "gpt-oss-20b", {"tp": 4, "overrides": ["target.expert_parallel=false"]},
     r"experts\.down_proj .*K = 720 columns, which cuts a group of 32 of mxfp4", "{model}",
     r"choose tensor_parallel so that K / tp is a multiple of 32"),
    ("QC330", "quantc: 1\nlinear: fp8_per_channel\nrules:\n  - match: '*.q_proj'\n    linear: int8\n", "llama-3.1-8b", {},
     r"model\.layers\.0\.self_attn\.qkv_proj: modules fused into one GEMM have different schemes: .*k_proj has "
     r"fp8_per_channel/fp8_dynamic_per_token \(weight from cfg\.yaml:2:9: linear.*q_proj has "
     r"int8_per_channel/int8_dynamic_per_token \(weight from cfg\.yaml:5:13: rules\[0\]", "",
     r"give them the same weight and activation keys"),
    ("QC331", "quantc: 1\nmoe: fp8_per_channel\nrules:\n  - match: 're:.*\\.experts\\.0\\..*'\n    moe: int8\n",
     "qwen3-30b-a3b", {},
     r"model\.layers\.0\.mlp\.experts: experts of one MoE layer have different schemes: .*experts\.1\.gate_proj has "
     r"fp8_per_channel/fp8_dynamic_per_token \(weight from cfg\.yaml:2:6: moe.*experts\.0\.gate_proj has "
     r"int8_per_channel/int8_dynamic_per_token \(weight from cfg\.yaml:5:10: rules\[0\]", "",
     r"match the experts of a layer together"),
    ("QC201", "quantc: 1\nlinear: int8\nrules:\n  - match: model.visual\n    skip: true\n", "llama-3.1-8b", {},
     r"rules\[0\] \(cfg\.yaml\) matches no module of the model \(match: 'model\.visual'\)", "cfg.yaml:4:5",
     r"check the module names"),
    ("QC202", "quantc: 1\nrules:\n  - match: '*.down_proj'\n    linear: int8\n  - match: '*.mlp'\n    linear: fp8_per_channel\n",
     "llama-3.1-8b", {},
     r"rules\[0\] \(cfg\.yaml\) is shadowed: rules\[1\] \(cfg\.yaml\) overrides every field it sets", "cfg.yaml:3:5",
     r"remove it, or move it after the later rule"),
    ("QC203", "quantc: 1\nlinear: int8\nignore: [lm_head, '*.mlp.router']\n", "llama-3.1-8b", {},
     r"ignore entry '\*\.mlp\.router' matches no module of the model", "cfg.yaml:3:19", r"patterns match full dotted names"),
    ("QC510", "quantc: 1\nlinear: int8\n", "llama-3.1-8b", {"tables": ("<bad-table>",), "gpu": "h100"},
     r"cannot read kernel table: .*h100\.json: not a quantc kernel table", "", r"check the folder given to --tables"),
    ("QC601", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["linear"]},
     r"--set expects path=value, got 'linear'", "--set linear", r"for example --set moe\.activation=mxfp8"),
    ("QC602", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["lineer.weight=int8_per_channel"]},
     r"--set: unknown path 'lineer\.weight'", "--set lineer.weight=int8_per_channel", r"did you mean 'linear\.weight'\?"),
    ("QC603", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["linear=fp8_per_chanel"]},
     r"--set linear: unknown scheme shorthand 'fp8_per_chanel'", "--set linear=fp8_per_chanel",
     r"did you mean 'fp8_per_channel'\?"),
    ("QC603", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["moe.activation=mxfp9"]},
     r"--set moe\.activation: unknown activation key 'mxfp9'", "--set moe.activation=mxfp9", r"did you mean 'mxfp8'\?"),
    ("QC604", "quantc: 1\n", "llama-3.1-8b", {"gpu": "h1000"}, r"unknown GPU 'h1000'", "--set target.gpu=h1000",
     r"did you mean 'h100'\?"),
    ("QC605", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["target.tensor_parallel=two"]},
     r"tensor_parallel must be a positive integer, got 'two'", "--set target.tensor_parallel=two", r"for example --tp 2"),
    ("QC605", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["target.expert_parallel=yes"]},
     r"expert_parallel must be true or false, got 'yes'", "--set target.expert_parallel=yes", None),
    ("QC606", "quantc: 1\n", "llama-3.1-8b", {"overrides": ["backend.moe=cuda"]},
     r"unknown backend family 'cuda'", "--set backend.moe=cuda", r"valid names: torch, triton, triton_emulated"),
]


def _ids():
    seen: dict[str, int] = {}
    out = []
    for c in CASES:
        seen[c[0]] = seen.get(c[0], 0) + 1
        out.append(f"{c[0]}-{seen[c[0]]}")
    return out


@pytest.mark.parametrize("code,text,model_name,kwargs,message,where,hint", CASES, ids=_ids())
def test_diagnostic(code, text, model_name, kwargs, message, where, hint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(text)
    m = static_fp8_llama(tmp_path) if model_name == "<static-fp8>" else model(model_name)
    if kwargs.get("tables") == ("<bad-table>",):
        (tmp_path / "tables").mkdir()
        (tmp_path / "tables" / "h100.json").write_text('{"version": 1}')
        kwargs = {**kwargs, "tables": ("tables",)}
    result = run_pipeline("cfg.yaml", m, **kwargs)
    found = [d for d in result.diagnostics if d.code == code and re.search(message, d.message)]
    assert found, f"no {code} matching {message!r} in {[(d.code, d.message) for d in result.diagnostics]}"
    d = found[0]
    assert (d.severity == "warning") == code.startswith("QC20")
    if where:
        assert str(d.span) == where.format(model=m)
    if hint is not None:
        assert re.search(hint, d.hint or ""), d.hint
    if d.severity == "error":
        assert result.plan is None and not result.ok


def test_every_emitted_code_is_exercised():
    """A new diagnostic code in lowering, --set or plan loading needs a case here."""
    emitted = set()
    for f in ("lower.py", "overrides.py", "plan.py", "pipeline.py"):
        with open(os.path.join(ROOT, "quantc", f), encoding="utf-8") as fh:
            emitted |= set(re.findall(r'"(QC[2356]\d\d)"', fh.read()))
    covered = {c[0] for c in CASES} | set(PLAN_LOAD_CODES)
    assert emitted <= covered, f"codes without a test: {sorted(emitted - covered)}"


def test_static_checkpoint_scales_satisfy_fp8_static(tmp_path, monkeypatch):
    """The positive side of QC307/QC311: a checkpoint with static scales supplies them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("quantc: 1\nlinear: {activation: fp8_static_per_tensor}\n")
    result = run_pipeline("cfg.yaml", static_fp8_llama(tmp_path))
    assert result.ok, [d.render_short() for d in result.diagnostics]
    q = next(m for m in result.plan.modules if m.name == "model.layers.0.self_attn.q_proj")
    assert q.activation == "fp8_static_per_tensor" and q.kernel == "fp8_scaled_gemm"


def test_strict_promotes_usage_warnings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("quantc: 1\nlinear: int8\nignore: ['*.mlp.router']\n")
    loose = run_pipeline("cfg.yaml", model("llama-3.1-8b"))
    strict = run_pipeline("cfg.yaml", model("llama-3.1-8b"), strict=True)
    assert loose.ok and loose.plan is not None and [d.code for d in loose.diagnostics] == ["QC203"]
    assert strict.plan is None and [(d.code, d.severity, str(d.span)) for d in strict.diagnostics] == [("QC203", "error", "cfg.yaml:3:10")]
    code, out, err = run_quantc(["plan", "cfg.yaml", "--model", model("llama-3.1-8b"), "--strict"], cwd=str(tmp_path))
    assert code == 1 and out == "" and "cfg.yaml:3:10: error: QC203 ignore entry '*.mlp.router' matches no module" in err


# --- plan files: load errors -------------------------------------------------------------------

def _compiled(tmp_path) -> str:
    path = tmp_path / "plan.json"
    code, out, err = run_quantc(["compile", "examples/configs/llama31_8b_fp8.yaml", "--model",
                                 "examples/models/llama-3.1-8b.json", "-o", str(path)])
    assert code == 0, err
    return str(path)


def _rewrite(path: str, edit) -> None:
    from quantc.plan import _content_hash

    with open(path) as fh:
        data = json.load(fh)
    data = edit(copy.deepcopy(data))
    if data is not None and "hash" in data:
        data["hash"] = _content_hash(data)
    with open(path, "w") as fh:
        json.dump(data, fh)


def _drop(key):
    def edit(d):
        del d[key]
        return d
    return edit


PLAN_LOAD_CODES = {
    # code: (how the file is broken, message regex, location)
    "QC500": ("missing", r"cannot read plan", "{path}"),
    "QC501": ("text", r"plan is not valid JSON: Expecting", "{path}:3:1"),
    "QC501-format": ("format", r"not a quantc compiled plan \(missing \"format\": \"quantc-plan\"\)", "{path}"),
    "QC502": ("version", r"plan format version 2 is not supported \(this quantc reads version 1\)", "{path}"),
    "QC503": ("edit", r"plan content does not match its hash: the file was edited or truncated", "{path}"),
    "QC504": ("malformed", r"malformed plan: KeyError\('kernels'\)", "{path}"),
}


@pytest.mark.parametrize("code", sorted(PLAN_LOAD_CODES))
def test_plan_load_errors(code, tmp_path):
    how, message, where = PLAN_LOAD_CODES[code]
    path = _compiled(tmp_path)
    if how == "missing":
        path = str(tmp_path / "nope.json")
    elif how == "text":
        with open(path, "w") as fh:
            fh.write('{\n  "format": "quantc-plan",\n')
    elif how == "format":
        _rewrite(path, _drop("format"))
    elif how == "version":
        _rewrite(path, lambda d: {**d, "version": 2})
    elif how == "edit":
        with open(path) as fh:
            data = json.load(fh)
        data["summary"]["bytes_after"] //= 2  # hash left as it was
        with open(path, "w") as fh:
            json.dump(data, fh)
    elif how == "malformed":
        _rewrite(path, _drop("kernels"))
    with pytest.raises(QuantcError) as exc:
        load_plan(path)
    (d,) = exc.value.diagnostics
    assert d.code == code.split("-")[0] and re.search(message, d.message), d.message
    assert str(d.span) == where.format(path=path)
    if code != "QC500":
        assert d.hint


def test_plan_load_error_in_export_cli(tmp_path):
    """A user sees a load error as a located diagnostic, exit 1, no traceback."""
    path = _compiled(tmp_path)
    _rewrite(path, lambda d: {**d, "version": 2})
    code, out, err = run_quantc(["export", path])
    assert code == 1 and out == ""
    assert f"{path}: error: QC502 plan format version 2 is not supported" in err and "Traceback" not in err


# --- compile -o + load_plan round trip ------------------------------------------------------------

ROUND_TRIPS = [
    ("examples/configs/gpt_oss_20b_mxfp4_mxfp8.toml", "gpt-oss-20b", []),
    ("examples/configs/qwen3_30b_a3b_fp8_child.yaml", "qwen3-30b-a3b", []),
    ("examples/configs/llama31_8b_w4a16.toml", "llama-3.1-8b", ["--tp", "2", "--gpu", "h100"]),
    ("examples/configs/gpt_oss_20b_checkpoint_mxfp8_acts.yaml", "gpt-oss-20b", ["--set", "linear=fp8_per_channel", "--gpu", "h200"]),
]


@pytest.mark.parametrize("config,model_name,extra", ROUND_TRIPS, ids=[r[1] + "-" + os.path.basename(r[0]) for r in ROUND_TRIPS])
def test_compile_round_trip_matches_plan_json(config, model_name, extra, tmp_path, monkeypatch):
    from quantc.report import plan_data

    args = [config, "--model", f"examples/models/{model_name}.json", *extra]
    code, out, err = run_quantc(["plan", *args, "--format", "json"])
    assert code == 0, err
    shown = json.loads(out)
    out_path = tmp_path / "plan.json"
    code, out, err = run_quantc(["compile", *args, "-o", str(out_path)])
    assert code == 0 and out.startswith(f"wrote {out_path}: {shown['summary']['modules']} modules, "
                                         f"{len(shown['kernels'])} kernel shapes"), out
    loaded = load_plan(out_path)
    again = plan_data(loaded, [])
    for key in ("model", "target", "summary", "rows", "kernels"):
        assert again[key] == shown[key], key
    # warnings travel in the plan, as one line each
    warnings = [d for d in shown["diagnostics"] if d["severity"] == "warning"]
    assert len([w for w in loaded.warnings if ": warning: QC" in w]) == len(warnings)
    # the Python API gives the same entries, module by module
    import quantc

    gpu = extra[extra.index("--gpu") + 1] if "--gpu" in extra else None
    tp = int(extra[extra.index("--tp") + 1]) if "--tp" in extra else None
    sets = [extra[i + 1] for i, a in enumerate(extra) if a == "--set"]
    monkeypatch.chdir(ROOT)  # relative paths, as the CLI got them
    api = quantc.compile(config, f"examples/models/{model_name}.json", gpu=gpu, tp=tp, overrides=sets)
    assert {m.name: m for m in loaded.modules} == {m.name: m for m in api.modules}
    assert loaded.kernels == api.kernels and loaded.summary == api.summary


def test_compile_is_deterministic(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        code, _, err = run_quantc(["compile", "examples/configs/qwen3_30b_a3b_mxfp4_mxfp8.yaml", "--model",
                                   "examples/models/qwen3-30b-a3b.json", "-o", str(path)])
        assert code == 0, err
    assert a.read_bytes() == b.read_bytes()
    data = json.loads(a.read_text())
    # sources are recorded relative to the config, with their hashes
    assert [s["path"] for s in data["sources"]] == ["qwen3_30b_a3b_mxfp4_mxfp8.yaml", "qwen3_30b_a3b_mxfp4.yaml"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", s["sha256"]) for s in data["sources"])


def test_compile_overwrites_atomically(tmp_path):
    """A second compile replaces the file whole; an infeasible one leaves the old plan untouched."""
    path = _compiled(tmp_path)
    before = open(path, "rb").read()
    code, _, err = run_quantc(["compile", "examples/configs/llama31_8b_fp8.yaml", "--model",
                               "examples/models/llama-3.1-8b.json", "--gpu", "a100", "-o", path])
    assert code == 1 and "QC305" in err
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]  # no temporary file left behind


# --- usage errors (exit 2) -----------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["plan", "missing.yaml", "--model", "examples/models/llama-3.1-8b.json"], "error: config file not found: missing.yaml"),
    (["plan", "examples/configs/base_fp8.yaml", "--model", "nope/config.json"], "error: model not found: nope/config.json"),
    (["plan", "examples/configs/base_fp8.yaml", "--model", "examples/models/qwen3-8b.json", "--format", "xml"],
     "Invalid value for '--format'"),
    (["plan", "examples/configs/base_fp8.yaml", "--model", "examples/models/qwen3-8b.json", "--tp", "0"],
     "Invalid value for '--tp'"),
    (["plan", "examples/configs/base_fp8.yaml", "--model", "examples/models/qwen3-8b.json", "--tp", "two"],
     "Invalid value for '--tp'"),
    (["explain", "examples/configs/base_fp8.yaml", "lm_head", "--model", "examples/models/qwen3-8b.json", "--format", "csv"],
     "Invalid value for '--format'"),
    (["explain", "missing.yaml", "lm_head", "--model", "examples/models/qwen3-8b.json"], "error: config file not found"),
    (["compile", "examples/configs/base_fp8.yaml", "--model", "examples/models/qwen3-8b.json", "-o", "no/such/dir/p.json"],
     "error: output folder does not exist: no/such/dir"),
    (["compile", "examples/configs/base_fp8.yaml", "--model", "examples/models/missing.json", "-o", "p.json"],
     "error: model not found"),
])
def test_usage_errors_exit_2(args, message):
    code, out, err = run_quantc(args)
    assert code == 2 and out == "" and message in err and "Traceback" not in err


def test_explain_unknown_module_suggests_names():
    code, out, err = run_quantc(["explain", "examples/configs/qwen3_30b_a3b_mxfp4.yaml", "model.layers.3.mlp.expert.7.down_proj",
                                 "--model", "examples/models/qwen3-30b-a3b.json"])
    assert code == 1 and out == ""
    assert err.startswith("error: QC814 no module named 'model.layers.3.mlp.expert.7.down_proj' in "
                          "examples/models/qwen3-30b-a3b.json; did you mean model.layers.3.mlp.experts.7.down_proj")


def test_plan_json_of_infeasible_plan_has_only_diagnostics():
    code, out, err = run_quantc(["plan", "examples/configs/llama31_8b_fp8.yaml", "--model", "examples/models/llama-3.1-8b.json",
                                 "--gpu", "a100", "--format", "json"])
    data = json.loads(out)
    assert code == 1 and err == "" and list(data) == ["diagnostics"]
    where = {(d["code"], d["file"], d["line"], d["col"]) for d in data["diagnostics"]}
    cfg = "examples/configs/llama31_8b_fp8.yaml"
    # fp8 linears (kind default and the o_proj rule) and the fp8 KV cache, each at the line that asked for it
    assert where == {("QC305", cfg, 4, 9), ("QC305", cfg, 12, 13), ("QC305", cfg, 5, 24)}


def test_plan_json_lists_every_module_on_request():
    code, out, _ = run_quantc(["plan", "examples/configs/llama31_8b_int8.json", "--model",
                               "examples/models/llama-3.1-8b.json", "--format", "json", "--modules"])
    data = json.loads(out)
    assert code == 0 and len(data["modules"]) == data["summary"]["modules"] == 258
    q = next(m for m in data["modules"] if m["name"] == "model.layers.5.self_attn.q_proj")
    assert q["weight"] and q["kernel"] and q["provenance"]["weight"].startswith("examples/configs/llama31_8b_int8.json:")
    code, _, err = run_quantc(["plan", "examples/configs/llama31_8b_int8.json", "--model",
                               "examples/models/llama-3.1-8b.json", "--modules"])
    assert code == 2 and "--modules lists every module in --format json or yaml" in err
