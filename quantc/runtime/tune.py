"""`quantc tune`, runtime side: measure candidate KernelConfigs of the dense kernels on the live device.

For one job (kernel, N, K, M): random operands with a fixed seed, the weight quantized with the
runtime's own quantizer and prepared by the kernel's launcher; every candidate's output is checked
against the output of the kernel's default config (itself tested against the plain-torch reference
in tests/runtime) before it is timed; a candidate that fails to compile or run, or disagrees, is
dropped. On a GPU the time is the median of ``triton.testing.do_bench`` (CUDA-graph replay where it
captures); on the CPU interpreter the flow runs the same, with wall-clock times that mean nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quantc.plan import KernelConfig

from .quantize import quantize_weight
from .registry import LAUNCHERS
from .tables import default_config


@dataclass
class Operands:
    x: torch.Tensor
    buffers: list
    reference: torch.Tensor


def make_operands(job, device: str) -> Operands:
    gen = torch.Generator(device="cpu").manual_seed(1234 + job.n * 7 + job.k)
    w = (torch.randn(job.n, job.k, generator=gen) * 0.05).to(torch.bfloat16)
    x = torch.randn(job.m, job.k, generator=gen).to(torch.bfloat16)
    tensors = quantize_weight(w, job.weight_key)
    launcher = LAUNCHERS[job.kernel]
    buffers = [t.to(device) for t in launcher.prepare(tensors, job.weight_key, job.n, job.k).values()]
    x = x.to(device)
    ref = launcher.run(x, buffers, default_config(job.kernel, job.m), job.weight_key, job.activation_key, None)
    return Operands(x, buffers, ref)


def _time_us(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=20)) * 1000.0
        except Exception:  # capture can fail for a kernel that syncs: time it eagerly then
            return float(triton.testing.do_bench(fn, warmup=5, rep=20)) * 1000.0
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def measure(job, cfg: KernelConfig, ops: Operands, device: str, rtol: float = 2e-2) -> float | None:
    """Time of one candidate in microseconds, or None when it does not run or does not agree."""
    launcher = LAUNCHERS[job.kernel]

    def fn():
        return launcher.run(ops.x, ops.buffers, cfg, job.weight_key, job.activation_key, None)

    try:
        out = fn()
    except Exception:  # a config the compiler or the kernel refuses is simply not a candidate
        return None
    err = (out.float() - ops.reference.float()).norm() / ops.reference.float().norm().clamp_min(1e-6)
    if not torch.isfinite(err) or float(err) > rtol:
        return None
    return _time_us(fn, device)


def tune(jobs, gpu, out_dir: str | Path, *, small: bool = False, progress: bool = True, device: str | None = None) -> dict:
    """Tune every job not already in ``out_dir/<gpu>.json``; returns counts for the report."""
    import triton

    from quantc.tune import add_entry, finished, read_or_new_table, search_space

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{gpu.table}.json"
    meta = {"device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET)",
            "torch": torch.__version__.split("+")[0], "triton": triton.__version__}
    table = read_or_new_table(path, gpu, meta)
    done = finished(table)
    todo = [j for j in jobs if j.key not in done]
    stats = {"jobs": len(jobs), "skipped_done": len(jobs) - len(todo), "tuned": 0, "no_valid_config": 0, "path": str(path)}
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("tuning", total=len(todo))
        for job in todo:
            ops = make_operands(job, device)
            default = default_config(job.kernel, job.m)
            default_us = measure(job, default, ops, device)
            best, best_us = None, None
            for cfg in search_space(job, gpu, small=small):
                us = measure(job, cfg, ops, device)
                if us is not None and (best_us is None or us < best_us):
                    best, best_us = cfg, us
            if best is None:
                stats["no_valid_config"] += 1
            else:
                add_entry(path, table, job, best, best_us, default_us)
                stats["tuned"] += 1
            bar.advance(task)
    return stats
