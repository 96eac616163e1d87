"""Mid-size M (16-256) of the dense W8A8 kernels on the GPU, where GemLite's A8W8 kernels win rows
(README, Dense GEMMs): our tile kernel over a grid of tiles, warps, stages and split-K against GemLite on
the same pre-quantized operands, in one run, weights rotated past L2 (each timed graph runs the layer
over enough weight copies to exceed 256 MB, shared/BENCH.md). Writes $OUT/midm_probe_<gpu>.json.

Env: PROBE_SHAPES ("4096x14336,..."), PROBE_MS ("64,256"), PROBE_KERNELS ("fp8,int8"), PROBE_CAP_S (500),
PROBE_GRID (base / wide / large: ``grid``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import peers_gemlite as PG  # noqa: E402
from bench.bandwidth import copy_gbps  # noqa: E402
from bench.timing import checked_graph_us, gpu_slug  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CAP = float(os.environ.get("PROBE_CAP_S", "500"))
SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ.get("PROBE_SHAPES", "4096x14336").split(",")]
MS = [int(v) for v in os.environ.get("PROBE_MS", "64,256").split(",")]
KINDS = os.environ.get("PROBE_KERNELS", "fp8,int8").split(",")
KEYS = {"fp8": ("fp8_per_channel", "fp8_dynamic_per_token"), "int8": ("int8_per_channel", "int8_dynamic_per_token")}
T0 = time.time()


def grid(m: int) -> list[C]:
    """PROBE_GRID=base: tiles up to the padded M, 128-256 deep, 4 stages; PROBE_GRID=wide: 64-128-row
    tiles 256-512 deep, 2-4 stages; PROBE_GRID=large: 64-256 x 64-256 tiles, 128-256 deep, 3-4 stages
    within 200 KB of operand stages, eight warps from 128 x 128 on. Split-K at M <= 64 (the runtime's
    limit); eight warps only for 64 x 128 tiles and larger."""
    if os.environ.get("PROBE_GRID", "base") == "large":  # M >= 256: up to 256 x 256 tiles, no split-K
        space = [(bm, bn, bk, w, st, 1) for bm, bn, bk, w, st in itertools.product(
                 (64, 128, 256), (64, 128, 256), (128, 256), (4, 8), (3, 4))
                 if bm <= m and (bm + bn) * bk * st <= 200 * 1024 and (w == 8) == (bm * bn >= 128 * 128)]
    elif os.environ.get("PROBE_GRID", "base") == "wide":
        space = itertools.product([b for b in (64, 128) if b <= max(64, m)], (32, 64, 128), (256, 512), (4, 8),
                                  (2, 3, 4), (1, 2, 4))
    else:
        space = itertools.product([b for b in (16, 32, 64, 128) if b <= max(16, m)], (32, 64, 128), (128, 256),
                                  (4, 8), (4,), (1, 2, 4, 8))
    out = [C(bm, bn, bk, 8, w, st, sk) for bm, bn, bk, w, st, sk in space]
    return [c for c in out if not (c.num_warps == 8 and c.block_m * c.block_n < 64 * 128)
            and (c.split_k == 1 or m <= 64)]


def main() -> None:
    dev = torch.cuda.get_device_name()
    ref = copy_gbps()
    out = {"device": dev, "torch": torch.__version__, "copy_GBps": ref, "rows": []}
    gl_err = PG.load()[1]
    for (n, k), m, kind in itertools.product(SHAPES, MS, KINDS):
        if time.time() - T0 > CAP:
            break
        wk, ak = KEYS[kind]
        copies = max(2, math.ceil(256e6 / (n * k)))
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        ws = [Q.quantize_weight(w, wk) for _ in range(copies)]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        xq, sx = quantize_activation(x, ak)
        want = x.float() @ w.float().T
        rec = {"N": n, "K": k, "M": m, "kind": kind, "copies": copies, "runs": []}
        out["rows"].append(rec)

        def timed(label, fn):
            us = checked_graph_us(label, fn, want)
            if us:
                gbps = copies * n * k / us / 1e3
                rec["runs"].append({"label": label, "us_per_layer": us / copies, "frac_ref": gbps / ref})

        for c in grid(m):
            timed(f"ours {dataclasses.astuple(c)}", lambda c=c: [scaled_mm(xq, t["weight"], t["weight_scale"], wk, ak, c,
                                                                           x_scale=sx) for t in ws])
        if not gl_err:
            peers = [PG.build(wk, t["weight"], t["weight_scale"]) for t in ws]
            if not peers[0].error:
                timed("gemlite kernel", lambda: [p.kernel(xq, sx) for p in peers])
        runs = sorted(rec["runs"], key=lambda r: r["us_per_layer"])
        gl = [r for r in runs if r["label"] == "gemlite kernel"]
        print(f"{n}x{k} M={m} {kind}: gemlite {gl[0]['us_per_layer'] if gl else float('nan'):.2f} us; best ours:", flush=True)
        for r in [r for r in runs if r["label"] != "gemlite kernel"][:6]:
            print(f"   {r['label']:40s} {r['us_per_layer']:8.2f} us {r['frac_ref']:.3f}", flush=True)
        del ws
        torch.cuda.empty_cache()
        json.dump(out, open(os.path.join(OUT, f"midm_probe_{gpu_slug(dev)}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
