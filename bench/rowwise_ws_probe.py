"""The hand-written warp-specialized raw-sum W8A8 kernel (``kernels/rowwise_mm_ws.py``, Gluon: fp8 per-token x
per-channel, int8 W8A8) against what the runtime runs today (the tiled Triton kernel at the table's config,
and from M = 1024 the persistent TMA kernel), cuBLAS (``torch._scaled_mm`` rowwise / ``torch._int_mm``) and
GemLite's A8W8 kernels, same pre-quantized operands, one run (GPU, CUDA graphs). Each Gluon tile is first
compared with the tiled kernel's output (expected difference 0: the same sums and epilogue), then timed.

    python bench/rowwise_ws_probe.py   # env PROBE_MS (default 64,256,1024,4096), PROBE_SHAPES ("NxK,..."),
                                       # PROBE_FORMATS (fp8,int8), PROBE_NARROW=1 (128 x 64, 64 x 128 tiles too),
                                       # PROBE_GLUON ("64x128x8,...": only these tiles);
                                       # writes $OUT/rowwise_ws_probe_<gpu>.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import peers_gemlite as gemlite  # noqa: E402
from bench.block_ws_probe import SHAPES  # noqa: E402
from bench.gemv_probe import table_config  # noqa: E402
from bench.timing import geomean, gpu_slug, graph_us, matched_graph_us  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.rowwise_mm_ws import rowwise_mm_ws  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
MS = [int(v) for v in os.environ.get("PROBE_MS", "64,256,1024,4096").split(",")]
if os.environ.get("PROBE_SHAPES"):
    SHAPES = [tuple(int(v) for v in s_.split("x")) for s_ in os.environ["PROBE_SHAPES"].split(",")]
FORMATS = {"fp8": ("fp8_per_channel", "fp8_dynamic_per_token", "fp8_scaled_gemm"),
           "int8": ("int8_per_channel", "int8_dynamic_per_token", "int8_gemm")}
RUN = os.environ.get("PROBE_FORMATS", "fp8,int8").split(",")
# (block_m, block_n, stages, group_m) per format: int8 64 x 256 wgmma does not compile in triton 3.9's Gluon
GLUON = {"fp8": [(128, 256, 3, 8), (128, 128, 4, 8), (128, 128, 5, 8)], "int8": [(128, 128, 4, 8), (128, 128, 5, 8)]}
# PROBE_NARROW=1 adds 128 x 64 and 64 x 128 tiles (twice the programs of 128 x 128, for the shapes of at
# most 64 such tiles at M = 64-256, where GemLite's kernel still leads; all compile for sm_90, the 64-row
# ones with one consumer warpgroup)
if os.environ.get("PROBE_NARROW") == "1":
    for f in GLUON:
        GLUON[f] += [(128, 64, 6, 8), (128, 64, 8, 8), (64, 128, 6, 8), (64, 128, 8, 8)]
# PROBE_GLUON="64x128x8,128x128x5" replaces the tile list (block_m x block_n x stages, GROUP_M 8) for both formats
if os.environ.get("PROBE_GLUON"):
    _tiles = [tuple(int(v) for v in t.split("x")) + (8,) for t in os.environ["PROBE_GLUON"].split(",")]
    GLUON = {f: list(_tiles) for f in GLUON}


def main() -> None:
    gpu = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    torch.manual_seed(0)
    for fmt in RUN:
        wk, ak, kernel = FORMATS[fmt]
        for n, k in SHAPES:
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            t = Q.quantize_weight(w, wk)
            wq, ws_ = t["weight"], t["weight_scale"].float()
            peer = gemlite.build(wk, wq, ws_)
            for m in MS:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                xq, sx = quantize_activation(x, ak)
                row = {"format": fmt, "M": m, "N": n, "K": k}
                cfg = table_config(kernel, n, k, m)
                want = scaled_mm(xq, wq, ws_, wk, ak, cfg, x_scale=sx, tma=False).float()
                row["runtime_us"] = graph_us(lambda: scaled_mm(xq, wq, ws_, wk, ak, cfg, x_scale=sx))
                if fmt == "fp8":
                    row["cublas_us"] = graph_us(lambda: torch._scaled_mm(
                        xq, wq.t(), scale_a=sx.reshape(-1, 1), scale_b=ws_.reshape(1, -1), out_dtype=torch.bfloat16))
                else:
                    row["cublas_us"] = graph_us(lambda: torch._int_mm(xq, wq.t()))
                best = None
                for bm, bn, st, gm in GLUON[fmt]:
                    name = f"gluon_{bm}x{bn}x{st}g{gm}"
                    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                    us = matched_graph_us(row, name, lambda: rowwise_mm_ws(
                        xq, wq, sx, ws_, None, 2, 2, bn, st, gm, out=out, programs=sms, block_m=bm), want)
                    if us and (best is None or us < best[0]):
                        best = (us, name)
                row["gluon_us"], row["gluon_cfg"] = best if best else (None, None)
                if peer is not None and not peer.error:
                    try:
                        row["gemlite_us"] = graph_us(lambda: peer.kernel(xq, sx))
                    except Exception as e:  # noqa: BLE001 - a failing peer is reported
                        row["gemlite_error"] = f"{type(e).__name__}: {str(e)[:120]}"
                for p in ("runtime", "gluon"):
                    for peer_name in ("cublas", "gemlite"):
                        if row.get(f"{p}_us") and row.get(f"{peer_name}_us"):
                            row[f"{p}_vs_{peer_name}"] = row[f"{peer_name}_us"] / row[f"{p}_us"]
                print(json.dumps({k_: (round(v, 4) if isinstance(v, float) else v) for k_, v in row.items()}), flush=True)
                rows.append(row)
    summary = {}
    for fmt in RUN:
        for p in ("runtime", "gluon"):
            for peer_name in ("cublas", "gemlite"):
                for lo, hi in ((64, 256), (1024, 1 << 30)):
                    vals = [r.get(f"{p}_vs_{peer_name}") for r in rows if r["format"] == fmt and lo <= r["M"] <= hi]
                    summary[f"{fmt}/{p}_vs_{peer_name}/M{lo}..{min(hi, max(MS))}"] = geomean([v for v in vals if v])
    print("summary", json.dumps(summary), flush=True)
    Path(OUT, f"rowwise_ws_probe_{gpu_slug(gpu)}.json").write_text(json.dumps(
        {"device": gpu, "triton": __import__("triton").__version__, "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
