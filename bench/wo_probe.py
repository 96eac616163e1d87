"""Probe the 4-bit weight-only kernels at decode on a GPU: a config sweep per (shape, format, M) over
the kernels (``mma4``, ``planes``, ``planes_nofold`` (int4 at M = 1 with the per-element bias
subtraction instead of the fold) and the experimental ``persistent`` planes variant: each run
directly, whatever wo_gemm's policy would pick; PROBE_KERNELS=mma4,planes,persistent), and a
single-config mode to run under Nsight Compute. Timing as bench_wo.py (CUDA graphs, weights rotated
past L2), every kernel checked against the reference first. Used to choose what to change in the
kernels; bench_wo.py is the reference benchmark.

    python bench/wo_probe.py sweep     # env: PROBE_SHAPES, PROBE_FMTS, PROBE_MS, PROBE_KERNELS (gemv: the
                                       #      4-bit CUDA-core GEMV at M <= 2; frag: int4 in fragment order,
                                       #      wo_frag, M <= 16), PROBE_STAGES, PROBE_SPLIT_MULT,
                                       #      PROBE_TINYGEMM=1, PROBE_CAP_S
    ncu --clock-control none -k regex:_wo_planes python bench/wo_probe.py one planes int4_group_128 \
        28672 4096 1 16,32,128,2,4,1
    ncu --set full -k regex:_plane_mma python bench/wo_probe.py one pmma int4_group_128 28672 4096 16 \
        16,64,128,4,1,2        # wo_plane_mma: tokens,rows,-,warps,steps an iteration,split (rows / 16 / warps:
                               # row tiles a warp)

Writes $OUT/wo_probe_<device>.json (sweep).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime.kernels import wo_gemm as wg  # noqa: E402
from quantc.runtime.kernels import wo_frag as fr  # noqa: E402
from quantc.runtime.kernels import wo_gemv as gv  # noqa: E402
from quantc.runtime.kernels import wo_plane_mma as pm  # noqa: E402
from quantc.runtime.kernels import wo_planes as wp  # noqa: E402
from bench.bench_wo import n_copies, random_weight, rotated_us, tinygemm_copies, tinygemm_us  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CAP = float(os.environ.get("PROBE_CAP_S", "400"))
TILES = {"mma4": [(32, 256, 4), (64, 256, 4), (64, 512, 4), (128, 128, 4), (128, 256, 8)],
         "planes": [(32, 128, 2), (64, 128, 2), (128, 128, 4), (256, 128, 4)]}
TILES["persistent"] = TILES["planes_nofold"] = TILES["planes"]
STAGES = tuple(int(v) for v in os.environ.get("PROBE_STAGES", "3,4").split(","))
SPLIT_MULT = tuple(int(v) for v in os.environ.get("PROBE_SPLIT_MULT", "1,2,4").split(","))
TINYGEMM = os.environ.get("PROBE_TINYGEMM", "0") == "1"  # tinygemm's int4 kernel timed beside, same rows


# the 4-bit GEMV (M = 1): (rows a thread, lanes along N (1024 / a warp's K span), warps along N[, warps along K])
GEMV_TILES = [(8, 1, 4), (4, 1, 4), (16, 1, 4), (8, 1, 2), (8, 2, 4), (4, 2, 8), (8, 1, 8), (4, 4, 4)]
GEMV_STAGES = tuple(int(v) for v in os.environ.get("PROBE_GEMV_STAGES", "1,2").split(","))  # 2: prefetch
GEMV_TILES = [tuple(int(v) for v in t.split("x")) for t in os.environ["PROBE_GEMV_TILES"].split(",")] \
    if os.environ.get("PROBE_GEMV_TILES") else GEMV_TILES  # "ROWSxLANES_NxWARPS[xWARPS_K],..."
GEMV_SPLITS = tuple(int(v) for v in os.environ.get("PROBE_GEMV_SPLITS", "").split(",") if v)  # fixed split-K


def launcher(kernel: str):
    if kernel == "mma4":
        return wg.launch
    if kernel == "gemv":  # the GEMV runs one row: the config's block_m carries its warps along K
        return lambda x, w, cfg: gv.launch_gemv(x, w, replace(cfg, block_m=1), warps_k=cfg.block_m)
    if kernel == "frag":  # int4 in fragment order (wo_frag): each weight repacked once, on first use
        return lambda x, w, cfg: fr.launch_frag(x, _frag_packed(w), warps=cfg.num_warps, split_k=cfg.split_k)
    if kernel == "pmma":  # wo_plane_mma: block_m its tokens a program, block_n / 16 / warps its row tiles a warp,
        # num_stages its 128-deep steps an iteration
        return lambda x, w, cfg: pm.launch_plane_mma(x, w, cfg.num_warps, cfg.split_k, tokens=cfg.block_m,
                                                     sub=cfg.num_stages,
                                                     row_tiles=max(1, cfg.block_n // (16 * cfg.num_warps)))
    return lambda x, w, cfg: wp.launch_planes(x, w, cfg, persistent=kernel == "persistent",
                                              bias_fold=kernel != "planes_nofold")


_FRAG_PACKED: dict = {}


def _gemv_takes(x, w) -> bool:
    """The GEMV's rows: one, or up to GEMV_ROWS_MAX in one program (the several-row kernel)."""
    return x.shape[0] <= gv.GEMV_ROWS_MAX and gv.gemv_weight_ok(w)


