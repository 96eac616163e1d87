"""Dense 8-bit GEMMs of quantc against their peers on the GPU, in one run (shared/BENCH.md rules).

Per shape (N, K) and M: bf16 ``x @ w.T``; fp8 rowwise (ours vs ``torch._scaled_mm`` rowwise); fp8
1x128 x 128x128 (ours vs cuBLAS blockwise ``_scaled_mm``); int8 W8A8 (ours vs ``torch._int_mm`` and
bf16); mxfp8 emulated (ours vs bf16); fp8 weight-only at decode. Kernel timings use the same
pre-quantized operands for ours and the peer, inside CUDA graphs. Each of our kernels is tuned per M
bucket over a small candidate list on the first shapes; the winners are written as kernel-table rows.
At M = 1 the candidates include the CUDA-core GEMV (block_m = 1, ``scaled_gemv``). Decode bandwidth: one
graph runs over enough weight copies to exceed 200 MB (past L2), for the module (``GBps``: bf16 in, the
quantizer launched first) and the kernel on the pre-quantized activation (``kernel_GBps``: the issue's
floor compares kernels on pre-quantized operands).

GemLite (bench/peers_gemlite.py), where its source is carried: fp8 per-channel and int8 per-channel
layers built from the same quantized weights, timed as a module (bf16 in, its activation quantizer
included: ``gemlite_fp8_us``, ``gemlite_int8_us``, against our ``module_fp8_row_us`` /
``module_int8_us``) and as a kernel on our pre-quantized activations (``gemlite_fp8_kernel_us``,
``gemlite_int8_kernel_us``); ``*_over_gemlite`` = GemLite time / ours. Without GemLite the columns
are left out and ``gemlite.error`` says why.

Runs split over several calls by the time cap merge into one (rows, decode rows, checks; summary
recomputed, no GPU needed): ``python3 bench/bench_dense.py merge A.json B.json -o dense_h100.json``.

Env: BENCH_CAP_S (time cap, default 500), BENCH_SHAPES (e.g. "6144x4096,4096x4096"), BENCH_MS.
Writes $OUT/dense_<gpu>.json and $OUT/dense_configs_<gpu>.json (gpu: h100, h200, ...); prints a summary
table last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.plan import KernelConfig  # noqa: E402
from quantc.tune import GEMV_KERNELS  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402
from quantc.runtime.tables import default_config  # noqa: E402
from bench import peers_gemlite as PG  # noqa: E402
from bench.bandwidth import copy_gbps  # noqa: E402
from bench.timing import env_set, gpu_slug  # noqa: E402
from bench.timing import graph_us as bench  # noqa: E402

T0 = time.time()


CAP = float(os.environ.get("BENCH_CAP_S", "500"))
OUT = os.environ.get("OUT", "/tmp")
BF = torch.bfloat16
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 2048), (2048, 7168), (24576, 7168)]
MS = [1, 16, 64, 256, 1024, 4096, 8192]
if os.environ.get("BENCH_SHAPES"):
    SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ["BENCH_SHAPES"].split(",")]
if os.environ.get("BENCH_MS"):
    MS = [int(v) for v in os.environ["BENCH_MS"].split(",")]
BUCKETS = [(1, "m1"), (16, "m16"), (64, "m64"), (256, "m256"), (2**31 - 1, "big")]
C = KernelConfig


def gemv_candidates(kernel: str) -> list[KernelConfig]:
    """The CUDA-core decode GEMV (block_m = 1): narrow weight tiles, long K steps, split-K 1-8 (16)."""
    if kernel not in GEMV_KERNELS:
        return []
    if kernel == "fp8_block_gemm":  # K steps inside one 128-wide scale group
        return [C(1, bn, 128, 8, 4, 1, sk) for bn in (16, 32, 64, 128) for sk in (1, 2, 4, 8)]
    return ([C(1, bn, bk, 8, w, 1, sk) for bn, bk, w in ((8, 512, 4), (16, 512, 4), (32, 512, 4), (64, 256, 4),
                                                        (32, 1024, 8)) for sk in (1, 2, 4, 8)]
            + [C(1, 16, 512, 8, 4, 1, 16), C(1, 8, 512, 8, 4, 1, 16)])


def candidates(kernel: str, m: int) -> list[KernelConfig]:
    """The list below, and the tuner's deep-K seeds for M's size (``quantc.tune``: SMALLM / MIDM), as the
    seeded space prunes them (no tile taller than M; split-K is allowed for these kernels up to 256 rows,
    the top of both ranges)."""
    from quantc.tune import MIDM_KERNELS, MIDM_RANGE, MIDM_SEEDS, SMALLM_RANGE, SMALLM_SEEDS

    base = _candidates(kernel, m)
    if kernel not in MIDM_KERNELS:
        return base
    seeds = [c for (lo, hi), deep_k in ((SMALLM_RANGE, SMALLM_SEEDS), (MIDM_RANGE, MIDM_SEEDS)) if lo <= m <= hi
             for c in deep_k if c.block_m <= max(16, m)]
    return base + [c for c in seeds if c not in base]


def _candidates(kernel: str, m: int) -> list[KernelConfig]:
    bk = 32 if kernel == "mxfp8_gemm_emulated" else 128
    if m == 1:
        return candidates(kernel, 16) + gemv_candidates(kernel)
    if m <= 16:
        wide = bk * 2 if bk == 128 and kernel != "fp8_block_gemm" else bk
        base = [C(16, 16, wide, 8, 4, 4), C(16, 32, bk, 8, 4, 4), C(16, 32, wide, 8, 4, 5), C(16, 64, wide, 8, 4, 3),
                C(16, 64, bk, 8, 4, 4)]
        # split-K: more programs for the small decode shapes (2-8 K slices, each an fp32 partial)
        split = [C(16, 32, bk, 8, 4, 4, sk) for sk in (2, 4, 8)] + [C(16, 64, bk, 8, 4, 4, sk) for sk in (2, 4)]
        return base + split
    if m <= 64:
        # (4096, 4096) at M = 64 runs 64 tiles of 64 x 64 on 132 SMs: smaller N tiles and split-K fill the
        # GPU (GemLite won those rows in the 2026-11-26 run)
        # GemLite's shipped H100 table picks 64 x 64 x 64 tiles with split-K 8 at M = 64 on those shapes
        narrow = [C(64, 64, 64, 8, 4, 3, 8), C(64, 64, 64, 8, 4, 4, 4)] if bk == 128 else []
        return [C(64, 64, bk, 8, 4, 4), C(64, 128, bk, 8, 4, 4), C(32, 64, bk, 8, 4, 4), C(64, 32, bk, 8, 4, 4),
                C(64, 64, bk, 8, 4, 4, 2), C(64, 64, bk, 8, 4, 4, 4), C(32, 64, bk, 8, 4, 4, 2)] + narrow
    if m <= 256:
        # ... and 128 x 32 tiles at M = 256 (twice the programs of 128 x 64 on N = 4096)
        return [C(64, 128, bk, 8, 4, 4), C(128, 128, bk, 8, 8, 4), C(128, 256, bk, 8, 8, 3), C(64, 64, bk, 8, 4, 4),
                C(128, 64, bk, 8, 4, 4), C(128, 32, bk, 8, 4, 4), C(64, 32, bk, 8, 4, 4)]
    # 64 x 128 x 4 warps: two programs an SM (the fp8 block kernel's scaling overlaps the other's MMAs)
    return [C(128, 256, bk, 8, 8, 3), C(128, 128, bk, 8, 8, 4), C(256, 128, bk, 8, 8, 3), C(128, 256, 64, 8, 8, 4),
            C(64, 128, bk, 8, 4, 4)]


def agrees(fn, cfg, want: torch.Tensor, kernel: str) -> bool:
    """A candidate is timed only if its output matches the default config's (relative 2e-2)."""
    try:
        got = fn(cfg).float()
    except Exception as e:  # a config that does not compile / launch: reported, skipped
        print("ERR", kernel, cfg, type(e).__name__, str(e)[:160], flush=True)
        return False
    err = ((got - want).norm() / want.norm().clamp_min(1e-6)).item()
    if not err < 2e-2:
        print("MISMATCH", kernel, cfg, f"rel err {err:.3g}: not timed", flush=True)
        return False
    return True


