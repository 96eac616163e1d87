"""Probe the 4-bit weight-only kernels at decode on a GPU: a config sweep per (shape, format, M) over
the kernels (``mma4``, ``planes``, ``planes_nofold`` (int4 at M = 1 with the per-element bias
subtraction instead of the fold) and the experimental ``persistent`` planes variant: each run
directly, whatever wo_gemm's policy would pick; PROBE_KERNELS=mma4,planes,persistent), and a
single-config mode to run under Nsight Compute. Timing as bench_wo.py (CUDA graphs, weights rotated
past L2), every kernel checked against the reference first. Used to choose what to change in the
kernels; bench_wo.py is the reference benchmark.

    python bench/wo_probe.py sweep     # env: PROBE_SHAPES, PROBE_FMTS, PROBE_MS, PROBE_KERNELS,
                                       #      PROBE_STAGES, PROBE_SPLIT_MULT, PROBE_CAP_S
    ncu --clock-control none -k regex:_wo_planes python bench/wo_probe.py one planes int4_group_128 \
        28672 4096 1 16,32,128,2,4,1

Writes $OUT/wo_probe_<device>.json (sweep).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime.kernels import wo_gemm as wg  # noqa: E402
from quantc.runtime.kernels import wo_planes as wp  # noqa: E402
from bench.bench_wo import n_copies, random_weight, rotated_us  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CAP = float(os.environ.get("PROBE_CAP_S", "400"))
TILES = {"mma4": [(32, 256, 4), (64, 256, 4), (64, 512, 4), (128, 128, 4), (128, 256, 8)],
         "planes": [(32, 128, 2), (64, 128, 2), (128, 128, 4), (256, 128, 4)]}
TILES["persistent"] = TILES["planes_nofold"] = TILES["planes"]
STAGES = tuple(int(v) for v in os.environ.get("PROBE_STAGES", "3,4").split(","))
SPLIT_MULT = tuple(int(v) for v in os.environ.get("PROBE_SPLIT_MULT", "1,2,4").split(","))


def launcher(kernel: str):
    if kernel == "mma4":
        return wg.launch
    return lambda x, w, cfg: wp.launch_planes(x, w, cfg, persistent=kernel == "persistent",
                                              bias_fold=kernel != "planes_nofold")


def configs(kernel: str, m: int, n: int, k: int, sms: int) -> list[C]:
    out = []
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
    for key in fmts + ["int4_group_128_asym", "int4_group_32"]:
        w = wf.quantize(torch.randn(512, 1024, device="cuda"), key)
        for m in (1, 16, 33):
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            ref = wg.reference(x, w)
            for kernel in kernels:
                if kernel == "persistent" and m > 16:  # decode only: launch_planes refuses more rows
                    continue
                for cfg in configs(kernel, m, 512, 1024, sms)[::8]:
                    out = launcher(kernel)(x, w, cfg).float()
                    err = ((out - ref).abs().max() / ref.abs().max()).item()
                    res["check"].append({"key": key, "kernel": kernel, "M": m, "cfg": cfg.__dict__, "rel_err": err})
    bad = [c for c in res["check"] if not c["rel_err"] < 1e-2]
    print(f"correctness {len(res['check']) - len(bad)}/{len(res['check'])}", bad[:4], flush=True)
    slug = re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    for n, k in shapes:
        wbf = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(n_copies(n * k * 2))]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = rotated_us(lambda i: x @ wbf[i].T, len(wbf))
            for key in fmts:
                ws = [random_weight(key, n, k) for _ in range(n_copies(n * k // 2))]
                for kernel, cfg in [(kn, c) for kn in kernels for c in configs(kn, m, n, k, sms)]:
                    if time.time() - t0 > CAP or (kernel == "persistent" and m > 16):
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
