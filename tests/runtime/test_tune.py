"""`quantc tune` on the CPU interpreter: jobs from a plan, shared-memory pruning, candidates checked
before timing, a schema-valid table written atomically, resume after an interruption, and the
compiler emitting from the tuned table."""

import json

import jsonschema
import pytest

from quantc.emit import data_dir
from quantc.gpus import GPUS
from quantc.lower import lower
from quantc.model import Inventory, ModuleInfo
from quantc.plan import KernelConfig
from quantc.tune import TuneJob, jobs_from_plan, search_space, smem_bytes
from tests.builders import make_config


def _plan(scheme="fp8_per_channel"):
    inv = Inventory("t", "T", (ModuleInfo("model.layers.0.mlp.down_proj", "linear", 64, 64, 0),
                               ModuleInfo("model.layers.0.mlp.up_proj", "linear", 32, 64, 0)), 1)
    r = lower(make_config(linear=scheme), inv)
    assert r.plan is not None, r.diagnostics
    return r.plan


def test_jobs_cover_every_dense_shape_and_bucket():
    jobs = jobs_from_plan(_plan(), ((1, 1), (16, 16)))
    assert sorted({(j.kernel, j.n, j.k) for j in jobs}) == [("fp8_scaled_gemm", 32, 64), ("fp8_scaled_gemm", 64, 64)]
    assert {(j.m_max, j.m) for j in jobs} == {(1, 1), (16, 16)}
    assert all(j.weight_key == "fp8_per_channel" and j.activation_key == "fp8_dynamic_per_token" for j in jobs)


def test_search_space_prunes_by_shared_memory_and_shape():
    job = TuneJob("fp8_scaled_gemm", 8192, 8192, "fp8_per_channel", "fp8_dynamic_per_token", 4096, 4096)
    space = search_space(job, GPUS["h100"])
    assert space and all(smem_bytes(c, job.weight_key, job.activation_key) <= GPUS["h100"].smem_bytes for c in space)
    assert smem_bytes(KernelConfig(256, 256, 256, num_stages=5), "fp8_per_channel", "fp8_dynamic_per_token") > GPUS["h100"].smem_bytes
    assert KernelConfig(256, 256, 256, 8, 8, 5, 1) not in space
    decode = search_space(TuneJob("fp8_scaled_gemm", 64, 64, "fp8_per_channel", "fp8_dynamic_per_token", 1, 1), GPUS["h100"])
    assert all(c.block_m == 16 and c.block_n <= 64 and c.block_k <= 64 for c in decode)
    long_k = search_space(TuneJob("fp8_scaled_gemm", 4096, 14336, "fp8_per_channel", "fp8_dynamic_per_token", 1, 1), GPUS["h100"])
    assert any(c.split_k == 8 for c in long_k)  # split-K is searched for decode
    big = search_space(TuneJob("fp8_scaled_gemm", 8192, 8192, "fp8_per_channel", "fp8_dynamic_per_token", 4096, 4096), GPUS["h100"])
    assert all(c.split_k == 1 for c in big)


def test_tune_writes_a_valid_table_and_resumes(tmp_path, monkeypatch):
    from quantc.runtime import tune as rt

    jobs = jobs_from_plan(_plan(), ((16, 16),))
    stats = rt.tune(jobs, GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    assert stats["tuned"] == len(jobs) == 2 and stats["no_valid_config"] == 0
    table = json.loads((tmp_path / "h100.json").read_text())
    jsonschema.Draft202012Validator(json.loads((data_dir("schemas") / "kernels.schema.json").read_text())).validate(table)
    assert {(r["kernel"], r["n"], r["k"], r["m_max"]) for r in table["entries"]} == {j.key for j in jobs}
    assert all(r["time_us"] > 0 for r in table["entries"])
    # a second run has nothing left to do
    calls = []
    monkeypatch.setattr(rt, "measure", lambda *a, **k: calls.append(a) or 1.0)
    again = rt.tune(jobs, GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    assert again["skipped_done"] == 2 and again["tuned"] == 0 and not calls


def test_interrupted_tune_keeps_finished_entries(tmp_path, monkeypatch):
    from quantc.runtime import tune as rt

    jobs = jobs_from_plan(_plan(), ((16, 16),))
    real = rt.make_operands
    seen = []

    def boom(job, device):
        seen.append(job)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(job, device)

    monkeypatch.setattr(rt, "make_operands", boom)
    with pytest.raises(KeyboardInterrupt):
        rt.tune(jobs, GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    table = json.loads((tmp_path / "h100.json").read_text())
    assert len(table["entries"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["h100.json"]
    monkeypatch.setattr(rt, "make_operands", real)
    resumed = rt.tune(jobs, GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    assert resumed["skipped_done"] == 1 and resumed["tuned"] == 1


def test_candidate_that_disagrees_is_dropped(monkeypatch):
    from quantc.runtime import tune as rt

    job = jobs_from_plan(_plan(), ((16, 16),))[0]
    ops = rt.make_operands(job, "cpu")
    good = rt.measure(job, KernelConfig(16, 32, 32, num_warps=4, num_stages=2), ops, "cpu")
    assert good is not None and good > 0
    ops.reference = ops.reference * 1.5  # a wrong answer
    assert rt.measure(job, KernelConfig(16, 32, 32, num_warps=4, num_stages=2), ops, "cpu") is None


def test_compiler_emits_from_the_tuned_table(tmp_path):
    from quantc.runtime import tune as rt

    plan = _plan()
    rt.tune(jobs_from_plan(plan, ((16, 16),)), GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    inv = Inventory("t", "T", (ModuleInfo("model.layers.0.mlp.down_proj", "linear", 64, 64, 0),), 1)
    tuned = lower(make_config(linear="fp8_per_channel"), inv, tables_dirs=(str(tmp_path),)).plan
    entry = tuned.kernels["fp8_scaled_gemm/n64_k64"]
    assert entry.source == "tuned (h100)"


def test_tuned_vs_default_summary(tmp_path):
    import importlib.util
    import pathlib

    from quantc.runtime import tune as rt

    rt.tune(jobs_from_plan(_plan(), ((1, 1), (16, 16))), GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "tuned_vs_default.py"
    spec = importlib.util.spec_from_file_location("tuned_vs_default", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.summarize(json.loads((tmp_path / "h100.json").read_text()))
    k = out["kernels"]["fp8_scaled_gemm"]
    assert k["entries"] == 4 and k["worst"] <= k["geomean_speedup"] <= k["best"]
