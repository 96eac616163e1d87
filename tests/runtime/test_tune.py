"""`quantc tune` on the CPU interpreter: jobs from a plan, shared-memory pruning, candidates checked
before timing, a schema-valid table written atomically, resume after an interruption, and the
compiler emitting from the tuned table."""

import dataclasses
import json

import jsonschema
import pytest
import torch

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


def test_decode_4bit_search_space_has_two_warp_programs_and_deep_split_k():
    """Measured on an H100 (bench/wo_probe.py): the planes kernel wins decode with two-warp programs on
    32-64 weight rows and split-K up to ~20 on short-N shapes, outside the generic grid."""
    job = TuneJob("int4_weight_only_gemm", 4096, 14336, "int4_group_128", "none", 16, 16)
    space = search_space(job, GPUS["h100"])
    assert {c.num_warps for c in space} == {1, 2, 4} and {c.block_n for c in space} == {32, 64, 128}
    assert max(c.split_k for c in space) == 24 and all(c.block_k in (128, 256) for c in space)
    assert all(c.block_n * c.block_k <= 256 * 32 * c.num_warps for c in space)  # no spilling tiles
    assert KernelConfig(16, 128, 128, 8, 1, 3, 1) not in space and KernelConfig(16, 32, 128, 8, 1, 3, 1) in space
    prefill = search_space(TuneJob("int4_weight_only_gemm", 4096, 14336, "int4_group_128", "none", 256, 256),
                           GPUS["h100"])
    assert 2 not in {c.num_warps for c in prefill} and max(c.block_m for c in prefill) > 16


def test_one_row_4bit_jobs_on_sm90_measure_one_candidate():
    """At one row on sm_90 the runtime's 4-bit GEMV takes every call at its own config (wo_gemv.gemv_config), so a
    job there measures one candidate (its default where given) instead of searching a table row nobody reads;
    other GPUs (the plane kernel) and 16 rows keep the grid; 2-8 rows of int4 g128 and fp4 (int4 with zero points
    2-16) are the natural layout's MMA kernel's."""
    m1 = TuneJob("fp4_weight_only_gemm", 4096, 14336, "mxfp4", "none", 1, 1)
    assert len(search_space(m1, GPUS["h100"])) == len(search_space(m1, GPUS["h200"])) == 1
    default = KernelConfig(16, 32, 128, 8, 2, 4, 5)
    assert search_space(m1, GPUS["h100"], space="seeded", tables=[], default=default) == [default]
    assert len(search_space(m1, GPUS["a100"])) > 100
    assert len(search_space(dataclasses.replace(m1, m_max=16, m=16), GPUS["h100"])) > 100
    assert len(search_space(dataclasses.replace(m1, m_max=2, m=2), GPUS["h100"])) == 1  # two rows: its own too
    # the natural layout's MMA kernel takes 2-8 rows (int4 with zero points 2-16) at its own config too
    assert len(search_space(dataclasses.replace(m1, m_max=8, m=8), GPUS["h100"])) == 1
    int4 = TuneJob("int4_weight_only_gemm", 4096, 14336, "int4_group_128", "none", 8, 8)
    assert len(search_space(int4, GPUS["h100"])) == 1 and len(search_space(int4, GPUS["a100"])) > 100
    assert len(search_space(dataclasses.replace(int4, m_max=16, m=16), GPUS["h100"])) > 100
    asym = dataclasses.replace(int4, weight_key="int4_group_128_asym", m_max=16, m=16)
    assert len(search_space(asym, GPUS["h100"])) == 1
    g64 = dataclasses.replace(int4, weight_key="int4_group_64", m_max=8)  # groups of 64: the plane kernel's table
    assert len(search_space(g64, GPUS["h100"])) > 100
    assert len(search_space(dataclasses.replace(g64, m_max=2, m=2), GPUS["h100"])) == 1  # and the GEMV's two rows


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


