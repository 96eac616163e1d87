"""The persistent TMA kernel against the tiled one at large M (GPU): int8 W8A8, fp8 rowwise and fp8
128-block, each at a few tile configs, with bf16 torch.matmul and the cuBLAS peers in the same run
(CUDA graphs). Prints the best of each path per shape and the ratios the issue floors use.

    python bench/tma_probe.py          # env PROBE_MS (default 1024,4096,8192); writes $OUT/tma_probe_<gpu>.json

A narrower sweep: PROBE_FORMATS (e.g. fp8_block), PROBE_SHAPES ("6144x4096,..."), PROBE_PATHS (tiled,tma),
PROBE_CONFIGS ("64x128x128x4x4,..." = block M x N x K x warps x stages); every config's time is kept
per row (``<format>_<path>_all``), the output file is then tma_probe_<gpu>_<PROBE_TAG>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.timing import geomean, gpu_slug  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 2048), (2048, 7168), (24576, 7168)]
MS = [int(v) for v in os.environ.get("PROBE_MS", "1024,4096,8192").split(",")]
CONFIGS = [C(128, 256, 128, 8, 8, 3), C(128, 128, 128, 8, 8, 4), C(128, 256, 64, 8, 8, 4), C(128, 128, 128, 8, 4, 4),
           C(256, 128, 128, 8, 8, 3), C(128, 128, 64, 8, 4, 5)]
FORMATS = {"int8": ("int8_per_channel", "int8_dynamic_per_token"), "fp8_row": ("fp8_per_channel", "fp8_dynamic_per_token"),
           "fp8_block": ("fp8_block_128x128", "fp8_dynamic_group_128")}
if os.environ.get("PROBE_SHAPES"):
    SHAPES = [tuple(int(v) for v in s_.split("x")) for s_ in os.environ["PROBE_SHAPES"].split(",")]
if os.environ.get("PROBE_CONFIGS"):
    CONFIGS = [C(*(int(v) for v in c_.split("x")[:3]), 8, *(int(v) for v in c_.split("x")[3:]))
               for c_ in os.environ["PROBE_CONFIGS"].split(",")]
RUN_FORMATS = os.environ.get("PROBE_FORMATS", ",".join(FORMATS)).split(",")
PATHS = [p_ == "tma" for p_ in os.environ.get("PROBE_PATHS", "tiled,tma").split(",")]
TAG = os.environ.get("PROBE_TAG", "")


def t_us(fn) -> float | None:
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=25) * 1e3
    except Exception as exc:  # noqa: BLE001 - a config that does not fit is skipped
        print("ERR", type(exc).__name__, str(exc)[:160], flush=True)
        return None


def main() -> None:
    os.environ["QUANTC_BLOCK_WS"] = "0"  # scaled_mm here means the tiled / TMA Triton kernels, not the Gluon one
    gpu = torch.cuda.get_device_name()
    rows = []
    torch.manual_seed(0)
    for n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        wq = {f: Q.quantize_weight(w, wk) for f, (wk, _) in FORMATS.items()}
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"M": m, "N": n, "K": k, "bf16_us": t_us(lambda: x @ w.T)}
            xr, sr = quantize_activation(x, "fp8_dynamic_per_token")
            f8 = wq["fp8_row"]
            row["scaled_mm_row_us"] = t_us(lambda: torch._scaled_mm(xr, f8["weight"].t(), scale_a=sr,
                                                                      scale_b=f8["weight_scale"].float().reshape(1, -1),
                                                                      out_dtype=torch.bfloat16))
            xi, si = quantize_activation(x, "int8_dynamic_per_token")
            row["int_mm_us"] = t_us(lambda: torch._int_mm(xi, wq["int8"]["weight"].t()))
            xg, sg = quantize_activation(x, "fp8_dynamic_group_128")
            fb = wq["fp8_block"]
            row["scaled_mm_block_us"] = t_us(lambda: torch._scaled_mm(
                xg, fb["weight"].t(), scale_a=sg.t().contiguous().t(), scale_b=fb["weight_scale_inv"].float().t(),
                out_dtype=torch.bfloat16))
            for f, (wk, ak) in FORMATS.items():
                if f not in RUN_FORMATS:
                    continue
                xq, sx = {"int8": (xi, si), "fp8_row": (xr, sr), "fp8_block": (xg, sg)}[f]
                t = wq[f]
                s = t.get("weight_scale", t.get("weight_scale_inv")).float()
                cfg0 = CONFIGS[0]
                tiled = scaled_mm(xq, t["weight"], s, wk, ak, cfg0, x_scale=sx, tma=False)
                persistent = scaled_mm(xq, t["weight"], s, wk, ak, cfg0, x_scale=sx, tma=True).float()
                row[f"{f}_tma_vs_tiled_rel"] = float((persistent - tiled.float()).norm() / tiled.float().norm())
                for tma in PATHS:
                    best, every = None, {}
                    for cfg in CONFIGS:
                        us = t_us(lambda: scaled_mm(xq, t["weight"], s, wk, ak, cfg, x_scale=sx, tma=tma))
                        name = [cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages]
                        every["x".join(map(str, name))] = us
                        if us and (best is None or us < best[0]):
                            best = (us, name)
                    key = f"{f}_{'tma' if tma else 'tiled'}"
                    row[f"{key}_us"], row[f"{key}_cfg"] = best if best else (None, None)
                    row[f"{key}_all"] = every
            print(json.dumps({k_: (round(v, 1) if isinstance(v, float) else v) for k_, v in row.items()}), flush=True)
            rows.append(row)
    summary = {}
    for path in ("tiled", "tma"):
        summary[f"int8_{path}/bf16"] = geomean([r["bf16_us"] / r[f"int8_{path}_us"] for r in rows if r.get(f"int8_{path}_us")])
        summary[f"fp8_row_{path}/scaled_mm"] = geomean([r["scaled_mm_row_us"] / r[f"fp8_row_{path}_us"] for r in rows
                                                        if r.get(f"fp8_row_{path}_us") and r["scaled_mm_row_us"]])
        summary[f"fp8_block_{path}/cublas_block"] = geomean([r["scaled_mm_block_us"] / r[f"fp8_block_{path}_us"] for r in rows
                                                             if r.get(f"fp8_block_{path}_us") and r["scaled_mm_block_us"]])
    print("summary", json.dumps(summary), flush=True)
    slug = gpu_slug(gpu)
    Path(OUT, f"tma_probe_{slug}{'_' + TAG if TAG else ''}.json").write_text(json.dumps({"device": gpu, "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
