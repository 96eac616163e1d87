"""Host time per call of the runtime's module paths at decode, on a GPU: tiny shapes (kernels take a few
microseconds) called back to back, so the wall time per call is what Python, the dispatcher and the
Triton launcher cost. Eager decode of an applied model pays this once per module per token.

    python bench/host_overhead.py [--out $OUT/host_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.host_python import FORMATS as W8A8_FORMATS  # noqa: E402
from bench.timing import env_set  # noqa: E402


DEVICE = "cuda"


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def per_call_us(fn, calls: int = 400) -> float:
    for _ in range(20 if DEVICE == "cuda" else 1):
        fn()
    _sync()
    calls = calls if DEVICE == "cuda" else 2
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def prefill_rows(m: int, nk: int, profile: bool) -> dict:
    """Per-call wall time of prefill-sized linears (M rows, N = K = nk) called back to back: large enough to
    take the prefill kernels (the persistent TMA kernel for fp8 per-channel from 1024 rows, the Gluon
    kernels on sm_90 for int8 and fp8 128-block), small enough that the host still bounds a call."""
    import cProfile
    import pstats

    import torch
    import torch.nn.functional as F

    from quantc.plan import KernelConfig
    from quantc.runtime import quantize as Q
    from quantc.runtime.modules import QuantLinear
    from quantc.runtime.registry import LAUNCHERS

    w = torch.randn(nk, nk, device=DEVICE, dtype=torch.bfloat16) * 0.02
    x = torch.randn(m, nk, device=DEVICE, dtype=torch.bfloat16)
    cfg = KernelConfig(128, 256, 128, 8, 8, 3, 1)
    buckets = ((2**31 - 1, cfg),)
    rows = {f"prefill {m}x{nk}x{nk}: bf16 F.linear": per_call_us(lambda: F.linear(x, w), 100)}
    for kernel, wk, ak in W8A8_FORMATS:
        bufs = LAUNCHERS[kernel].prepare(Q.quantize_weight(w, wk), wk, nk, nk)
        mod = QuantLinear("m", kernel, wk, ak, nk, nk, dict(bufs), None, buckets).to(DEVICE)
        rows[f"prefill {m}x{nk}x{nk}: {kernel} QuantLinear eager"] = per_call_us(lambda: mod(x), 100)
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(100):
                mod(x)
            _sync()
            prof.disable()
            print(f"== cProfile, 100 calls of {kernel} at {m} rows (times in s for all 100)", flush=True)
            pstats.Stats(prof).sort_stats("tottime").print_stats(14)
    return rows


def main() -> None:
    import torch
    import torch.nn.functional as F

    from quantc.plan import KernelConfig
    from quantc.runtime import quantize as Q
    from quantc.runtime.kernels.act_quant import quantize_activation
    from quantc.runtime.kernels.scaled_mm import scaled_mm
    from quantc.runtime.modules import QuantLinear, dense, flatten_buckets
    from quantc.runtime.registry import LAUNCHERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--prefill-m", type=int, default=0, help="also time prefill-sized calls of this many rows")
    ap.add_argument("--prefill-nk", type=int, default=2048, help="N = K of the prefill rows")
    ap.add_argument("--profile", action="store_true", help="cProfile the prefill calls (top functions by own time)")
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run under TRITON_INTERPRET=1")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    n, k = a.n, a.k
    torch.manual_seed(0)
    w = torch.randn(n, k, device=DEVICE, dtype=torch.bfloat16) * 0.02
    x = torch.randn(1, k, device=DEVICE, dtype=torch.bfloat16)
    cfg = KernelConfig(16, 32, 128, 8, 4, 4, 1)
    buckets = ((1, cfg), (2**31 - 1, cfg))
    rows = {"bf16 F.linear": per_call_us(lambda: F.linear(x, w))}
    for kernel, wk, ak in (("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"),
                           ("int8_gemm", "int8_per_channel", "int8_dynamic_per_token"),
                           ("int4_weight_only_gemm", "int4_group_128", "none")):
        launcher = LAUNCHERS[kernel]
        bufs = launcher.prepare(Q.quantize_weight(w, wk), wk, n, k)
        mod = QuantLinear("m", kernel, wk, ak, n, k, dict(bufs), None, buckets).to(DEVICE)
        blist = list(bufs.values())
        table = flatten_buckets(buckets)
        rows[f"{kernel}: QuantLinear eager"] = per_call_us(lambda: mod(x))
        rows[f"{kernel}: custom op"] = per_call_us(lambda: dense(x, blist, None, kernel, wk, ak, table, n))
        if ak != "none":
            rows[f"{kernel}: activation quantizer alone"] = per_call_us(lambda: quantize_activation(x, ak))
            xq, sx = quantize_activation(x, ak)
            rows[f"{kernel}: GEMM launch alone"] = per_call_us(
                lambda: scaled_mm(xq, blist[0], blist[1], wk, ak, cfg, x_scale=sx))
    # the fp8 128-block GEMM at 256 rows: the Gluon kernel (three TMA descriptors a call) and the tiled one
    t = Q.quantize_weight(w, "fp8_block_128x128")
    xq, sx = quantize_activation(torch.randn(256, k, device=DEVICE, dtype=torch.bfloat16), "fp8_dynamic_group_128")
    for label, ws_on in (("Gluon", "1"), ("tiled", "0")):
        with env_set("QUANTC_BLOCK_WS", ws_on):
            rows[f"fp8_block_gemm: GEMM launch alone, 256 rows, {label}"] = per_call_us(lambda: scaled_mm(
                xq, t["weight"], t["weight_scale_inv"], "fp8_block_128x128", "fp8_dynamic_group_128",
                KernelConfig(64, 64, 128, 8, 4, 3), x_scale=sx))
    rows["torch.empty (1, n)"] = per_call_us(lambda: torch.empty((1, n), device=DEVICE, dtype=torch.bfloat16))
    if a.prefill_m:
        rows.update(prefill_rows(a.prefill_m, a.prefill_nk, a.profile))
    for name, us in rows.items():
        print(f"{us:8.1f} us  {name}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "n": n, "k": k,
                                           "per_call_us": rows}, indent=1))


if __name__ == "__main__":
    main()
