"""4-bit weights at prefill M on a GPU: dequantize-then-cuBLAS (``wo_dequant``) against the in-kernel decode
(``wo_mma4``, best of its candidate configs) and bf16 ``torch.matmul``, per format, shape and M. Checks first,
on the GPU: the dequantized bf16 weight equals the reference's ``dequantize(w)`` rounded to bf16 (bit for bit;
the GPU runs the PTX nibble decode, the interpreter tests the plain-Triton one), and the dequant path's output
is within the bf16 GEMM tolerance of ``wo_gemm.reference``. Then the crossover: the smallest M from which the
dequant path is faster on every shape, the value for ``QUANTC_DEQUANT_MIN_M`` / ``DEQUANT_MIN_M``.

    python3 bench/dequant_probe.py      # env: PROBE_MS (default 64,256,1024,2048,4096,8192), PROBE_CAP_S, OUT

Timing: CUDA graphs (triton's do_bench_cudagraph); at these M the GEMM is compute-bound, so no L2 rotation.
Writes $OUT/dequant_probe_<gpu>.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.runtime.kernels import wo_dequant as wd  # noqa: E402
from quantc.runtime.kernels import wo_gemm as wg  # noqa: E402
from quantc.runtime.kernels.wo_format import dequantize  # noqa: E402
from quantc.runtime.kernels.wo_mma4 import launch_mma4  # noqa: E402
from bench.bench_wo import random_weight  # noqa: E402
from bench.timing import geomean  # noqa: E402
from bench.timing import graph_us as us  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CAP = float(os.environ.get("PROBE_CAP_S", "240"))
MS = [int(v) for v in os.environ.get("PROBE_MS", "64,256,1024,2048,4096,8192").split(",")]
SHAPES = [(6144, 4096), (28672, 4096), (4096, 14336), (24576, 7168)]
FORMATS = ["int4_group_128", "mxfp4", "nvfp4"]
BF = torch.bfloat16


def main() -> None:
    t0 = time.time()
    dev = torch.cuda.get_device_name()
    res = {"device": dev, "torch": torch.__version__, "check": [], "rows": []}
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for fmt in FORMATS:  # checks first: nothing is timed on a wrong operand
        w = random_weight(fmt, 576, 4096)
        ref_w = dequantize(w).to(BF)
        got = wd.dequantize_bf16(w)
        x = torch.randn(300, 4096, device="cuda", dtype=BF)
        out = wd.launch_dequant(x, w).float()
        ref = wg.reference(x, w)
        rel = ((out - ref).norm() / ref.norm()).item()
        ok = torch.equal(got, ref_w) and rel < 1e-2
        res["check"].append({"format": fmt, "weight_bit_exact": torch.equal(got, ref_w), "gemm_rel_err": rel, "ok": ok})
        print("check", res["check"][-1], flush=True)
    if not all(c["ok"] for c in res["check"]):
        raise SystemExit("dequant path disagrees with the reference on this GPU; nothing timed")
    for n, k in SHAPES:
        for fmt in FORMATS:
            w = random_weight(fmt, n, k)
            wb = dequantize(w).to(BF)
            for m in MS:
                if time.time() - t0 > CAP:
                    res["notes"] = f"stopped at the {CAP:.0f} s cap"
                    break
                x = torch.randn(m, k, device="cuda", dtype=BF)
                mma = [t for t in (us(lambda c=c: launch_mma4(x, w, c)) for c in wg.candidates(m, n, k, sms, fmt.startswith("int4")))
                       if t]
                row = {"format": fmt, "N": n, "K": k, "M": m, "bf16_us": us(lambda: x @ wb.T),
                       "mma4_best_us": min(mma) if mma else None, "dequant_us": us(lambda: wd.launch_dequant(x, w)),
                       "dequant_only_us": us(lambda: wd.dequantize_bf16(w))}
                if row["mma4_best_us"] and row["dequant_us"]:
                    row["dequant_over_mma4"] = row["mma4_best_us"] / row["dequant_us"]
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
    crossover = {}
    for fmt in FORMATS:
        wins = {m: all(r.get("dequant_over_mma4", 0) > 1 for r in res["rows"] if r["format"] == fmt and r["M"] == m)
                for m in MS if any(r["format"] == fmt and r["M"] == m for r in res["rows"])}
        from_m = [m for m in sorted(wins) if all(wins[mm] for mm in wins if mm >= m)]
        crossover[fmt] = from_m[0] if from_m else None
    res["crossover_min_m"] = crossover
    ratios = [r["dequant_over_mma4"] for r in res["rows"] if r.get("dequant_over_mma4")]
    res["geomean_dequant_over_mma4"] = geomean(ratios)
    print("crossover", crossover, "geomean", res["geomean_dequant_over_mma4"], flush=True)
    slug = re.sub(r"[^a-z0-9]+", "_", dev.lower()).strip("_")
    with open(os.path.join(OUT, f"dequant_probe_{slug}.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