def test_seeded_tune_searches_the_tables_and_the_rows_it_wrote_with_the_default_measured_once(tmp_path, monkeypatch):
    import dataclasses

    import quantc.tune as ct
    from quantc.emit import CONFIG_FIELDS
    from quantc.runtime import tune as rt

    jobs = jobs_from_plan(_plan(), ((16, 16),))  # N = 32, then N = 64
    seed = KernelConfig(16, 32, 32, 8, 4, 2)
    fake = {"format": "quantc-kernels", "version": 1, "gpu": "h100", "defaults": {},
            "entries": [{"kernel": "fp8_scaled_gemm", "n": 64, "k": 64, "m_max": 16, **dataclasses.asdict(seed)}]}
    seen, measured = [], []
    real_space, real_measure = ct.search_space, rt.measure

    def spy_space(job, gpu, **kw):
        seen.append((job.n, kw["space"], [r["n"] for r in kw["tables"][0]["entries"]], kw["tables"][1:], kw["default"]))
        return real_space(job, gpu, **kw)

    monkeypatch.setattr(ct, "search_space", spy_space)
    monkeypatch.setattr(rt, "measure", lambda job, cfg, *a: measured.append((job.n, cfg)) or real_measure(job, cfg, *a))
    stats = rt.tune(jobs, GPUS["h100"], tmp_path, space="seeded", tables=[fake], progress=False, device="cpu")
    assert stats["tuned"] == 2 and stats["no_valid_config"] == 0
    assert [s[:4] for s in seen] == [(32, "seeded", [], [fake]), (64, "seeded", [32], [fake])]  # the first row seeds
    table = json.loads((tmp_path / "h100.json").read_text())
    jsonschema.Draft202012Validator(json.loads((data_dir("schemas") / "kernels.schema.json").read_text())).validate(table)
    assert all(set(r) <= {"kernel", "n", "k", "m_max", *CONFIG_FIELDS, "time_us", "default_time_us"} for r in table["entries"])
    first = KernelConfig(**{f: table["entries"][0][f] for f in CONFIG_FIELDS})
    for n, *_, default in seen:
        mine = [c for m, c in measured if m == n]
        assert default == rt.job_default(jobs[0]) and mine.count(default) == 1 and seed in mine
        assert len(mine) == len(set(mine)) <= ct.SEEDED_MAX
    assert first in [c for m, c in measured if m == 64]


def test_tune_refuses_an_unknown_space_before_any_work(tmp_path):
    from quantc.runtime import tune as rt

    jobs = jobs_from_plan(_plan(), ((16, 16),))
    with pytest.raises(ValueError, match="unknown search space 'fast'"):
        rt.tune(jobs, GPUS["h100"], tmp_path / "out", space="fast", progress=False, device="cpu")
    with pytest.raises(ValueError, match="cannot be combined with space='seeded'"):
        rt.tune(jobs, GPUS["h100"], tmp_path / "out", small=True, space="seeded", progress=False, device="cpu")
    assert not (tmp_path / "out").exists()


