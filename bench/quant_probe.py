"""Sweep the activation quantizer's launch shape on a GPU (``act_quant.ONE_PASS_MAX``, ``ELEMS_PER_WARP``,
``MAX_WARPS``): per-token fp8 and int8 and group-128 fp8 at M = 1024, 4096 and 8192 over the bench K, as
a fraction of the copy bandwidth of the same run (with the hardware e4m3 cast, ``common.hw_cast``, and
the FMA division, ``common.fma_div``). bench/bench_quant.py is the reference benchmark; this picks its
defaults. Writes $OUT/quant_probe_<gpu>.json.

    python bench/quant_probe.py
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bandwidth import copy_gbps  # noqa: E402
from bench.timing import geomean, gpu_slug  # noqa: E402
from quantc.runtime.kernels import act_quant  # noqa: E402


def main() -> None:
    copy = copy_gbps()
    shapes = [(m, k) for m in (1024, 4096, 8192) for k in (2048, 4096, 7168, 14336)]
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for m, k in shapes]
    rows = []
    for key in ("fp8_dynamic_per_token", "int8_dynamic_per_token", "fp8_dynamic_group_128"):
        for one_pass, per_warp, max_warps in itertools.product((8192, 16384), (256, 512, 1024), (8, 16)):
            # per_warp: the per-token rows' (ROW_ELEMS_PER_WARP) and the group tiles' (ELEMS_PER_WARP) alike
            act_quant.ONE_PASS_MAX, act_quant.MAX_WARPS = one_pass, max_warps
            act_quant.ROW_ELEMS_PER_WARP = act_quant.ELEMS_PER_WARP = per_warp
            fr = []
            for x in xs:
                us = do_bench_cudagraph(lambda: act_quant.quantize_activation(x, key), rep=20) * 1e3
                fr.append(3 * x.numel() / us / 1e3 / copy)
            geo = geomean(fr)
            rows.append({"key": key, "one_pass_max": one_pass, "elems_per_warp": per_warp, "max_warps": max_warps,
                         "geomean": round(geo, 3), "worst": round(min(fr), 3), "frac_ref": [round(v, 3) for v in fr]})
            print(f"{key} one_pass<={one_pass} {per_warp}/warp max {max_warps} warps: geomean "
                  f"{geo:.3f} worst {min(fr):.3f} [{' '.join(f'{v:.2f}' for v in fr)}]", flush=True)
    gpu = torch.cuda.get_device_name()
    out = {"device": gpu, "copy_GBps": copy, "inputs": [f"{m}x{k}" for m, k in shapes], "rows": rows}
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"quant_probe_{gpu_slug(gpu)}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
