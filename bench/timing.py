"""One kernel timing for the benches: a call replayed in a CUDA graph (shared/BENCH.md), in microseconds."""

from __future__ import annotations


def graph_us(fn) -> float | None:
    """us per call of ``fn`` under ``triton.testing.do_bench_cudagraph``, after one eager call; None (and the
    reason printed) when it does not compile, launch or capture: a candidate that fails is skipped, not fatal."""
    import torch
    from triton.testing import do_bench_cudagraph

    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=30) * 1e3
    except Exception as e:
        print("ERR", type(e).__name__, str(e)[:200], flush=True)
        return None