def bucket_of(m: int) -> str:
    return next(name for m_max, name in BUCKETS if m <= m_max)


def gpu_check(out: dict) -> None:
    """Correctness on the GPU before timing: every mode against the reference, quantizers bit-exact."""
    from quantc.runtime.kernels import act_quant, block_mm_ws, scaled_mm as sm
    from quantc.runtime.kernels.common import sm_count

    torch.manual_seed(0)
    res = {}
    x = torch.randn(40, 512, device="cuda", dtype=BF) * 3
    for key in ("fp8_dynamic_per_token", "fp8_dynamic_per_tensor", "fp8_dynamic_group_128", "int8_dynamic_per_token", "mxfp8"):
        q, s_ = act_quant.quantize_activation(x, key)
        rq, rs = act_quant.reference(x, key)
        res["quant_" + key] = bool(torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s_, rs.reshape(s_.shape)))
    # every e4m3 code, every tie between neighbours and both sides of it, at four row scales: the GPU's
    # hardware e4m3 cast (common.hw_cast) must give the reference's codes bit for bit
    codes = torch.arange(256, dtype=torch.uint8, device="cuda").view(Q.FP8).float()
    codes = torch.unique(codes[~codes.isnan()])
    pos = codes[codes >= 0]
    ties = (pos[:-1] + pos[1:]) / 2
    row = torch.cat([codes, ties, -ties, ties * (1 - 2**-20), ties * (1 + 2**-20)])
    row = torch.nn.functional.pad(row, (0, -len(row) % 1024))
    xc = torch.stack([row, row * 0.37, row * 3.1e-3, torch.roll(row, 7) * 1.7])
    for key in ("fp8_dynamic_per_token", "fp8_dynamic_per_tensor", "fp8_dynamic_group_128", "fp8_static_per_tensor", "mxfp8"):
        static = torch.tensor(0.9, device="cuda") if key == "fp8_static_per_tensor" else None
        q, s_ = act_quant.quantize_activation(xc, key, static)
        rq, rs = act_quant.reference(xc, key, static)
        res["quant_all_codes_" + key] = bool(torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
                                             and torch.equal(s_.reshape(rs.shape), rs))
    cases = [("fp8_per_channel", "fp8_dynamic_per_token"), ("fp8_per_tensor", "fp8_dynamic_per_tensor"),
             ("fp8_block_128x128", "fp8_dynamic_group_128"), ("int8_per_channel", "int8_dynamic_per_token"),
             ("mxfp8", "mxfp8"), ("fp8_per_channel", "none"), ("fp8_block_128x128", "none"), ("int8_per_channel", "none")]
    for wk, ak in cases:
        for M, N in ((1, 576), (40, 576), (300, 1024)):
            xx = torch.randn(M, 512, device="cuda", dtype=BF)
            t_ = Q.quantize_weight(torch.randn(N, 512, device="cuda") * 0.05, wk)
            sc = t_.get("weight_scale", t_.get("weight_scale_inv"))
            for fuse in ((False, True) if ak != "none" else (False,)):
                o = sm.scaled_mm(xx, t_["weight"], sc, wk, ak, C(16 if M < 64 else 64, 64, 128, 8, 4, 3), fuse=fuse)
                r_ = sm.reference(xx, t_, wk, ak)
                res[f"{wk}/{ak}/M{M}/N{N}/fuse{int(fuse)}"] = float((o.float() - r_).norm() / r_.norm())
    # the persistent TMA kernel (pre-quantized rowwise W8A8 from M = 1024): ragged M and N edges, against
    # the reference and against the tiled kernel on the same operands (the same per-K-step sums)
    for wk, ak in (("fp8_per_channel", "fp8_dynamic_per_token"), ("int8_per_channel", "int8_dynamic_per_token"),
                   ("fp8_block_128x128", "fp8_dynamic_group_128")):
        xx = torch.randn(1500, 512, device="cuda", dtype=BF)
        t_ = Q.quantize_weight(torch.randn(1000, 512, device="cuda") * 0.05, wk)
        sc = t_.get("weight_scale", t_.get("weight_scale_inv"))
        xq, sx = act_quant.quantize_activation(xx, ak)
        cfg = C(128, 128, 128, 8, 8, 3)
        o = sm.scaled_mm(xq, t_["weight"], sc, wk, ak, cfg, x_scale=sx, tma=True)
        r_ = sm.reference(xx, t_, wk, ak)
        res[f"tma/{wk}/M1500/N1000"] = float((o.float() - r_).norm() / r_.norm())
        tiled = sm.scaled_mm(xq, t_["weight"], sc, wk, ak, cfg, x_scale=sx, tma=False).float()
        res[f"tma/{wk}/vs_tiled"] = float((o.float() - tiled).norm() / tiled.norm())
    # the warp-specialized Gluon kernel (fp8 128-block from M = 128 on sm_90) against the tiled kernel
    # (QUANTC_BLOCK_WS=0) on the same operands: ragged M, a ragged last weight block (N = 576), a bias,
    # both tiles of its rule (64 rows at M = 200, 128 split at M = 1500), the persistent loop over several
    # tiles a program (M = 4000: 512 tiles); the same sums, so difference 0
    for M, N, bias in ((1500, 1000, False), (200, 576, True), (1500, 576, True), (4000, 2048, True)):
        xx = torch.randn(M, 1024, device="cuda", dtype=BF)
        t_ = Q.quantize_weight(torch.randn(N, 1024, device="cuda") * 0.05, "fp8_block_128x128")
        xq, sx = act_quant.quantize_activation(xx, "fp8_dynamic_group_128")
        bb = torch.randn(N, device="cuda", dtype=BF) if bias else None
        args = (xq, t_["weight"], t_["weight_scale_inv"], "fp8_block_128x128", "fp8_dynamic_group_128",
                C(64, 128, 128, 8, 4, 3))
        with env_set("QUANTC_BLOCK_WS", None):
            o = sm.scaled_mm(*args, x_scale=sx, bias=bb).float()
        with env_set("QUANTC_BLOCK_WS", "0"):
            tiled = sm.scaled_mm(*args, x_scale=sx, bias=bb).float()
        res[f"block_ws/M{M}/N{N}/bias{int(bias)}/max_abs_diff_vs_tiled"] = float((o - tiled).abs().max())
        # the 256-wide tile (two 128-wide halves; N = 1000 / 576: the last tile's second half is partly or
        # wholly past N), as the runtime's rule would pick it for larger M
        wide = block_mm_ws.block_mm_ws(xq, t_["weight"], sx, t_["weight_scale_inv"], bb, 128, block_mm_ws.WIDE_N.value,
                                       3, 8, split=True, programs=sm_count(xx.device)).float()
        res[f"block_ws_wide/M{M}/N{N}/bias{int(bias)}/max_abs_diff_vs_tiled"] = float((wide - tiled).abs().max())
    # the warp-specialized raw-sum kernel (fp8 / int8 from M = 128 on sm_90, rowwise_ws_tile) against the
    # Triton kernels (QUANTC_ROWWISE_WS=0) on the same operands: ragged M and N (576), per-tensor and
    # per-row / per-channel scales, a bias, several tiles a program (M = 4000); the same sums, so difference 0
    for wk, ak in (("fp8_per_channel", "fp8_dynamic_per_token"), ("fp8_per_tensor", "fp8_dynamic_per_tensor"),
                   ("int8_per_channel", "int8_dynamic_per_token")):
        for M, N, bias in ((200, 576, True), (1500, 1000, False), (4000, 2048, True)):
            xx = torch.randn(M, 1024, device="cuda", dtype=BF)
            t_ = Q.quantize_weight(torch.randn(N, 1024, device="cuda") * 0.05, wk)
            xq, sx = act_quant.quantize_activation(xx, ak)
            bb = torch.randn(N, device="cuda", dtype=BF) if bias else None
            args = (xq, t_["weight"], t_["weight_scale"], wk, ak, C(64, 128, 128, 8, 4, 3))
            with env_set("QUANTC_ROWWISE_WS", "1"):
                o = sm.scaled_mm(*args, x_scale=sx, bias=bb).float()
            with env_set("QUANTC_ROWWISE_WS", "0"):
                ref_ = sm.scaled_mm(*args, x_scale=sx, bias=bb, tma=False).float()
            res[f"rowwise_ws/{wk}/M{M}/N{N}/bias{int(bias)}/max_abs_diff_vs_tiled"] = float((o - ref_).abs().max())
    out["gpu_check"] = res
    bad = {k: v for k, v in res.items() if (v is False) or (isinstance(v, float) and not v < 1e-2)}
    print("gpu check:", "all ok" if not bad else bad, flush=True)