def test_cli_and_tune_plan_script_pass_the_space_on(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from quantc import cli
    from quantc.runtime import tune as rtune

    _plan().save(tmp_path / "plan.json")
    got = []
    monkeypatch.setattr(rtune, "tune", lambda jobs, gpu, out, **kw: got.append(kw["space"]) or
                        {"jobs": len(jobs), "tuned": len(jobs), "skipped_done": 0, "no_valid_config": 0, "path": "x"})
    cases = (([], "full"), (["--space", "seeded"], "seeded"), (["--small"], "small"), (["--space", "small", "--small"], "small"))
    for args, _ in cases:
        result = CliRunner().invoke(cli.app, ["tune", "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
    assert got == [want for _, want in cases]
    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        import tune_plan
    finally:
        sys.path.remove(str(bench))
    got.clear()
    for args, _ in cases:
        monkeypatch.setattr(sys, "argv", ["tune_plan.py", str(tmp_path), str(tmp_path / "plan.json"), *args])
        tune_plan.main()
    assert got == [want for _, want in cases]


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


# --- MoE grouped GEMMs ------------------------------------------------------------------------------

E, H, I = 4, 64, 32  # experts, hidden, intermediate: gate_up (E, 2I = 64, H = 64), down (E, H = 64, I = 32)


def _moe_inventory(arch="MixtralForCausalLM", fused=True):
    blk = "model.layers.0.mlp.experts"
    if fused:
        mods = (ModuleInfo(f"{blk}.gate_up_proj", "moe_experts", 2 * I, H, 0, E, moe_block=blk),
                ModuleInfo(f"{blk}.down_proj", "moe_experts", H, I, 0, E, moe_block=blk))
    else:
        mods = tuple(ModuleInfo(f"{blk}.{e}.{leaf}", "moe_experts", n, k, 0, moe_block=blk)
                     for e in range(E) for leaf, n, k in (("w1", I, H), ("w3", I, H), ("w2", H, I)))
    return Inventory("t", arch, mods, 1)


def _moe_plan(arch="MixtralForCausalLM", fused=True, scheme=None, tp=1, ep=False):
    scheme = scheme or {"weight": "int4_group_32", "activation": "none"}
    r = lower(make_config(moe=scheme, tp=tp, ep=ep), _moe_inventory(arch, fused))
    assert r.plan is not None, r.diagnostics
    return r.plan


def test_moe_jobs_carry_experts_top_k_role_and_gate_ups_block_m():
    plan = _moe_plan()
    jobs = jobs_from_plan(plan, ((1, 1), (16, 16)))
    assert [(j.role, j.kernel, j.n, j.k, j.m_max) for j in jobs] == [
        ("gate_up", "moe_weight_only", 2 * I, H, 1), ("gate_up", "moe_weight_only", 2 * I, H, 16),
        ("down", "moe_weight_only", H, I, 1), ("down", "moe_weight_only", H, I, 16)]
    gate_up, down = jobs[0], jobs[2]
    assert (gate_up.num_experts, gate_up.top_k, gate_up.rows, gate_up.n_out, gate_up.act) == (E, 2, 2 * I, I, "silu")
    assert gate_up.block_m == 0 and gate_up.partner is None  # BLOCK_M searched
    gu_entry = plan.kernels[plan.module("model.layers.0.mlp.experts.gate_up_proj").kernel_entry]
    assert down.partner == ("moe_weight_only", 2 * I, H) and down.rows == down.n_out == H
    assert [j.block_m for j in jobs[2:]] == [gu_entry.config_for(1).block_m, gu_entry.config_for(16).block_m]
    # per-expert Linears: gate's entry has N = I, the grouped weight 2I rows
    per = jobs_from_plan(_moe_plan(fused=False), ((16, 16),))
    assert [(j.role, j.n, j.rows, j.n_out) for j in per] == [("gate_up", I, 2 * I, I), ("down", H, H, H)]
    assert per[0].num_experts == E
    # top_k: the caller's, else the architecture's (capped at the experts), gpt-oss's activation
    assert jobs_from_plan(plan, ((16, 16),), top_k=3)[0].top_k == 3
    oss = jobs_from_plan(_moe_plan("GptOssForCausalLM"), ((16, 16),))[0]
    assert (oss.top_k, oss.act) == (4, "gpt_oss")
    assert jobs_from_plan(_moe_plan("Qwen3MoeForCausalLM"), ((16, 16),))[0].top_k == E  # 8, capped at 4 experts
    assert jobs_from_plan(_moe_plan("SomethingMoe"), ((16, 16),))[0].top_k == E  # the fallback 8, capped
    # expert parallel: each rank holds E / tp experts
    assert {j.num_experts for j in jobs_from_plan(_moe_plan(tp=2, ep=True), ((16, 16),))} == {E // 2}
    # expert leaves of no known layout (apply refuses them, QC704): tuned as plain (down-like) GEMMs
    odd = Inventory("t", "MixtralForCausalLM", tuple(
        ModuleInfo(f"b.{e}.{leaf}", "moe_experts", n, k, 0, moe_block="b")
        for e in range(E) for leaf, n, k in (("fc1", I, H), ("fc2", H, I))), 1)
    odd_jobs = jobs_from_plan(lower(make_config(moe="fp8_per_channel"), odd).plan, ((16, 16),))
    assert [(j.role, j.partner, j.block_m) for j in odd_jobs] == [("down", None, 0)] * 2
    # --kernels narrows to one kernel id
    assert jobs_from_plan(plan, ((16, 16),), kernels={"fp8_scaled_gemm"}) == []


def test_top_k_is_read_from_the_model_description(tmp_path):
    from quantc.tune import top_k_from_model

    models = data_dir("schemas").parent / "examples" / "models"
    assert top_k_from_model(models / "mixtral-8x7b.json") == 2
    assert top_k_from_model(models / "gpt-oss-20b.json") == 4
    assert top_k_from_model(models / "llama-3.1-8b.json") is None  # dense
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_experts_per_tok": 6}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert top_k_from_model(tmp_path) == top_k_from_model(tmp_path / "model.safetensors") == 6
    (tmp_path / "bad.json").write_text("{not json")
    assert top_k_from_model(tmp_path / "bad.json") is None
    assert top_k_from_model(tmp_path / "absent.json") is None


def test_moe_search_space_respects_the_kernels_block_k_rules_and_shared_memory():
    import dataclasses

    from quantc.tune import moe_block_k_ok, moe_search_space, moe_smem_bytes

    h100 = GPUS["h100"]
    big = TuneJob("moe_fp8", 1536, 2048, "fp8_per_channel", "fp8_dynamic_per_token", 4096, 4096,
                  num_experts=128, top_k=8, role="gate_up", rows=1536)
    space = moe_search_space(big, h100)
    assert {c.block_m for c in space} == {16, 32, 64, 128} and {c.block_n for c in space} == {64, 128, 256}
    assert {c.block_k for c in space} == {64, 128} and {c.num_warps for c in space} == {4, 8}
    assert {c.num_stages for c in space} == {2, 3, 4} and all(c.split_k == 1 for c in space)
    assert all(moe_smem_bytes(c, big) <= h100.smem_bytes for c in space)
    # gate_up reads two weight tiles per K step (gate and up rows): a tile that fits for down may not for gate_up
    cfg = KernelConfig(128, 256, 128, 8, 8, 4)
    down = dataclasses.replace(big, role="down", n=2048, k=768, rows=2048)
    assert moe_smem_bytes(cfg, big) == 4 * (128 * 128 + 2 * 256 * 128) > h100.smem_bytes
    assert cfg not in space
    tight = dataclasses.replace(h100, smem_bytes=64 * 1024)
    assert 0 < len(moe_search_space(big, tight)) < len(space)
    # decode: one token reaches an expert at most once -> BLOCK_M 16; N capped at the padded output width
    decode = moe_search_space(dataclasses.replace(big, m_max=1, m=1, rows=128), h100)
    assert {c.block_m for c in decode} == {16} and {c.block_n for c in decode} == {64}
    # a down job searches the rest at gate_up's BLOCK_M
    assert {c.block_m for c in moe_search_space(dataclasses.replace(down, block_m=32), h100)} == {32}
    # BLOCK_K as the grouped GEMM runs it: W8A8 tiles inside both scale groups, 4-bit >= 16 bytes a row
    blk = TuneJob("moe_fp8_block", 256, 2880, "fp8_block_128x128", "fp8_dynamic_group_128", 16, 16, 4, 8, "down", 256)
    assert moe_block_k_ok(blk, 64) and moe_block_k_ok(blk, 128) and not moe_block_k_ok(blk, 16)
    per_ch = TuneJob("moe_fp8", 256, 2880, "fp8_per_channel", "fp8_dynamic_per_token", 16, 16, 4, 8, "down", 256)
    assert moe_block_k_ok(per_ch, 64) and moe_block_k_ok(per_ch, 128)  # whole-row scales: the last tile masked
    assert {c.block_k for c in moe_search_space(per_ch, h100)} == {64, 128}
    int4 = TuneJob("moe_weight_only", 64, 64, "int4_group_32", "none", 16, 16, 4, 2, "down", 64)
    assert not moe_block_k_ok(int4, 16) and moe_block_k_ok(int4, 32) and moe_block_k_ok(int4, 64)
    assert {c.block_k for c in moe_search_space(int4, h100, small=True)} == {32, 64}  # 128 > K = 64 is dropped
    mx = TuneJob("moe_mxfp8_emulated", 64, 64, "mxfp8", "mxfp8", 16, 16, 4, 2, "down", 64)
    assert moe_block_k_ok(mx, 16)  # MX pairs run the bf16 path after rounding the activations


def _gemm_reference(job, ops):
    """Plain torch: every (token, slot) pair through its expert's dequantized weight."""
    import torch

    from quantc.runtime.kernels import wo_format as wf

    w = wf.dequantize(ops.weight)
    experts = ops.topk_ids.reshape(-1).long()
    pairs = torch.arange(experts.numel())
    a = ops.a.float()[pairs // job.top_k] if job.role == "gate_up" else ops.a.float()
    out = torch.einsum("pk,pnk->pn", a, w[experts])
    if job.role == "gate_up":
        g, u = out.chunk(2, dim=-1)
        return torch.nn.functional.silu(g) * u
    return out * ops.topk_weights[:, None]


@pytest.mark.parametrize("role", ["gate_up", "down"])
def test_moe_candidates_are_checked_against_the_default_config(role):
    from quantc.runtime import tune as rt

    n = 2 * I if role == "gate_up" else H
    job = TuneJob("moe_weight_only", n, H if role == "gate_up" else I, "fp8_per_channel", "none", 16, 16,
                  num_experts=E, top_k=2, role=role, rows=n)
    ops = rt.make_operands(job, "cpu")
    want = _gemm_reference(job, ops)
    rel = (ops.reference.float() - want).norm() / want.norm()
    assert ops.reference.shape == (16 * 2, job.n_out) and rel < 1e-2  # the default config is right
    cfg = KernelConfig(32, 32, 32, num_warps=4, num_stages=2)
    assert cfg.block_m != rt.job_default(job).block_m  # the candidate pads the routing to its own BLOCK_M
    good = rt.measure(job, cfg, ops, "cpu")
    assert good is not None and good > 0
    ops.reference = ops.reference * 1.5
    assert rt.measure(job, cfg, ops, "cpu") is None
    # a config the kernel cannot run is dropped, not raised
    assert rt.measure(job, KernelConfig(16, 48, 32, num_warps=4, num_stages=2), ops, "cpu") is None


def test_moe_down_tuned_at_gate_ups_tuned_block_m(tmp_path, monkeypatch):
    import quantc.tune as ct
    from quantc.runtime import tune as rt

    jobs = jobs_from_plan(_moe_plan(), ((64, 64),))
    spaces = {}
    real = ct.search_space

    def gate_up_prefers_32(job, gpu, **kw):
        space = real(job, gpu, **kw)
        spaces[job.role] = space
        return [c for c in space if c.block_m == 32] if job.role == "gate_up" else space

    monkeypatch.setattr(ct, "search_space", gate_up_prefers_32)
    stats = rt.tune(jobs, GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    assert stats["tuned"] == 2 and stats["no_valid_config"] == 0
    rows = {r["n"]: r for r in json.loads((tmp_path / "h100.json").read_text())["entries"]}
    assert rows[2 * I]["block_m"] == 32 and rows[H]["block_m"] == 32
    assert {c.block_m for c in spaces["down"]} == {32}


def test_tuned_moe_rows_reach_quant_moe_per_live_token_count(tmp_path, monkeypatch):
    """tune a tiny Qwen3-MoE plan, compile with the table, apply: the grouped GEMMs run the tuned rows."""
    import torch

    import quantc
    import quantc.runtime as rt
    from quantc import hf
    from quantc.plan import M_MAX_LAST
    from quantc.runtime import tune as rtune
    from tests.runtime.test_moe import _record_configs

    import quantc.tune as ctune

    # a third of the small space (one BLOCK_K): what is tested is the path from the tuner's rows to the
    # grouped GEMM's launches, and each candidate is an interpreted MoE GEMM
    monkeypatch.setattr(ctune, "MOE_GRID_SMALL", ((16, 32), (32, 64), (64,), (4,), (2,)))
    model = hf.build_model("qwen3-30b-a3b", layers=1, tiny=True)
    cfg = tmp_path / "moe.yaml"
    cfg.write_text("quantc: 1\nmoe: w4a16\n")
    plan = quantc.compile(str(cfg), model, gpu="h100", tp=1)
    jobs = jobs_from_plan(plan, ((4, 4), (M_MAX_LAST, 16)), top_k=model.config.num_experts_per_tok)
    assert {(j.role, j.num_experts, j.top_k) for j in jobs} == {("gate_up", 4, 2), ("down", 4, 2)}
    stats = rtune.tune(jobs, GPUS["h100"], tmp_path / "tables", small=True, progress=False, device="cpu")
    assert stats["tuned"] == 4 and stats["no_valid_config"] == 0
    table = json.loads((tmp_path / "tables" / "h100.json").read_text())
    jsonschema.Draft202012Validator(json.loads((data_dir("schemas") / "kernels.schema.json").read_text())).validate(table)
    rows = {(r["n"], r["m_max"]): KernelConfig(**{f: r[f] for f in ("block_m", "block_n", "block_k", "group_m",
                                                                    "num_warps", "num_stages", "split_k")})
            for r in table["entries"]}
    tuned = quantc.compile(str(cfg), model, gpu="h100", tp=1, tables=(str(tmp_path / "tables"),))
    gu = tuned.module("model.layers.0.mlp.experts.gate_up_proj")
    dn = tuned.module("model.layers.0.mlp.experts.down_proj")
    assert tuned.kernels[gu.kernel_entry].source == tuned.kernels[dn.kernel_entry].source == "tuned (h100)"
    rt.apply(model, tuned, progress=False)
    seen = _record_configs(monkeypatch)  # every grouped GEMM's config, as it runs
    for tokens, bucket in ((3, 4), (9, M_MAX_LAST)):
        with torch.no_grad():
            model(torch.randint(0, model.config.vocab_size, (1, tokens)))
        c13, c2 = seen[-2:]
        want13, want2 = rows[(gu.n, bucket)], rows[(dn.n, bucket)]
        assert c13 == want13 != plan.kernels[gu.kernel_entry].config_for(tokens)  # not the untuned plan's
        assert c2 == want2 and c2.block_m == c13.block_m  # down was tuned at gate_up's BLOCK_M


def test_cli_tune_reads_top_k_from_the_model(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from quantc import cli
    from quantc.runtime import tune as rtune

    models = data_dir("schemas").parent / "examples" / "models"
    desc = json.loads((models / "qwen3-30b-a3b.json").read_text())
    desc["num_experts_per_tok"] = 6
    (tmp_path / "config.json").write_text(json.dumps(desc))
    (tmp_path / "moe.yaml").write_text("quantc: 1\nmoe: fp8_per_channel\n")
    got = []
    monkeypatch.setattr(rtune, "tune", lambda jobs, *a, **k: got.extend(jobs) or
                        {"jobs": len(jobs), "tuned": len(jobs), "skipped_done": 0, "no_valid_config": 0, "path": "x"})
    result = CliRunner().invoke(cli.app, ["tune", str(tmp_path / "moe.yaml"), "--model", str(tmp_path / "config.json"),
                                          "--m-buckets", "16", "--kernels", "moe_fp8"])
    assert result.exit_code == 0, result.output
    assert got and {(j.kernel, j.top_k, j.num_experts) for j in got} == {("moe_fp8", 6, 128)}
    assert {j.role for j in got} == {"gate_up", "down"}
    bad = CliRunner().invoke(cli.app, ["tune", str(tmp_path / "moe.yaml"), "--model", str(tmp_path / "config.json"),
                                       "--kernels", "moe_fp9"])
    assert bad.exit_code == 2 and "not tunable kernel(s) moe_fp9" in bad.output and "moe_weight_only" in bad.output


def test_dense_timing_cycles_through_weight_copies_past_l2(monkeypatch):
    """A decode-sized job's weights fit the 50 MB L2; the timed loop cycles through copies (as bench_wo
    does) and reports time per call. Simulated on the CPU: the clock returns 120 us per loop."""
    import quantc.runtime.tune as rtune

    assert rtune.rotation_copies(8 << 20, "cuda") == 16 and rtune.rotation_copies(512 << 20, "cuda") == 1
    assert rtune.rotation_copies(1 << 10, "cuda") == 64 and rtune.rotation_copies(8 << 20, "cpu") == 1
    job = TuneJob("int4_weight_only_gemm", 64, 128, "int4_group_128", "none", 1, 1)
    ops = rtune.make_operands(job, "cpu")
    assert ops.rotation == []
    ops.rotation = [[b.clone() for b in ops.buffers] for _ in range(3)]
    seen = []
    real = rtune.LAUNCHERS[job.kernel].run
    monkeypatch.setitem(rtune.LAUNCHERS, job.kernel, type("L", (), {"run": staticmethod(
        lambda x, buffers, *a: seen.append(buffers[0].data_ptr()) or real(x, buffers, *a))}))

    def clock(fn):
        fn()
        return 120.0

    monkeypatch.setattr(rtune, "_time_us", clock)
    us = rtune.measure(job, rtune.job_default(job), ops, "cuda")  # the GPU's timing path, CPU operands
    assert us == 30.0  # 120 us over 4 copies
    assert len(set(seen[1:])) == 4 and seen[0] == seen[1]  # the check ran on the first copy, then all four
    # on the CPU the checked run is the timing: one interpreted run a candidate, no clock
    seen.clear()
    monkeypatch.setattr(rtune, "_time_us", lambda fn: pytest.fail("the CPU path timed a second run"))
    assert rtune.measure(job, rtune.job_default(job), ops, "cpu") > 0 and len(seen) == 1


def test_the_default_a_4bit_job_is_compared_with_is_the_shape_aware_one():
    from quantc.runtime.kernels.wo_gemm import default_config as wo_default
    from quantc.runtime.tune import job_default

    for m, n, k in ((1, 4096, 14336), (16, 28672, 4096), (64, 4096, 4096)):
        job = TuneJob("int4_weight_only_gemm", n, k, "int4_group_128", "none", m, m)
        assert job_default(job) == wo_default(m, n, k, int4=True)


@pytest.mark.parametrize("kernel,wk,ak,act,role", [
    ("moe_weight_only", "mxfp4", "none", "silu", "gate_up"),
    ("moe_weight_only", "int4_group_32_asym", "none", "gpt_oss", "gate_up"),
    ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token", "gpt_oss", "gate_up"),
    ("moe_int8", "int8_per_channel", "int8_dynamic_per_token", "silu", "down"),
    ("moe_weight_only", "nvfp4", "none", "silu", "down"),
])
def test_the_default_moe_output_is_checked_against_plain_torch(kernel, wk, ak, act, role):
    """plain_reference_error rebuilds each checked expert's rows in plain torch (dequantized input and
    weight, the fused activation or the routing weight); a wrong default output on one expert shows."""
    from quantc.runtime import tune as rt

    n = 2 * I if role == "gate_up" else H
    job = TuneJob(kernel, n, H if role == "gate_up" else I, wk, ak, 16, 16, num_experts=E, top_k=2, role=role,
                  rows=n, act=act)
    ops = rt.make_operands(job, "cpu")
    assert rt.plain_reference_error(job, ops) < 1e-2
    e = int(torch.bincount(ops.topk_ids.reshape(-1).long(), minlength=E).argmax())
    rows = torch.nonzero(ops.topk_ids.reshape(-1) == e).flatten()
    ops.reference = ops.reference.clone()
    ops.reference[rows] *= 1.5
    assert rt.plain_reference_error(job, ops) > rt.REFERENCE_RTOL


@pytest.mark.parametrize("kernel,wk,ak", [("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"),
                                          ("fp8_block_gemm", "fp8_block_128x128", "fp8_dynamic_group_128"),
                                          ("int4_weight_only_gemm", "int4_group_128", "none")])
def test_a_job_whose_default_disagrees_with_plain_torch_writes_no_row(tmp_path, monkeypatch, capsys, kernel, wk, ak):
    """The default config's output is held against scaled_mm.reference before any candidate is compared
    with it: a kernel that is wrong in every config (planted) gives no row, a count and a message, and
    `quantc tune` exits non-zero."""
    from quantc.runtime import tune as rt

    job = TuneJob(kernel, 128, 256, wk, ak, 16, 16)
    assert rt.plain_reference_error(job, rt.make_operands(job, "cpu")) < 1e-2
    real = rt.make_operands

    def wrong(job, device):
        ops = real(job, device)
        ops.reference = ops.reference * 1.5
        return ops

    monkeypatch.setattr(rt, "make_operands", wrong)
    stats = rt.tune([job], GPUS["h100"], tmp_path, small=True, progress=False, device="cpu")
    assert stats["default_disagrees"] == 1 and stats["tuned"] == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"{kernel} n=128 k=256 m=16: the default config's output is" in said
    assert "from the plain-torch reference; no row written" in said
    table = tmp_path / "h100.json"
    assert not table.exists() or json.loads(table.read_text())["entries"] == []


def test_cli_tune_reports_defaults_that_disagree(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from quantc import cli
    from quantc.runtime import tune as rt

    _plan().save(tmp_path / "plan.json")
    monkeypatch.setattr(rt, "tune", lambda jobs, gpu, out, **kw: {"jobs": 2, "tuned": 1, "skipped_done": 0,
                                                                  "no_valid_config": 0, "default_disagrees": 1,
                                                                  "path": "x"})
    result = CliRunner().invoke(cli.app, ["tune", "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path)])
    assert result.exit_code != 0
    assert "1 whose default config disagrees with the plain-torch reference" in result.output


@pytest.mark.parametrize("wk,ak", [("fp8_per_channel", "fp8_dynamic_per_token"),
                                   ("fp8_block_128x128", "fp8_dynamic_group_128"),
                                   ("int8_per_channel", "int8_dynamic_per_token")])
def test_tuner_block_k_rule_is_the_grouped_gemms(wk, ak):
    """``quantc.tune.moe_block_k_ok`` (compiler side, no torch) restates the W8A8 BLOCK_K rule of
    ``moe_gemm.grouped_gemm``: for the weight layout the runtime builds (``wo_format``) and the activation
    group, a BLOCK_K the tuner offers is one the kernel runs as given, and the other way round."""
    import torch

    from quantc.runtime.kernels import moe_gemm
    from quantc.runtime.kernels import wo_format as wf
    from quantc.tune import moe_block_k_ok

    a_group = 128 if ak == "fp8_dynamic_group_128" else 0
    for k in (768, 2048, 2880, 4096, 7168):
        if wk.startswith("fp8_block") and k % 128:
            continue  # refused at compile time (QC301)
        w = wf.quantize(torch.randn(2, 256, k), wk)
        raw = moe_gemm.RAW_SUMS and w.row_block == 1
        job = TuneJob("moe_fp8_block" if "block" in wk else ("moe_int8" if wk.startswith("int8") else "moe_fp8"),
                      16, k, wk, ak, 16, 16, 2, 2, "down", 16)
        for bk in (16, 32, 64, 128, 256):
            runs = bk >= 32 and (moe_gemm.group_fits(w.group, w.k, bk, raw)
                                 and moe_gemm.group_fits(a_group or w.k, w.k, bk, raw))
            assert moe_block_k_ok(job, bk) == runs, (wk, k, bk)
