"""Decode (M = 1) of the dense 8-bit layers on the GPU: the CUDA-core GEMV (``scaled_gemv``) over a config
grid against the 16-row tile kernel's table config and GemLite, with the weights rotated past L2 (each
timed graph runs the layer over enough weight copies to exceed 256 MB), all in one run (shared/BENCH.md).

Per shape: fp8 W8A8 on the pre-quantized activation (the kernel) over the whole grid; then, for the five
best GEMV configs, the fp8 module (bf16 in, the quantizer launched first), int8 W8A8 (kernel, module), fp8
weight-only, and the weight loads without the evict-first hint; the tile kernel at the table's M = 1
config for each; GemLite's fp8 / int8 layers (kernel on the same pre-quantized activation, and module).
Writes $OUT/gemv_probe_<gpu>.json; prints one line per measurement and a summary per shape.

Env: PROBE_SHAPES ("4096x14336,..."), PROBE_CAP_S (default 500), PROBE_WO_GRID=1 (fp8 weight-only over
the whole config grid too, not only the five best W8A8 configs), PROBE_GRID=tiny (``tiny_grid``: 1-4 rows
and 1-2 K steps a program, split-K over the rest, and the table's config, instead of GRID).
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
from bench.bench_dense import SHAPES  # noqa: E402
from bench.timing import checked_graph_us, gpu_slug, graph_us  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels import scaled_gemv  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402
from quantc.runtime.tables import default_config  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CAP = float(os.environ.get("PROBE_CAP_S", "500"))
WO_GRID = os.environ.get("PROBE_WO_GRID") == "1"
if os.environ.get("PROBE_SHAPES"):
    SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ["PROBE_SHAPES"].split(",")]
# prefetching configs over the grid, and the first probe's winners without the prefetch for reference
GRID = ([C(1, bn, bk, 8, 4, 2, sk) for bn, bk, sk in itertools.product((8, 16, 32), (256, 512, 1024), (1, 2, 4, 8, 16))]
        + [C(1, 8, 256, 8, 4, 1, 1), C(1, 8, 512, 8, 4, 1, 4), C(1, 16, 1024, 8, 4, 1, 1), C(1, 8, 512, 8, 4, 1, 1),
           C(1, 8, 512, 8, 4, 1, 8), C(1, 16, 256, 8, 4, 1, 8), C(1, 8, 256, 8, 4, 1, 4)])
# PROBE_GRID=tiny: GemLite's decode shape (one or a few weight rows and one or two K steps a program, many
# programs), through our split-K: the slices of a row tile meet on its counter and the last one sums them
TINY = os.environ.get("PROBE_GRID") == "tiny"


def tiny_grid(k: int) -> list[C]:
    out = []
    for bn, bk, w, st in itertools.product((1, 2, 4), (512, 1024, 2048), (1, 2, 4), (1, 2)):
        if not 1 <= bn * bk / (16 * 32 * w) <= 4 or bk > k:
            continue
        for steps in (1, 2):
            sk = math.ceil(k / (bk * steps))
            if sk > 1 and not (steps == 1 and st == 2):  # one step a slice: nothing to prefetch
                out.append(C(1, bn, bk, 8, w, st, sk))
    return out


# eight-warp programs (the weight-only winners of bench_dense) for the PROBE_WO_GRID sweep
WO_EXTRA = [C(1, bn, bk, 8, 8, st, sk) for bn, bk, st, sk in itertools.product((16, 32), (512, 1024), (1, 2), (1, 2, 4))]
T0 = time.time()


def table_config(kernel: str, n: int, k: int, m: int = 1) -> C:
    """The config the shipped H100 table gives this layer at M rows (the default where it has no row)."""
    from quantc.emit import load_tables, lookup

    tables = load_tables("h100", [])
    return lookup(tables, [], kernel, n, k, "probe").config_for(m) if tables else default_config(kernel, m)


def main() -> None:
    dev = torch.cuda.get_device_name()
    out = {"device": dev, "torch": torch.__version__, "copy_GBps": copy_gbps(), "shapes": []}
    ref = out["copy_GBps"]
    print(dev, "copy GB/s", round(ref), flush=True)
    gl_err = PG.load()[1]
    for n, k in SHAPES:
        if time.time() - T0 > CAP:
            break
        copies = max(2, math.ceil(256e6 / (n * k)))
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        f8 = [Q.quantize_weight(w, "fp8_per_channel") for _ in range(copies)]
        i8 = [Q.quantize_weight(w, "int8_per_channel") for _ in range(copies)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        xq, sx = quantize_activation(x, "fp8_dynamic_per_token")
        xi, sxi = quantize_activation(x, "int8_dynamic_per_token")
        want = (x.float() @ w.float().T)

        def layer(ws, wk, ak, cfg, pre=None, **kw):
            def run():
                return [scaled_mm(pre[0] if pre else x, t["weight"], t["weight_scale"], wk, ak, cfg,
                                  x_scale=pre[1] if pre else None, **kw) for t in ws]
            return run

        def timed(label, fn):
            us = checked_graph_us(label, fn, want)
            if us:
                gbps = copies * n * k / us / 1e3
                rec["runs"].append({"label": label, "us_per_layer": us / copies, "GBps": gbps, "frac_ref": gbps / ref})
                print(f"{n}x{k} {label:60s} {us / copies:8.2f} us {gbps:6.0f} GB/s {gbps / ref:.3f}", flush=True)
            return us

        rec = {"N": n, "K": k, "copies": copies, "runs": []}
        out["shapes"].append(rec)
        bf = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, math.ceil(256e6 / (2 * n * k))))]
        us = graph_us(lambda: [x @ b.T for b in bf])
        rec["bf16_us_per_layer"] = us / len(bf)
        del bf
        grid = {c: timed(f"gemv fp8 kernel {dataclasses.astuple(c)}", layer(f8, "fp8_per_channel", "fp8_dynamic_per_token", c, (xq, sx)))
                for c in (tiny_grid(k) + [table_config("fp8_scaled_gemm", n, k)] if TINY else GRID)}
        best = [c for c, _ in sorted(((c, t) for c, t in grid.items() if t), key=lambda p: p[1])[:5]]
        for kernel, wk, ak, ws, pre in (("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token", f8, (xq, sx)),
                                        ("int8_gemm", "int8_per_channel", "int8_dynamic_per_token", i8, (xi, sxi)),
                                        ("fp8_weight_only_gemm", "fp8_per_channel", "none", f8, None)):
            tc = table_config(kernel, n, k)
            timed(f"tile {kernel} kernel {dataclasses.astuple(tc)}", layer(ws, wk, ak, tc, pre))
            if ak != "none":
                timed(f"tile {kernel} module {dataclasses.astuple(tc)}", layer(ws, wk, ak, tc))
            for c in (GRID + WO_EXTRA if WO_GRID and kernel == "fp8_weight_only_gemm" else best):
                cfg = dataclasses.astuple(c)
                if kernel != "fp8_scaled_gemm":
                    timed(f"gemv {kernel} kernel {cfg}", layer(ws, wk, ak, c, pre))
                if ak != "none":
                    timed(f"gemv {kernel} module {cfg}", layer(ws, wk, ak, c))
        c = best[0] if best else None
        if c is not None:  # the evict-first hint on the weight loads, off
            real = scaled_gemv.launch
            scaled_gemv.launch = lambda *a, **kw: real(*a, **{**kw, "evict": ""})
            try:
                timed(f"gemv fp8_scaled_gemm kernel no-evict {dataclasses.astuple(c)}",
                      layer(f8, "fp8_per_channel", "fp8_dynamic_per_token", c, (xq, sx)))
            finally:
                scaled_gemv.launch = real
        if not gl_err:
            for tag, wk, ws, pre in (("fp8", "fp8_per_channel", f8, (xq, sx)), ("int8", "int8_per_channel", i8, (xi, sxi))):
                peers = [PG.build(wk, t["weight"], t["weight_scale"]) for t in ws]
                if peers[0].error:
                    print(peers[0].error, flush=True)
                    continue
                timed(f"gemlite {tag} kernel", lambda: [p.kernel(*pre) for p in peers])
                timed(f"gemlite {tag} module", lambda: [p.module(x) for p in peers])
        del f8, i8
        torch.cuda.empty_cache()
        json.dump(out, open(os.path.join(OUT, f"gemv_probe_{gpu_slug(dev)}.json"), "w"), indent=1)
    for rec in out["shapes"]:
        runs = rec["runs"]

        def best_of(prefix):
            rs = [r for r in runs if r["label"].startswith(prefix)]
            return min(rs, key=lambda r: r["us_per_layer"]) if rs else None

        print(f"\n{rec['N']}x{rec['K']}: bf16 {rec['bf16_us_per_layer']:.2f} us")
        for prefix in ("gemv fp8_scaled_gemm module", "tile fp8_scaled_gemm module",
                       "gemlite fp8 module", "gemv fp8 kernel", "tile fp8_scaled_gemm kernel", "gemlite fp8 kernel",
                       "gemv int8_gemm kernel", "tile int8_gemm kernel", "gemlite int8 kernel", "gemv int8_gemm module",
                       "gemlite int8 module", "gemv fp8_weight_only_gemm kernel", "tile fp8_weight_only_gemm kernel"):
            r = best_of(prefix)
            if r:
                print(f"  {prefix:40s} {r['us_per_layer']:8.2f} us  {r['frac_ref']:.3f} of copy  [{r['label']}]")
    json.dump(out, open(os.path.join(OUT, f"gemv_probe_{gpu_slug(dev)}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