def gemlite_columns(r: dict, x, peers: dict, ops: dict, check: dict) -> None:
    """GemLite's module and kernel floor for each 8-bit format it shares, ours at module level, ratios.
    ``ops[tag]`` = (xq, sx, our kernel on (xq, sx), our module on bf16 x, our kernel's row key)."""
    for tag, peer in peers.items():
        if peer.error:
            continue
        xq, sx, ours_kernel, ours_module, kernel_key = ops[tag]
        if tag not in check:  # once per shape: same operands, GemLite vs ours
            try:
                check[tag] = PG.rel_err(peer.kernel(xq, sx), ours_kernel())
            except Exception as e:  # the peer failing never stops the bench
                check[tag] = f"{type(e).__name__}: {str(e)[:200]}"
        r[f"gemlite_{tag}_us"] = bench(lambda: peer.module(x))
        r[f"gemlite_{tag}_kernel_us"] = bench(lambda: peer.kernel(xq, sx))
        mod_key = "module_fp8_row_us" if tag == "fp8" else f"module_{tag}_us"
        if mod_key not in r:
            r[mod_key] = bench(ours_module)
        for ours, theirs in ((kernel_key, f"gemlite_{tag}_kernel_us"), (mod_key, f"gemlite_{tag}_us")):
            if r.get(ours) and r.get(theirs):
                r[ours.replace("_us", "_over_gemlite")] = r[theirs] / r[ours]


