"""Weight-only 4-bit decode GEMMs (int4 g128, mxfp4, nvfp4) against bf16 ``x @ w.T`` and tinygemm
(``torch._weight_int4pack_mm``), one run, one GPU (shared/BENCH.md rules).

- A correctness check first: every format at M = 1, 16, 64 on a small shape against the plain-torch
  reference of quantized weights (quantc.runtime.quantize), on the GPU.
- Timing: inside CUDA graphs (``do_bench_cudagraph``), each kernel run over enough copies of its
  weights to exceed 256 MB, so every call reads from HBM (L2 is 50 MB); time per call = graph / copies.
  Operands are random valid codes and scales (speed does not depend on the values).
- Our kernel is tuned per (shape, M, format) over ``candidates()`` with that same rotated timing; the
  shape's default config (``wo_gemm.default_config``, what a plan without a table row runs) is timed
  too (``default_us``): tuned vs default.
- Reference bandwidth, same run: 1 GiB device-to-device copy (read + write, ``do_bench``) and bf16
  matmul weight bytes/s at M = 1 on (24576, 7168) with rotation; floors divide by the larger.

- GemLite's A16W4 int4 g128 layer (bench/peers_gemlite.py), where its source is carried: checked
  against plain torch first, then timed the same rotated way (``gemlite_us`` per row, and
  ``over_gemlite`` = GemLite time / ours in the int4_group_128 entry). Without GemLite the column is
  left out and ``notes`` says why.

Env: BENCH_CAP_S (time cap, default 300), BENCH_SHAPES ("6144x4096,..."), BENCH_MS ("1,16,64"), BENCH_FORMATS
("int4_group_128,mxfp4,nvfp4"), OUT (output folder).
Writes $OUT/wo_<device>.json.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import time
from dataclasses import replace

import torch
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.kernels import wo_gemm as wg  # noqa: E402
from quantc.runtime.kernels.wo_gemv import GEMV_ROWS_MAX, gemv_config, uses_gemv  # noqa: E402
from quantc.runtime.kernels.wo_plane_mma import plane_mma_split, plane_mma_sub, uses_plane_mma  # noqa: E402
from bench import peers_gemlite as PG  # noqa: E402
from bench.bandwidth import copy_gbps  # noqa: E402
from bench import wo_summary  # noqa: E402

T0 = time.time()
CAP = float(os.environ.get("BENCH_CAP_S", "300"))
OUT = os.environ.get("OUT", "/tmp")
BF = torch.bfloat16
DEV = "cuda"
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 2048), (2048, 7168), (24576, 7168)]
LARGE = [(28672, 4096), (4096, 14336), (24576, 7168)]
if os.environ.get("BENCH_SHAPES"):
    SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ["BENCH_SHAPES"].split(",")]
MS = tuple(int(v) for v in os.environ.get("BENCH_MS", "1,16,64").split(","))
FORMATS = tuple(os.environ.get("BENCH_FORMATS", "int4_group_128,mxfp4,nvfp4").split(","))
ROTATE_BYTES = 256 << 20
SMS = torch.cuda.get_device_properties(0).multi_processor_count

res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
             "sms": SMS, "timing": "CUDA graphs, weights rotated past L2 (>= 256 MB per graph)", "check": [],
             "rows": [], "notes": []}


def save():
    slug = re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    with open(os.path.join(OUT, f"wo_{slug}.json"), "w") as f:
        json.dump(res, f, indent=1)


def rotated_us(make_call, copies: int) -> float | None:
    """us per call of make_call(i) over ``copies`` weight copies inside one CUDA graph."""
    def fn():
        for i in range(copies):
            make_call(i)
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=30) * 1e3 / copies
    except Exception as e:  # a config that does not compile / launch: report, keep going
        print("ERR", type(e).__name__, str(e)[:200], flush=True)
        return None


def n_copies(nbytes: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / nbytes))


def random_weight(key: str, n: int, k: int) -> wf.WoWeight:
    data = torch.randint(-2**31, 2**31 - 1, (n, k // 8), dtype=torch.int32, device=DEV)
    if key == "mxfp4":
        s = torch.randint(120, 130, (n, k // 32), dtype=torch.uint8, device=DEV)
        return wf.WoWeight(wf.MXFP4, n, k, data, s, wf.S_E8M0, 32)
    if key == "nvfp4":
        s = (torch.rand(n, k // 16, device=DEV) + 0.5).to(torch.float8_e4m3fn)
        return wf.WoWeight(wf.NVFP4, n, k, data, s, wf.S_FLOAT, 16, global_scale=torch.ones(1, device=DEV))
    s = (torch.rand(n, k // 128, device=DEV) * 0.01).to(BF)
    zeros = torch.randint(0, 16, (n, k // 128), dtype=torch.uint8, device=DEV) if key.endswith("_asym") else None
    return wf.WoWeight(wf.INT4, n, k, data, s, wf.S_FLOAT, 128, zeros=zeros)


def candidates(m: int, n: int, k: int, key: str | None = None) -> list[C]:
    return wg.candidates(m, n, k, SMS, int4=None if key is None else key.startswith("int4"))


def check_correctness():
    from quantc.runtime.kernels import wo_mx

    torch.manual_seed(0)
    # K = 4096 too: the GEMV's 2048-deep tile (M = 1 on sm_90) takes it
    for key, (n, k) in itertools.product((*FORMATS, "int4_group_32_asym", "int4_group_64"), ((512, 1024), (256, 4096))):
        w = wf.quantize(torch.randn(n, k, device=DEV), key)
        for m in MS:
            x = torch.randn(m, k, device=DEV, dtype=BF)
            for cfg in candidates(m, n, k, key)[:3]:
                out = wg.launch(x, w, cfg).float()
                ref = wg.reference(x, w)
                err = ((out - ref).abs().max() / ref.abs().max()).item()
                res["check"].append({"key": key, "N": n, "K": k, "M": m, "cfg": list(cfg.__dict__.values()),
                                     "rel_err": err, "ok": err < 1e-2})
    w = wf.quantize(torch.randn(512, 1024, device=DEV), "mxfp4")
    for m in MS:
        x = torch.randn(m, 1024, device=DEV, dtype=BF)
        err = ((wo_mx.launch(x, w, candidates(m, 512, 1024)[0]).float() - wo_mx.reference(x, w)).abs().max()
               / wo_mx.reference(x, w).abs().max()).item()
        res["check"].append({"key": "mxfp4_mxfp8", "M": m, "rel_err": err, "ok": err < 1e-2})
    bad = [c for c in res["check"] if not c["ok"]]
    print(f"correctness: {len(res['check']) - len(bad)}/{len(res['check'])} ok", bad[:5], flush=True)
    save()


def reference_bandwidth():
    res["copy_GBps"] = copy_gbps(device=DEV)
    n_, k_ = 24576, 7168
    x = torch.randn(1, k_, device=DEV, dtype=BF)
    ws = [torch.randn(n_, k_, device=DEV, dtype=BF) for _ in range(2)]
    t = rotated_us(lambda i: x @ ws[i].T, 2)
    res["bf16_m1_GBps"] = n_ * k_ * 2 / t / 1e3
    res["ref_GBps"] = max(res["copy_GBps"], res["bf16_m1_GBps"])
    print("bandwidth", res["copy_GBps"], res["bf16_m1_GBps"], flush=True)
    del ws
    torch.cuda.empty_cache()
    save()


def tinygemm_copies(n: int, k: int) -> list:
    """tinygemm's int4 g128 operands (packed weight, scales and zeros) for an (N, K) weight, over enough copies
    to pass L2; ``tinygemm_us`` times them."""
    q_u8 = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=DEV)
    wp = torch._convert_weight_to_int4pack(q_u8, 8)
    return [(wp.clone(), torch.rand(k // 128, n, 2, device=DEV, dtype=BF)) for _ in range(n_copies(n * k // 2))]


def tinygemm_us(x: torch.Tensor, tiny: list) -> float | None:
    return rotated_us(lambda i: torch._weight_int4pack_mm(x, tiny[i][0], 128, tiny[i][1]), len(tiny))


def bench_shapes():
    for n, k in SHAPES:
        wbf = [torch.randn(n, k, device=DEV, dtype=BF) for _ in range(n_copies(n * k * 2))]
        tiny = None
        try:
            tiny = tinygemm_copies(n, k)
        except Exception as e:
            res["notes"].append(f"tinygemm setup failed at {n}x{k}: {str(e)[:200]}")
        ours = {key: [random_weight(key, n, k) for _ in range(n_copies(n * k // 2))] for key in FORMATS}
        gemlite = gemlite_copies(n, k)
        for m in MS:
            if time.time() - T0 > CAP:
                res["notes"].append(f"time cap reached before {n}x{k} M={m}")
                save()
                return
            x = torch.randn(m, k, device=DEV, dtype=BF)
            row = {"N": n, "K": k, "M": m}
            row["bf16_us"] = rotated_us(lambda i: x @ wbf[i].T, len(wbf))
            if tiny:
                row["tinygemm_us"] = tinygemm_us(x, tiny)
            if gemlite:
                row["gemlite_us"] = rotated_us(lambda i: gemlite[i].module(x), len(gemlite))
            for key, ws in ours.items():
                best = None
                pmma = uses_plane_mma(x, ws[0])
                gemv = not pmma and uses_gemv(x, ws[0])
                own = gemv or pmma  # the GEMV and the plane-layout MMA take their own configs: time them once
                for cfg in candidates(m, n, k, key)[:1] if own else candidates(m, n, k, key):
                    t = rotated_us(lambda i: wg.launch(x, ws[i], cfg), len(ws))
                    if t is not None and (best is None or t < best[0]):
                        best = (t, cfg)
                if best is None:
                    continue
                t, cfg = best
                dflt = wg.default_config(m, n, k, SMS, int4=key.startswith("int4"))
                dflt_us = t if dflt == cfg or own else rotated_us(lambda i: wg.launch(x, ws[i], dflt), len(ws))
                if gemv:  # its config as launched; block_m reports the warps along K
                    cfg, warps_k = gemv_config(n if m <= GEMV_ROWS_MAX else m * n, k, SMS)
                    cfg = dflt = replace(cfg, block_m=warps_k)
                if pmma:  # 4 warps of 16 rows, num_stages reports the 128-deep steps an iteration
                    cfg = dflt = C(16, 64, 128, num_warps=4, num_stages=plane_mma_sub(k),
                                          split_k=plane_mma_split(n, k, m, SMS))
                nbytes = ws[0].nbytes()
                kernel = ("plane_mma" if pmma else "gemv" if gemv else "planes" if wg.uses_planes(m, ws[0].fmt, k)
                          else "mma4")
                row[key] = {"us": t, "kernel": kernel,
                            "cfg": [cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages,
                                    cfg.split_k],
                            "default_us": dflt_us, "default_cfg": [dflt.block_m, dflt.block_n, dflt.block_k,
                                                                   dflt.num_warps, dflt.num_stages, dflt.split_k],
                            "over_bf16": row["bf16_us"] / t if row["bf16_us"] else None,
                            "over_tinygemm": row.get("tinygemm_us") / t if row.get("tinygemm_us") else None,
                            **({"over_gemlite": row["gemlite_us"] / t} if key == "int4_group_128" and row.get("gemlite_us") else {}),
                            "GBps": nbytes / t / 1e3, "frac_ref_bw": nbytes / t / 1e3 / res["ref_GBps"]}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
        del wbf, tiny, ours, gemlite
        torch.cuda.empty_cache()


def gemlite_copies(n: int, k: int) -> list:
    """GemLite A16W4 g128 layers over enough weight copies to pass L2; [] (with a note) without GemLite."""
    peers = []
    for _ in range(n_copies(n * k // 2)):
        peer = PG.build("int4_group_128", n=n, k=k)
        if peer.error:
            res["notes"].append(peer.error)
            return []
        peers.append(peer)
    return peers


def check_gemlite():
    res["gemlite"] = {"version": PG.version(), "error": PG.load()[1]}
    if not res["gemlite"]["error"]:
        res["gemlite"]["check_rel_err"] = PG.selfcheck_int4()
    print("gemlite:", res["gemlite"], flush=True)
    save()


def summarize():
    res["summary"] = wo_summary.summarize(res["rows"], FORMATS, MS, LARGE, res.get("gemlite", {}).get("error"))
    save()
    for k_, v in res["summary"].items():
        print(k_, v, flush=True)


if __name__ == "__main__":
    check_correctness()
    check_gemlite()
    reference_bandwidth()
    bench_shapes()
    summarize()
    print("done in", time.time() - T0, flush=True)
