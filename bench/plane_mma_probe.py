"""int4 at small M on the tensor cores from the natural (plane) layout (``wo_plane_mma``) against what the layer's
launcher runs today (``wo_launch.run``: the GEMVs at 1-2 rows, the plane kernel to 16, ...) and tinygemm, on a
GPU, with weights rotated past L2 under CUDA graphs (bench_wo's timing). Per (shape, key, M): the kernel over
warps x split-K (``wo_gemm._split``'s two waves times PROBE_SPLIT_MULT), each checked against the launcher first.

    OUT=... python bench/plane_mma_probe.py   # env: PROBE_SHAPES ("28672x4096,..."; default bench_wo's seven),
                                              #      PROBE_MS ("1,2,4,8,16,32,64"), PROBE_KEYS, PROBE_WARPS ("2,4"),
                                              #      PROBE_SPLIT_MULT ("0.5,1,2"), PROBE_SUBS ("1,2": 128-deep
                                              #      steps an iteration), PROBE_TOKENS ("0": the policy's
                                              #      token tile; "8,16": also 8 a program), PROBE_RT ("1,2":
                                              #      16-row tiles a warp), PROBE_X_AHEAD ("0,1": the
                                              #      activations loaded a step ahead too), PROBE_CAP_S

Writes $OUT/plane_mma_probe_<device>.json (after every shape).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.bench_wo import SHAPES, n_copies, random_weight, rotated_us, tinygemm_copies, tinygemm_us  # noqa: E402
from bench.timing import gpu_slug  # noqa: E402
from quantc.runtime.kernels import wo_gemm, wo_launch  # noqa: E402
from quantc.runtime.kernels import wo_plane_mma as pm  # noqa: E402
from quantc.runtime.kernels.common import cdiv  # noqa: E402

if os.environ.get("PROBE_SHAPES"):
    SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ["PROBE_SHAPES"].split(",")]
MS = tuple(int(v) for v in os.environ.get("PROBE_MS", "1,2,4,8,16,32,64").split(","))
KEYS = os.environ.get("PROBE_KEYS", "int4_group_128").split(",")
WARPS = tuple(int(v) for v in os.environ.get("PROBE_WARPS", "2,4").split(","))
SPLIT_MULT = tuple(float(v) for v in os.environ.get("PROBE_SPLIT_MULT", "0.5,1,2").split(","))
SUBS = tuple(int(v) for v in os.environ.get("PROBE_SUBS", "1,2").split(","))
TOKENS = tuple(int(v) for v in os.environ.get("PROBE_TOKENS", "0").split(","))  # 0: plane_mma_tokens(M)
ROW_TILES = tuple(int(v) for v in os.environ.get("PROBE_RT", "1").split(","))  # 16-row tiles a warp
X_AHEAD = tuple(v == "1" for v in os.environ.get("PROBE_X_AHEAD", "0").split(","))  # activations a step ahead
CAP = float(os.environ.get("PROBE_CAP_S", "400"))


def splits(n: int, k: int, m: int, rows: int, sms: int, tok: int) -> list[int]:
    """Split-K candidates: two waves of the grid's programs (row tiles x token tiles) times the multipliers."""
    base = wo_gemm._split(n, k, rows, 128, sms) // cdiv(m, tok)
    return sorted({max(1, min(int(base * f), k // 128, 32)) for f in SPLIT_MULT})


def main() -> None:
    start = time.time()
    out_dir = os.environ.get("OUT", ".")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(), "timing": "CUDA graphs, weights rotated past L2", "rows": [],
           "notes": []}
    for (n, k) in SHAPES:
        tiny = tinygemm_copies(n, k)
        for key in KEYS:
            if time.time() - start > CAP:
                res["notes"].append(f"time cap reached before {n}x{k} {key}")
                break
            ws = [random_weight(key if key in ("mxfp4", "nvfp4") else "int4_group_128", n, k)
                  for _ in range(n_copies(n * k // 2))]
            if key.endswith("_asym"):
                ws = [dataclasses.replace(w, zeros=torch.randint(0, 16, w.scale.shape, dtype=torch.uint8,
                                                                 device=w.scale.device)) for w in ws]
            bufs = [[w.data, w.scale] + [t for t in (w.zeros, w.global_scale) if t is not None] for w in ws]
            for m in MS:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                want = wo_launch.run(x, bufs[0], None, key, "none", None).float()
                row = {"N": n, "K": k, "M": m, "key": key,
                       "default_us": rotated_us(lambda i: wo_launch.run(x, bufs[i], None, key, "none", None), len(ws)),
                       "tinygemm_us": tinygemm_us(x, tiny) if not key.endswith("_asym") else None, "configs": {}}
                toks = sorted({t or pm.plane_mma_tokens(m) for t in TOKENS if not t or t >= 8})
                for warps, sub, tok, rt, xa in [(w, s, t, r, a) for w in WARPS for s in SUBS for t in toks
                                                for r in ROW_TILES for a in X_AHEAD if k % (128 * s) == 0]:
                    for split in splits(n, k, m, warps * 16 * rt, sms, tok):
                        def call(i, warps=warps, split=split, sub=sub, tok=tok, rt=rt, xa=xa):
                            return pm.launch_plane_mma(x, ws[i], warps, split, tokens=tok, sub=sub, row_tiles=rt,
                                                       x_ahead=xa)
                        got = call(0).float()
                        err = ((got - want).abs().max() / want.abs().max()).item()
                        name = (f"w{warps}s{split}u{sub}" + (f"t{tok}" if tok != pm.plane_mma_tokens(m) else "")
                                + (f"r{rt}" if rt > 1 else "") + ("x" if xa else ""))
                        row["configs"][name] = {"us": rotated_us(call, len(ws)), "rel_err": err, "ok": err < 2e-2}
                ok = {c: v for c, v in row["configs"].items() if v["ok"] and v["us"]}
                best = min(ok, key=lambda c: ok[c]["us"]) if ok else None
                row["best"] = best
                row["best_us"] = ok[best]["us"] if best else None
                row["best_over_default"] = row["default_us"] / row["best_us"] if best and row["default_us"] else None
                row["best_over_tinygemm"] = (row["tinygemm_us"] / row["best_us"]
                                             if best and row["tinygemm_us"] else None)
                res["rows"].append(row)
                print(json.dumps({k2: v for k2, v in row.items() if k2 != "configs"}), flush=True)
            del ws, bufs
            torch.cuda.empty_cache()
        del tiny
        with open(os.path.join(out_dir, f"plane_mma_probe_{gpu_slug(res['device'])}.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