def main() -> None:
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "rows": [], "decode": []}
    print({k: out[k] for k in ("device", "torch", "triton", "cuda")}, flush=True)
    gpu_check(out)
    out["gemlite"] = {"version": PG.version(), "error": PG.load()[1], "check_rel_err": {}}
    print("gemlite:", out["gemlite"]["version"] or out["gemlite"]["error"], flush=True)
    out["copy_GBps"] = copy_gbps()
    # bf16 matmul at M = 1 on (24576, 7168), weights rotated past L2
    N0, K0 = 24576, 7168
    ws = [torch.randn(N0, K0, device="cuda", dtype=BF) for _ in range(2)]
    x1 = torch.randn(1, K0, device="cuda", dtype=BF)
    t = do_bench_cudagraph(lambda: [x1 @ w.T for w in ws], rep=30) * 1e3
    out["bf16_m1_GBps"] = 2 * N0 * K0 * 2 / t / 1e3
    out["ref_GBps"] = max(out["copy_GBps"], out["bf16_m1_GBps"])
    del ws
    print("copy GB/s", round(out["copy_GBps"]), "bf16 M=1 GB/s", round(out["bf16_m1_GBps"]), flush=True)

    best: dict[tuple[str, str, int, int], tuple[float, KernelConfig]] = {}  # (kernel, bucket, n, k)
    f8 = Q.FP8
    for N, K in SHAPES:
        w = torch.randn(N, K, device="cuda", dtype=BF) * 0.02
        wt = {key: Q.quantize_weight(w, key) for key in ("fp8_per_channel", "fp8_block_128x128", "int8_per_channel", "mxfp8")}
        gl = {}
        if not out["gemlite"]["error"]:
            gl = {tag: PG.build(key, wt[key]["weight"], wt[key]["weight_scale"])
                  for tag, key in (("fp8", "fp8_per_channel"), ("int8", "int8_per_channel"))}
            for tag, peer in gl.items():
                if peer.error:
                    print(peer.error, flush=True)
                    out["gemlite"].setdefault("setup_errors", []).append(peer.error)
        gl_check = out["gemlite"]["check_rel_err"].setdefault(f"{N}x{K}", {})
        for M in MS:
            if time.time() - T0 > CAP:
                break
            x = torch.randn(M, K, device="cuda", dtype=BF)
            r = {"M": M, "N": N, "K": K}
            r["bf16_us"] = bench(lambda: x @ w.T)
            xq_row, sx_row = quantize_activation(x, "fp8_dynamic_per_token")
            xq_g, sx_g = quantize_activation(x, "fp8_dynamic_group_128")
            xi, sxi = quantize_activation(x, "int8_dynamic_per_token")
            xm, sxm = quantize_activation(x, "mxfp8")
            w8, s8 = wt["fp8_per_channel"]["weight"], wt["fp8_per_channel"]["weight_scale"]
            wb, sbk = wt["fp8_block_128x128"]["weight"], wt["fp8_block_128x128"]["weight_scale_inv"]
            wi, si = wt["int8_per_channel"]["weight"], wt["int8_per_channel"]["weight_scale"]
            wm, sm = wt["mxfp8"]["weight"], wt["mxfp8"]["weight_scale"]
            # peers
            r["peer_fp8_row_us"] = bench(lambda: torch._scaled_mm(xq_row, w8.T, scale_a=sx_row, scale_b=s8.reshape(1, -1), out_dtype=BF))
            if M > 1 and N % 128 == 0:
                sa_cm = sx_g.t().contiguous().t()
                r["peer_fp8_block_us"] = bench(lambda: torch._scaled_mm(xq_g, wb.T, scale_a=sa_cm, scale_b=sbk.t(), out_dtype=BF))
            if M > 16:
                r["peer_int_mm_us"] = bench(lambda: torch._int_mm(xi, wi.T))
            # ours, tuned per bucket
            ours = {
                "fp8_scaled_gemm": lambda c: scaled_mm(xq_row, w8, s8, "fp8_per_channel", "fp8_dynamic_per_token", c, x_scale=sx_row),
                "fp8_block_gemm": lambda c: scaled_mm(xq_g, wb, sbk, "fp8_block_128x128", "fp8_dynamic_group_128", c, x_scale=sx_g),
                "int8_gemm": lambda c: scaled_mm(xi, wi, si, "int8_per_channel", "int8_dynamic_per_token", c, x_scale=sxi),
                "mxfp8_gemm_emulated": lambda c: scaled_mm(xm, wm, sm, "mxfp8", "mxfp8", c, x_scale=sxm),
            }
            if M <= 16:
                ours["fp8_weight_only_gemm"] = lambda c: scaled_mm(x, w8, s8, "fp8_per_channel", "none", c)
            for kernel, fn in ours.items():
                if kernel == "mxfp8_gemm_emulated" and M not in (1, 16, 1024, 8192):
                    continue
                dflt = default_config(kernel, M)  # what a plan without a table row runs: tuned vs default
                want = fn(dflt).float()  # the default config is checked against the fp32 reference in gpu_check
                res = [(bench(lambda c=c: fn(c)), c) for c in candidates(kernel, M) if agrees(fn, c, want, kernel)]
                res = [(t_, c) for t_, c in res if t_]
                if not res:
                    continue
                t_best, c_best = min(res, key=lambda p: p[0])
                r[kernel + "_us"] = t_best
                r[kernel + "_cfg"] = [c_best.block_m, c_best.block_n, c_best.block_k, c_best.num_warps, c_best.num_stages,
                                      c_best.split_k]
                t_dflt = next((t_ for t_, c in res if c == dflt), None) or bench(lambda: fn(dflt))
                r[kernel + "_default_us"] = t_dflt
                key = (kernel, bucket_of(M), N, K)
                if key not in best or t_best < best[key][0]:
                    best[key] = (t_best, c_best, t_dflt)
            # module level at small M: bf16 in, quantization fused, vs torch quant + _scaled_mm
            if M <= 64:
                c = best[("fp8_scaled_gemm", bucket_of(M), N, K)][1]  # (time, config, default time)
                r["module_fp8_row_us"] = bench(lambda: scaled_mm(x, w8, s8, "fp8_per_channel", "fp8_dynamic_per_token", c))

                def peer_module():
                    q, s = Q.quant_fp8_per_token(x)
                    return torch._scaled_mm(q, w8.T, scale_a=s, scale_b=s8.reshape(1, -1), out_dtype=BF)

                r["peer_module_fp8_row_us"] = bench(peer_module)
            if gl:
                cf, ci = best.get(("fp8_scaled_gemm", bucket_of(M), N, K)), best.get(("int8_gemm", bucket_of(M), N, K))
                ops = {}
                if cf:
                    ops["fp8"] = (xq_row, sx_row, lambda: ours["fp8_scaled_gemm"](cf[1]),
                                  lambda: scaled_mm(x, w8, s8, "fp8_per_channel", "fp8_dynamic_per_token", cf[1]),
                                  "fp8_scaled_gemm_us")
                if ci:
                    ops["int8"] = (xi, sxi, lambda: ours["int8_gemm"](ci[1]),
                                   lambda: scaled_mm(x, wi, si, "int8_per_channel", "int8_dynamic_per_token", ci[1]),
                                   "int8_gemm_us")
                gemlite_columns(r, x, {t: p for t, p in gl.items() if t in ops}, ops, gl_check)
            fl = 2 * M * N * K
            for k_ in [k_ for k_ in list(r) if k_.endswith("_us") and r[k_]]:
                r[k_.replace("_us", "_tflops")] = fl / r[k_] / 1e6
            out["rows"].append(r)
            print(json.dumps({k_: (round(v, 2) if isinstance(v, float) else v) for k_, v in r.items()}), flush=True)
        # decode bandwidth of fp8 weights: a graph over copies of the weight past L2
        if time.time() - T0 < CAP:
            copies = max(2, math.ceil(256e6 / (N * K)))
            xs = torch.randn(1, K, device="cuda", dtype=BF)
            wcs = [(w8.clone(), s8.clone()) for _ in range(copies)]
            for kernel, act in (("fp8_scaled_gemm", "fp8_dynamic_per_token"), ("fp8_weight_only_gemm", "none")):
                key = (kernel, "m1", N, K)
                if key not in best:
                    continue
                c = best[key][1]
                # the module (bf16 in, its quantizer launched first) and, the floor, the GEMM kernel
                # alone on the pre-quantized activation (weight-only: the same thing)
                t_ = bench(lambda: [scaled_mm(xs, wc, sc, "fp8_per_channel", act, c) for wc, sc in wcs])
                t_k = t_
                if act != "none":
                    xq, sxq = quantize_activation(xs, act)
                    t_k = bench(lambda: [scaled_mm(xq, wc, sc, "fp8_per_channel", act, c, x_scale=sxq) for wc, sc in wcs])
                if t_ and t_k:
                    gbps, kgbps = copies * N * K / t_ / 1e3, copies * N * K / t_k / 1e3
                    out["decode"].append({"kernel": kernel, "N": N, "K": K, "config": list(dataclasses.astuple(c)),
                                          "GBps": gbps, "frac_ref": gbps / out["ref_GBps"],
                                          "kernel_GBps": kgbps, "kernel_frac_ref": kgbps / out["ref_GBps"]})
                    print("decode", kernel, N, K, c, "module", round(gbps), "GB/s", round(gbps / out["ref_GBps"], 3),
                          "kernel", round(kgbps), round(kgbps / out["ref_GBps"], 3), flush=True)
            del wcs
        del w, wt, gl
        torch.cuda.empty_cache()

    rows = [{"kernel": k, "n": n_, "k": k_, "m_max": next(m for m, nm in BUCKETS if nm == b), "block_m": c.block_m,
             "block_n": c.block_n, "block_k": c.block_k, "group_m": c.group_m, "num_warps": c.num_warps,
             "num_stages": c.num_stages, "split_k": c.split_k, "us": round(t_, 2),
             **({"default_us": round(t_d, 2)} if t_d else {})}
            for (k, b, n_, k_), (t_, c, t_d) in sorted(best.items(), key=lambda it: (it[0][0], it[0][2], it[0][3], it[0][1]))]
    cfgs = {"device": out["device"], "torch": out["torch"], "triton": out["triton"], "rows": rows}
    json.dump(out, open(os.path.join(OUT, f"dense_{gpu_slug(out['device'])}.json"), "w"), indent=1)
    json.dump(cfgs, open(os.path.join(OUT, f"dense_configs_{gpu_slug(out['device'])}.json"), "w"), indent=1)
    summary(out)