def _frag_packed(w):
    """``w`` in fragment order, packed on first use and kept (keyed by the weight object: copies stay distinct)."""
    if id(w) not in _FRAG_PACKED:
        _FRAG_PACKED[id(w)] = (w, fr.frag_pack(w))
    return _FRAG_PACKED[id(w)][1]


def configs(kernel: str, m: int, n: int, k: int, sms: int) -> list[C]:
    out = []
    if kernel == "frag":  # up to 16 rows: WARPS x 16 weight rows a program, split-K to cover the SMs
        for warps, mult in itertools.product((2, 4, 8), SPLIT_MULT):
            if m <= 16:
                c = C(16, warps * 16, 64, num_warps=warps, num_stages=1,
                      split_k=min(wg._split(n, k, warps * 16, 64, sms) * mult, k // 64))
                if c not in out:
                    out.append(c)
        return out
    if kernel == "gemv":
        for tile, mult, stages in itertools.product(GEMV_TILES, GEMV_SPLITS or SPLIT_MULT, GEMV_STAGES):
            rows, lanes_n, warps_n, warps_k = (*tile, 1)[:4]
            bn, bk = rows * lanes_n * warps_n, 1024 // lanes_n * warps_k
            if m > gv.GEMV_ROWS_MAX or k % bk:
                continue
            split = mult if GEMV_SPLITS else wg._split(n, k, bn, bk, sms) * mult
            c = C(warps_k, bn, bk, num_warps=warps_n * warps_k, num_stages=stages, split_k=min(split, k // bk))
            if c not in out:
                out.append(c)
        return out
    if kernel == "mma4":
        for bn, bk, warps in TILES[kernel]:
            if bk <= k:
                out.append(C(16 if m <= 16 else 64, bn, bk, num_warps=warps, num_stages=3,
                             split_k=wg._split(n, k, bn, bk, sms)))
        return out
    for (bn, bk, warps), stages, mult in itertools.product(TILES[kernel], STAGES, SPLIT_MULT):
        split = min(wg._split(n, k, bn, bk, sms) * mult, k // bk)
        c = C(16 if m <= 16 else 64, bn, bk, num_warps=warps, num_stages=stages, split_k=split)
        if c not in out:
            out.append(c)
    return out


def sweep() -> None:
    t0 = time.time()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = [tuple(int(v) for v in s.split("x"))
              for s in os.environ.get("PROBE_SHAPES", "28672x4096,4096x14336,24576x7168").split(",")]
    fmts = os.environ.get("PROBE_FMTS", "int4_group_128,mxfp4").split(",")
    ms = [int(v) for v in os.environ.get("PROBE_MS", "1").split(",")]
    kernels = os.environ.get("PROBE_KERNELS", "mma4,planes").split(",")
    res = {"device": torch.cuda.get_device_name(), "rows": [], "check": []}
    from quantc.runtime.kernels import wo_format as wf
    torch.manual_seed(0)
    # K = 4096 too (GEMV only): its 2048-deep tiles need it
    for key, (n, k) in itertools.product(fmts + ["int4_group_128_asym", "int4_group_32"], ((512, 1024), (256, 4096))):
        w = wf.quantize(torch.randn(n, k, device="cuda"), key)
        for m in (1, 2, 16, 33):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = wg.reference(x, w)
            for kernel in kernels:
                if kernel == "persistent" and m > 16:  # decode only: launch_planes refuses more rows
                    continue
                if ((kernel == "gemv" and not _gemv_takes(x, w)) or (kernel != "gemv" and k != 1024)
                        or (kernel == "frag" and (m > 16 or not fr.frag_ok(w)))):
                    continue
                cs = configs(kernel, m, n, k, sms)
                for cfg in (cs if kernel == "gemv" else cs[::8]):
                    out = launcher(kernel)(x, w, cfg).float()
                    err = ((out - ref).abs().max() / ref.abs().max()).item()
                    res["check"].append({"key": key, "kernel": kernel, "N": n, "K": k, "M": m, "cfg": cfg.__dict__,
                                         "rel_err": err})
    bad = [c for c in res["check"] if not c["rel_err"] < 1e-2]
    print(f"correctness {len(res['check']) - len(bad)}/{len(res['check'])}", bad[:4], flush=True)
    slug = re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    for n, k in shapes:
        wbf = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(n_copies(n * k * 2))]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = rotated_us(lambda i: x @ wbf[i].T, len(wbf))
            if TINYGEMM:
                tiny = tinygemm_copies(n, k)
                t = tinygemm_us(x, tiny)
                res["rows"].append({"N": n, "K": k, "M": m, "fmt": "int4_group_128", "kernel": "tinygemm",
                                    "bf16_us": bf16, "us": t, "cfg": [], "over_bf16": bf16 / t if t else None,
                                    "GBps": n * k / 2 / t / 1e3 if t else None})
                del tiny
            for key in fmts:
                ws = [random_weight(key, n, k) for _ in range(n_copies(n * k // 2))]
                for kernel, cfg in [(kn, c) for kn in kernels for c in configs(kn, m, n, k, sms)]:
                    if time.time() - t0 > CAP or (kernel == "persistent" and m > 16):
                        continue
                    if (kernel == "gemv" and not _gemv_takes(x, ws[0])) or (kernel == "frag" and not fr.frag_ok(ws[0])):
                        continue
                    run = launcher(kernel)
                    t = rotated_us(lambda i: run(x, ws[i], cfg), len(ws))
                    row = {"N": n, "K": k, "M": m, "fmt": key, "kernel": kernel, "bf16_us": bf16, "us": t,
                           "cfg": [cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, cfg.split_k],
                           "over_bf16": bf16 / t if t else None, "GBps": ws[0].nbytes() / t / 1e3 if t else None}
                    res["rows"].append(row)
                    print(json.dumps(row), flush=True)
                del ws
        del wbf
        torch.cuda.empty_cache()
        with open(os.path.join(OUT, f"wo_probe_{slug}.json"), "w") as f:
            json.dump(res, f, indent=1)
    best = {}
    for r in res["rows"]:
        key = (r["N"], r["K"], r["M"], r["fmt"], r["kernel"])
        if r["us"] and (key not in best or r["us"] < best[key]["us"]):
            best[key] = r
    for key, r in best.items():
        print("BEST", key, r["cfg"], f"{r['us']:.1f} us", f"{r['over_bf16']:.2f}x bf16", f"{r['GBps']:.0f} GB/s")


def one(kernel: str, key: str, n: int, k: int, m: int, cfg: str) -> None:
    bm, bn, bk, warps, stages, split = (int(v) for v in cfg.split(","))
    c = C(bm, bn, bk, num_warps=warps, num_stages=stages, split_k=split)
    w = random_weight(key, n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        launcher(kernel)(x, w, c)
    torch.cuda.synchronize()


if __name__ == "__main__":
    if sys.argv[1] == "sweep":
        sweep()
    else:
        one(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
