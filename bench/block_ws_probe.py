"""The hand-written warp-specialized fp8 128-block kernel (``kernels/block_mm_ws.py``, Gluon) against the
tiled Triton kernel and cuBLAS's blockwise ``torch._scaled_mm``, same pre-quantized operands, one run
(GPU, CUDA graphs). Each Gluon config is first compared with the tiled kernel's output (the same
per-step math: the difference is expected to be 0), then timed; the tiled kernel runs at a few tile
configs (split-K ones too at M <= 64) and its best is kept; "runtime" is what the launcher runs (the
Gluon kernel at ``tile_for``'s tile, persistent, from ``BLOCK_WS_MIN_M`` rows; the tiled kernel below).
GemLite's block-quant A8W8 layer (``peers_gemlite``) is timed on the same operands, kernel and module.
Prints a row per (shape, M) and the geomean ratios of the issue floors (cuBLAS blockwise time / ours over
M >= 1024 and M = 16..256; GemLite's time / ours at every M).

    python bench/block_ws_probe.py   # env PROBE_MS (default 16,64,256,1024,4096,8192), PROBE_SHAPES ("NxK,..."),
                                     # PROBE_GLUON ("BMxBNxSTAGES[s][p][gG],...": split, persistent, GROUP_M),
                                     # PROBE_GEMLITE=0 (no GemLite columns); writes $OUT/block_ws_probe_<gpu>.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import peers_gemlite as gemlite  # noqa: E402
from bench.timing import env_set, geomean, gpu_slug, graph_us, matched_graph_us  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.block_mm_ws import block_mm_ws, tile_for  # noqa: E402
from quantc.runtime.kernels.scaled_mm import BLOCK_WS_MIN_M, scaled_mm  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 2048), (2048, 7168), (24576, 7168)]
MS = [int(v) for v in os.environ.get("PROBE_MS", "16,64,256,1024,4096,8192").split(",")]
if os.environ.get("PROBE_SHAPES"):
    SHAPES = [tuple(int(v) for v in s_.split("x")) for s_ in os.environ["PROBE_SHAPES"].split(",")]
# (block_m, block_n, stages, split: one partition per 64-row warpgroup, persistent: a program per SM)
GLUON = [(128, 128, 4, True, False, 8), (128, 128, 4, True, True, 8), (128, 128, 5, True, True, 8),
         (128, 128, 4, False, False, 8), (128, 128, 4, False, True, 8), (64, 128, 4, False, False, 8),
         (64, 128, 4, False, True, 8)]
if os.environ.get("PROBE_GLUON"):  # "128x128x4sp[gG]": s split, p persistent, gG GROUP_M = G (default 8)
    GLUON = [(*(int(v) for v in c_.split("g")[0].rstrip("sp").split("x")), "s" in c_.split("g")[0],
              c_.split("g")[0].endswith("p"), int(c_.split("g")[1]) if "g" in c_ else 8)
             for c_ in os.environ["PROBE_GLUON"].split(",")]
TILED = [C(64, 128, 128, 8, 4, 4), C(128, 128, 128, 8, 8, 4), C(64, 64, 128, 8, 4, 4), C(16, 64, 128, 8, 4, 4)]
# at M <= 64 also split-K tiles (the weight stream needs more programs than N / BLOCK_N on 4096-wide shapes)
TILED_SMALL_M = [C(16, 64, 128, 8, 4, 4, 2), C(16, 64, 128, 8, 4, 4, 4), C(16, 32, 128, 8, 4, 5, 4),
                 C(16, 128, 128, 8, 4, 4, 4), C(16, 32, 128, 8, 4, 5, 8), C(64, 64, 128, 8, 4, 4, 2),
                 C(64, 64, 128, 8, 4, 4, 4), C(64, 32, 128, 8, 4, 4, 4)]
WK, AK = "fp8_block_128x128", "fp8_dynamic_group_128"
USE_GEMLITE = os.environ.get("PROBE_GEMLITE", "1") == "1"  # GemLite's block-quant A8W8 columns (bench/peers_gemlite.py)


def cublas_blockwise(xg, wq, sg, ws_):
    """cuBLAS's blockwise fp8 GEMM through ``torch._scaled_mm`` on the same operands (the issue's peer):
    1 x 128 activation scales column-major, 128 x 128 weight scales transposed, as it takes them."""
    return torch._scaled_mm(xg, wq.t(), scale_a=sg.t().contiguous().t(), scale_b=ws_.t(), out_dtype=torch.bfloat16)


def main() -> None:
    os.environ["QUANTC_BLOCK_WS"] = "0"  # scaled_mm here is the tiled kernel; the Gluon one is called directly
    gpu = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    torch.manual_seed(0)
    for n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        t = Q.quantize_weight(w, WK)
        wq, ws_ = t["weight"], t["weight_scale_inv"].float()
        peer = gemlite.build(WK, wq, ws_) if USE_GEMLITE else None
        if peer is not None and peer.error:
            print("GemLite:", peer.error, flush=True)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xg, sg = quantize_activation(x, AK)
            row = {"M": m, "N": n, "K": k}
            row["cublas_block_us"] = graph_us(lambda: cublas_blockwise(xg, wq, sg, ws_))
            want = scaled_mm(xg, wq, ws_, WK, AK, TILED[1], x_scale=sg, tma=False).float()
            best, best_cfg = None, TILED[0]
            for cfg in TILED + (TILED_SMALL_M if m <= 64 else []):
                name = f"{cfg.block_m}x{cfg.block_n}x{cfg.num_warps}w{cfg.num_stages}s" + (
                    f"_split{cfg.split_k}" if cfg.split_k > 1 else "")
                us = graph_us(lambda: scaled_mm(xg, wq, ws_, WK, AK, cfg, x_scale=sg, tma=False))
                row[f"tiled_{name}"] = us
                if us and (best is None or us < best[0]):
                    best, best_cfg = (us, name), cfg
            row["tiled_us"], row["tiled_cfg"] = best if best else (None, None)
            best = None
            for bm, bn, st, split, pers, gm in GLUON:
                name = (f"gluon_{bm}x{bn}x{st}{'s' if split else ''}{'p' if pers else ''}"
                        + (f"g{gm}" if gm != 8 else ""))
                progs = sms if pers else None
                out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                us = matched_graph_us(row, name, lambda: block_mm_ws(
                    xg, wq, sg, ws_, None, bm, bn, st, group_m=gm, out=out, split=split, programs=progs), want)
                if us and (best is None or us < best[0]):
                    best = (us, name)
            row["gluon_us"], row["gluon_cfg"] = best if best else (None, None)
            # what the runtime launches: the Gluon kernel at its tile rule from BLOCK_WS_MIN_M, else the
            # tiled kernel (its best config here; the runtime takes the kernel table's)
            if m >= BLOCK_WS_MIN_M:
                bm, bn, st, split, gm = tile_for(m, n, k, sms)
                name = f"gluon_{bm}x{bn}x{st}{'s' if split else ''}p" + (f"g{gm}" if gm != 8 else "")
                row["runtime_us"] = row.get(name) or graph_us(
                    lambda: block_mm_ws(xg, wq, sg, ws_, None, bm, bn, st, gm, split=split, programs=sms))
            else:
                row["runtime_us"] = row["tiled_us"]
            if peer is not None and not peer.error:
                # GemLite's block-quant A8W8 kernel on the same operands, and its module (its own quantizer)
                # against ours (bf16 in: quantizer + the runtime's GEMM)
                try:
                    err = gemlite.rel_err(peer.kernel(xg, sg), want)
                except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
                    err = f"{type(e).__name__}: {str(e)[:120]}"
                row["gemlite_kernel_rel_err"] = err
                if isinstance(err, float) and err < 2e-2:
                    row["gemlite_kernel_us"] = graph_us(lambda: peer.kernel(xg, sg))
                    row["gemlite_module_us"] = graph_us(lambda: peer.module(x))
                    # below BLOCK_WS_MIN_M the tiled kernel at its best config here (the runtime: the table's)
                    with env_set("QUANTC_BLOCK_WS", None):
                        row["ours_module_us"] = graph_us(lambda: scaled_mm(x, wq, ws_, WK, AK, best_cfg))
                    if row["gemlite_kernel_us"] and row["runtime_us"]:
                        row["runtime_vs_gemlite"] = row["gemlite_kernel_us"] / row["runtime_us"]
                    if row["gemlite_module_us"] and row["ours_module_us"]:
                        row["module_vs_gemlite"] = row["gemlite_module_us"] / row["ours_module_us"]
            c = row["cublas_block_us"]
            for p in ("tiled", "gluon", "runtime"):
                row[f"{p}_vs_cublas"] = c / row[f"{p}_us"] if c and row[f"{p}_us"] else None
            print(json.dumps({k_: (round(v, 4) if isinstance(v, float) else v) for k_, v in row.items()}), flush=True)
            rows.append(row)
    summary = {}
    for p in ("tiled", "gluon", "runtime"):
        summary[f"{p}_vs_cublas_M>=1024"] = geomean([r[f"{p}_vs_cublas"] for r in rows if r["M"] >= 1024])
        summary[f"{p}_vs_cublas_M16..256"] = geomean([r[f"{p}_vs_cublas"] for r in rows if 16 <= r["M"] <= 256])
    for p in ("runtime", "module"):
        vals = [r.get(f"{p}_vs_gemlite") for r in rows]
        summary[f"{p}_vs_gemlite_every_M"] = geomean(vals)
        summary[f"{p}_vs_gemlite_worst"] = min((v for v in vals if v), default=None)
        summary[f"{p}_vs_gemlite_rows_lost"] = sum(1 for v in vals if v and v < 1)
    print("summary", json.dumps(summary), flush=True)
    Path(OUT, f"block_ws_probe_{gpu_slug(gpu)}.json").write_text(json.dumps(
        {"device": gpu, "triton": __import__("triton").__version__, "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