def _geo(vals):
    vals = [v for v in vals if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def summary(out: dict, path: str | None = None) -> None:
    rows = out["rows"]

    def ratio(r, ours, peer):
        return r.get(peer) / r[ours] if r.get(ours) and r.get(peer) else None

    lines = [("fp8 rowwise / _scaled_mm, M>=1024", "fp8_scaled_gemm_us", "peer_fp8_row_us", lambda m: m >= 1024),
             ("fp8 rowwise / _scaled_mm, M<=256", "fp8_scaled_gemm_us", "peer_fp8_row_us", lambda m: m <= 256),
             ("fp8 block / cuBLAS block, M>=1024", "fp8_block_gemm_us", "peer_fp8_block_us", lambda m: m >= 1024),
             ("fp8 block / cuBLAS block, M 16..256", "fp8_block_gemm_us", "peer_fp8_block_us", lambda m: 16 <= m <= 256),
             ("int8 / bf16, M>=1024", "int8_gemm_us", "bf16_us", lambda m: m >= 1024),
             ("int8 / _int_mm, M>=1024", "int8_gemm_us", "peer_int_mm_us", lambda m: m >= 1024),
             ("mxfp8 emulated / bf16, M>=1024", "mxfp8_gemm_emulated_us", "bf16_us", lambda m: m >= 1024),
             ("fp8 w-only / bf16, M<=16", "fp8_weight_only_gemm_us", "bf16_us", lambda m: m <= 16),
             ("module fp8 (quant fused) / torch quant+_scaled_mm, M<=64", "module_fp8_row_us", "peer_module_fp8_row_us", lambda m: m <= 64),
             ("fp8 rowwise / GemLite A8W8 fp8 kernel, every M", "fp8_scaled_gemm_us", "gemlite_fp8_kernel_us", lambda m: True),
             ("module fp8 / GemLite A8W8 fp8 module, every M", "module_fp8_row_us", "gemlite_fp8_us", lambda m: True),
             ("int8 / GemLite A8W8 int8 kernel, every M", "int8_gemm_us", "gemlite_int8_kernel_us", lambda m: True),
             ("module int8 / GemLite A8W8 int8 module, every M", "module_int8_us", "gemlite_int8_us", lambda m: True)]
    out["summary"] = {}
    print(f"\n{out['device']}  torch {out['torch']}  triton {out['triton']}  copy {out['copy_GBps']:.0f} GB/s")
    print(f"{'speedup (peer time / ours)':58s} {'geomean':>8s} {'worst':>7s} {'best':>7s}")
    for label, ours, peer, sel in lines:
        rs = [ratio(r, ours, peer) for r in rows if sel(r["M"])]
        rs = [v for v in rs if v]
        if rs:
            out["summary"][label] = {"geomean": _geo(rs), "worst": min(rs), "best": max(rs), "n": len(rs)}
            print(f"{label:58s} {_geo(rs):8.2f} {min(rs):7.2f} {max(rs):7.2f}")
    gl = out.get("gemlite", {})
    if gl.get("error"):
        print(f"GemLite columns skipped: {gl['error']}")
    else:
        print(f"GemLite {gl.get('version')}: kernel-floor rel. error vs ours, same operands: {gl.get('check_rel_err')}")
    for d in out["decode"]:
        kern = f"; kernel {d['kernel_GBps']:.0f} GB/s = {d['kernel_frac_ref']:.2f}" if "kernel_GBps" in d else ""
        print(f"decode {d['kernel']:22s} {d['N']}x{d['K']}: module {d['GBps']:.0f} GB/s = {d['frac_ref']:.2f} of reference{kern}")
    json.dump(out, open(path or os.path.join(OUT, f"dense_{gpu_slug(out['device'])}.json"), "w"), indent=1)


def merge(paths: list[str]) -> dict:
    """One result from runs of the same device over different shapes; later runs win a repeated (N, K, M)."""
    runs = [json.load(open(p)) for p in paths]
    devices = {r["device"] for r in runs}
    if len(devices) > 1:
        raise SystemExit(f"runs come from different devices: {sorted(devices)}")
    rows = {(r["N"], r["K"], r["M"]): r for run in runs for r in run["rows"]}
    decode = {(d["kernel"], d["N"], d["K"]): d for run in runs for d in run["decode"]}
    out = {k: v for k, v in runs[-1].items() if k not in ("rows", "decode", "summary")}
    out["rows"] = sorted(rows.values(), key=lambda r: (SHAPES.index((r["N"], r["K"])) if (r["N"], r["K"]) in SHAPES
                                                        else len(SHAPES), r["N"], r["K"], r["M"]))
    out["decode"] = list(decode.values())
    out["gpu_check"] = {k: v for run in runs for k, v in run.get("gpu_check", {}).items()}
    checks = {k: v for run in runs for k, v in run.get("gemlite", {}).get("check_rel_err", {}).items()}
    out["gemlite"] = {**runs[-1].get("gemlite", {}), "check_rel_err": checks}
    out["runs"] = [{"shapes": sorted({(r["N"], r["K"]) for r in run["rows"]}), "copy_GBps": run.get("copy_GBps"),
                    "ref_GBps": run.get("ref_GBps")} for run in runs]
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["merge"]:
        import argparse

        ap = argparse.ArgumentParser(prog="bench_dense.py merge")
        ap.add_argument("runs", nargs="+")
        ap.add_argument("-o", "--out", required=True)
        args = ap.parse_args(sys.argv[2:])
        summary(merge(args.runs), args.out)
    else:
        main()
