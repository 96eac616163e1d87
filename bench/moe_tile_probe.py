"""GPU probe of the fp8 MoE gate_up at prefill sizes (issue 12's 1.3x floor over ``_scaled_grouped_mm``): a
sweep of Triton tiles and Gluon (``moe_mm_ws``) variants at the bench_moe sizes, torch timed in the same run,
every variant checked against the table config's output first; and a single-variant mode to run under
Nsight Compute. Used to choose tiles and kernel changes; bench_moe.py is the reference benchmark.

    python bench/moe_tile_probe.py sweep   # env: PROBE_MODELS, PROBE_TOKENS (4096), PROBE_CAP_S
    ncu --clock-control none -k regex:moe python bench/moe_tile_probe.py one deepseek_v3 4096 triton:128,128,128,8,3
    ncu ... python bench/moe_tile_probe.py one deepseek_v3 4096 ws:128,3      # block_n, stages

Writes $OUT/moe_tile_probe_<device>.json (sweep).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.bench_moe import MODELS, table_config  # noqa: E402
from bench.timing import graph_us as us  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime.kernels import moe_gemm as mg  # noqa: E402
from quantc.runtime.kernels import moe_mm_ws as ws  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.kernels.moe_routing import align_by_expert  # noqa: E402

DEV, BF, F8 = "cuda", torch.bfloat16, torch.float8_e4m3fn
OUT = os.environ.get("OUT", "/tmp")
CAP = float(os.environ.get("PROBE_CAP_S", "450"))
T0 = time.time()

TRITON = [C(128, 128, 128, 8, 8, 3), C(128, 128, 128, 8, 8, 4), C(128, 128, 256, 8, 8, 2), C(128, 128, 256, 8, 8, 3),
          C(128, 64, 128, 8, 4, 4), C(128, 64, 256, 8, 4, 3), C(128, 64, 128, 8, 8, 5), C(64, 128, 128, 8, 4, 4),
          C(64, 128, 256, 8, 4, 3), C(128, 128, 128, 1, 8, 3)]
WS = [(128, 2), (128, 3), (64, 3), (64, 4), (64, 6)]


def operands(name: str, t: int):
    e, k, h, inter = MODELS[name]
    torch.manual_seed(0)
    w13q = (torch.randn(e, 2 * inter, h, device=DEV, dtype=BF) * 0.02).to(F8)
    sw = torch.rand(e, 2 * inter, 1, device=DEV) * 0.01 + 0.005
    w = wf.WoWeight(wf.FP8, 2 * inter, h, w13q, sw, wf.S_FLOAT, h, 1)
    ids = torch.rand(t, e, device=DEV).topk(k, dim=-1).indices.to(torch.int32)
    x = torch.randn(t, h, device=DEV, dtype=BF)
    xq, sx = x.to(F8), torch.rand(t, 1, device=DEV) * 0.01 + 0.005
    return dict(e=e, k=k, h=h, inter=inter, w=w, ids=ids, xq=xq, sx=sx, pairs=t * k)


def torch_call(o):
    """_scaled_grouped_mm on pre-sorted rows (as bench_moe)."""
    flat = o["ids"].reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=o["e"]), 0).to(torch.int32)
    xsq = o["xq"][order // o["k"]].contiguous()
    sx = o["sx"].reshape(-1)[order // o["k"]].contiguous()
    sw = o["w"].scale.reshape(o["e"], -1).contiguous()
    wt = o["w"].data.transpose(-2, -1)
    return lambda: torch._scaled_grouped_mm(xsq, wt, sx, sw, offs=offs, out_dtype=BF)


def variant_call(o, spec: str):
    kind, _, args = spec.partition(":")
    vals = [int(v) for v in args.split(",")]
    if kind == "triton":
        cfg = C(vals[0], vals[1], vals[2], vals[3], vals[4], vals[5])
        r = (*align_by_expert(o["ids"], o["e"], cfg.block_m), o["pairs"])
        return lambda: mg.grouped_gemm(o["xq"], o["sx"], o["w"], r, a_div=o["k"], act="silu", a_quant=1, a_group=0,
                                       cfg=cfg)
    block_n, stages = vals
    r = align_by_expert(o["ids"], o["e"], 128)
    pre = ws.gather_sorted(o["xq"], r[0], r[2], o["pairs"], o["k"])
    return lambda: ws.moe_mm_ws(pre, o["sx"], o["w"].data, o["w"].scale, None, None, r[0], r[1], r[2], o["pairs"],
                                o["k"], o["inter"], 1, 2, block_n=block_n, num_stages=stages)


def specs(name: str, t: int) -> list[str]:
    tc = table_config("moe_fp8", 2 * MODELS[name][3], MODELS[name][2], t)
    out = [f"triton:{tc.block_m},{tc.block_n},{tc.block_k},{tc.group_m},{tc.num_warps},{tc.num_stages}"]
    out += [f"triton:{c.block_m},{c.block_n},{c.block_k},{c.group_m},{c.num_warps},{c.num_stages}" for c in TRITON]
    out += [f"ws:{b},{s}" for b, s in WS]
    return list(dict.fromkeys(out))


def sweep():
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": [], "notes": []}
    slug = re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    path = os.path.join(OUT, f"moe_tile_probe_{slug}.json")
    models = os.environ.get("PROBE_MODELS", "deepseek_v3,gpt_oss_120b,mixtral_8x7b").split(",")
    tokens = [int(v) for v in os.environ.get("PROBE_TOKENS", "4096").split(",")]
    for name in models:
        for t in tokens:
            if time.time() - T0 > CAP:
                res["notes"].append(f"cap reached before {name} T={t}")
                break
            o = operands(name, t)
            row = {"model": name, "tokens": t, "torch_us": us(torch_call(o))}
            sp = specs(name, t)
            row["table"] = sp[0]
            want = variant_call(o, sp[0])().float()
            for s in sp:
                if time.time() - T0 > CAP:
                    res["notes"].append(f"cap reached in {name} T={t} at {s}")
                    break
                try:
                    fn = variant_call(o, s)
                    got = fn().float()
                except Exception as ex:  # noqa: BLE001 (a variant that does not compile is reported)
                    row[s] = {"error": f"{type(ex).__name__}: {str(ex)[:120]}"}
                    continue
                err = ((got - want).norm() / want.norm()).item()
                t_us = us(fn) if err < 1e-2 else None
                row[s] = {"us": t_us, "err": err, "over_torch": row["torch_us"] / t_us if t_us else None}
                print(name, t, s, row[s], flush=True)
            res["rows"].append(row)
            with open(path, "w") as f:
                json.dump(res, f, indent=1)
            del o
            torch.cuda.empty_cache()
    for row in res["rows"]:
        best = min((k for k in row if ":" in k and row[k].get("us")), key=lambda k: row[k]["us"], default=None)
        row["best"] = best
        print(row["model"], row["tokens"], "table", row[row["table"]].get("over_torch"), "best", best,
              row[best]["over_torch"] if best else None, flush=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def one(name: str, t: int, spec: str):
    o = operands(name, t)
    fn = variant_call(o, spec)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()


if __name__ == "__main__":
    if sys.argv[1] == "sweep":
        sweep()
    else:
        one(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    print("done in", round(time.time() - T0, 1), "s", flush=True)
