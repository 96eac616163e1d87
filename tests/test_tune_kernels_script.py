"""bench/tune_kernels.py (tuning the kernel ids no example config uses, on the benchmark shapes): the
jobs it builds, without a GPU; and its usage errors."""

import subprocess
import sys
from pathlib import Path

from quantc.kernel_specs import KERNELS_BY_ID
from quantc.tune import M_BUCKETS, TUNABLE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import tune_kernels as tk  # noqa: E402


def test_every_tunable_kernel_has_keys_its_spec_accepts():
    assert set(tk.KEYS) == TUNABLE
    for kernel, (wk, ak) in tk.KEYS.items():
        spec = KERNELS_BY_ID[kernel]
        assert wk in spec.weight_keys or spec.weight_keys == "any", (kernel, wk)


def test_dense_and_moe_jobs():
    jobs = tk.build_jobs(["int8_weight_only_gemm", "moe_bf16"], M_BUCKETS[:2])
    dense = [j for j in jobs if not j.num_experts]
    moe = [j for j in jobs if j.num_experts]
    assert len(dense) == 2 * len(tk.DENSE_SHAPES) and {(j.n, j.k) for j in dense} == set(tk.DENSE_SHAPES)
    assert len(moe) == 2 * 2 * len(tk.MOE_MODELS)
    gate_up = [j for j in moe if j.role == "gate_up"]
    down = [j for j in moe if j.role == "down"]
    e, top_k, h, inter = tk.MOE_MODELS["mixtral_8x7b"]
    g = next(j for j in gate_up if j.num_experts == e)
    d = next(j for j in down if j.num_experts == e)
    assert (g.n, g.k, g.rows, g.top_k, g.act) == (2 * inter, h, 2 * inter, top_k, "silu")
    assert (d.n, d.k, d.partner) == (h, inter, ("moe_bf16", 2 * inter, h))
    assert {j.act for j in moe if j.num_experts == 128 and j.k == 2880} == {"gpt_oss"}
    assert jobs.index(g) < jobs.index(d)  # gate_up tuned first: its BLOCK_M is the down job's


def test_usage_errors():
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "bench" / "tune_kernels.py"), *a],
                                    capture_output=True, text=True, timeout=60)
    p = run("/tmp/x", "--kernels", "nope_gemm")
    assert p.returncode == 2 and "unknown kernel id 'nope_gemm'" in p.stderr and "int8_gemm" in p.stderr
    p = run("/tmp/x", "--kernels", "int8_gemm", "--gpu", "h999")
    assert p.returncode == 2 and "unknown GPU 'h999'" in p.stderr
    p = run("/tmp/x", "--kernels", "moe_fp8", "--models", "gpt_oss_120b,grok")
    assert p.returncode == 2 and "unknown MoE size 'grok'" in p.stderr and "mixtral_8x7b" in p.stderr


def test_models_filter_keeps_only_those_moe_sizes():
    from quantc.tune import M_BUCKETS

    jobs = tk.build_jobs(["moe_fp8", "int8_gemm"], M_BUCKETS[:1], ["gpt_oss_120b"])
    moe = [j for j in jobs if j.num_experts]
    assert [(j.role, j.n, j.k) for j in moe] == [("gate_up", 5760, 2880), ("down", 2880, 2880)]
    assert len(jobs) - len(moe) == len(tk.DENSE_SHAPES)  # dense ids are not filtered


def test_moe_sizes_a_kernel_cannot_take_get_no_jobs():
    """moe_fp8_block needs K a multiple of 128: gpt-oss-120b (H = I = 2880) gets no job (it crashed a tuning
    run on the GPU), the other three sizes get their gate_up and down jobs."""
    jobs = tk.build_jobs(["moe_fp8_block"], [(4096, 4096)])
    assert len(jobs) == 6 and all(j.k % 128 == 0 for j in jobs)
    assert not [j for j in jobs if 2880 in (j.n, j.k)]
    assert len(tk.build_jobs(["moe_fp8"], [(4096, 4096)])) == 8  # K a multiple of 16: all four
