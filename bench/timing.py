"""One kernel timing for the benches: a call replayed in a CUDA graph (shared/BENCH.md), in microseconds."""

from __future__ import annotations

import contextlib
import math
import os


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


def checked_graph_us(label: str, fn, want, tol: float = 0.08) -> float | None:
    """``graph_us(fn)`` for a call that returns a list of layer outputs, after its first output matched
    ``want`` (relative error under ``tol``); None, with the reason printed, where it fails to run or to
    match: a probe's candidate that does either is reported and skipped."""
    try:
        got = fn()[0].float()
    except Exception as e:  # noqa: BLE001 (a config that does not compile is reported, not fatal)
        print("ERR", label, type(e).__name__, str(e)[:160], flush=True)
        return None
    err = ((got - want).norm() / want.norm()).item()
    if not err < tol:
        print("MISMATCH", label, f"{err:.3g}", flush=True)
        return None
    return graph_us(fn)


def matched_graph_us(row: dict, name: str, fn, want) -> float | None:
    """``graph_us(fn)`` into ``row[name]`` for a call that returns one output, after it ran and matched
    ``want``: the largest absolute difference goes to ``row[name + "_maxdiff"]`` and must stay within 2%
    of ``want``'s largest magnitude (kernels with the same per-step math give 0). Where it fails to run or
    to match, ``row[name]`` is None and the reason printed: the probe's candidate is skipped."""
    import torch

    try:
        got = fn().float()
        if got.is_cuda:
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - a config that does not compile is reported
        print("ERR", name, type(e).__name__, str(e)[:300], flush=True)
        row[name] = None
        return None
    diff = float((got - want).abs().max())
    row[name + "_maxdiff"] = diff
    if diff > 0.02 * float(want.abs().max()):
        print("MISMATCH", name, diff, flush=True)
        row[name] = None
        return None
    row[name] = graph_us(fn)
    return row[name]


@contextlib.contextmanager
def env_set(name: str, value: str | None):
    """``os.environ[name]`` set to ``value`` (None: unset) inside the block, restored after it."""
    saved = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if saved is not None:
            os.environ[name] = saved


def geomean(values) -> float | None:
    """Geometric mean of the values that are set (a skipped candidate is None); None if none is."""
    v = [x for x in values if x]
    return math.exp(sum(map(math.log, v)) / len(v)) if v else None


def env_sets(env: dict):
    """``env_set`` for every (name, value) of ``env`` at once, as one context manager."""
    stack = contextlib.ExitStack()
    for name, value in env.items():
        stack.enter_context(env_set(name, value))
    return stack


def gpu_slug(device_name: str) -> str:
    """The GPU part of a result file's name: h200 or h100 (the tables and results the benches write)."""
    return "h200" if "H200" in device_name else "h100"
