"""GPU probe of the warp-specialized MoE grouped GEMM (``kernels/moe_mm_ws.py``) against the Triton
grouped GEMM at the shipped table's config and against torch's grouped GEMMs, one run, H100.

First a check on every variant (fp8 / int8 / bf16 operands, silu / gpt-oss activation with bias, the down
GEMM with routing weights): the Gluon kernel's output against the Triton kernel's on the same operands
(relative error, bit-level agreement reported). Then timings of the gate_up GEMM at the bench_moe sizes
(``PROBE_TOKENS``, default 256 and 4096): torch (``_scaled_grouped_mm`` / ``_grouped_mm`` on pre-sorted
rows, as bench_moe), ours at the table config (Triton), ours Gluon on pre-sorted rows (the same input
torch gets) and Gluon with the sorted copy (``gather_sorted``) inside the timed call. Writes
$OUT/moe_ws_probe_<gpu>.json.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.bench_moe import MODELS, table_config  # noqa: E402
from bench.timing import graph_us as us  # noqa: E402
from quantc.runtime.kernels import moe_gemm as mg  # noqa: E402
from quantc.runtime.kernels import moe_mm_ws as ws  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.kernels.moe_routing import align_by_expert  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402

DEV, BF, F8 = "cuda", torch.bfloat16, torch.float8_e4m3fn
OUT = os.environ.get("OUT", "/tmp")
TOKENS = tuple(int(v) for v in os.environ.get("PROBE_TOKENS", "256,4096").split(","))
STAGES = tuple(int(v) for v in os.environ.get("PROBE_STAGES", "3,4").split(","))
CAP = float(os.environ.get("PROBE_CAP_S", "400"))
T0 = time.time()
res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "check": [], "rows": []}


def save():
    slug = re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    with open(os.path.join(OUT, f"moe_ws_probe_{slug}.json"), "w") as f:
        json.dump(res, f, indent=1)


def ws_call(a, sa, w: wf.WoWeight, routing, a_div, act, bias=None, topw=None, stages=4, pre_sorted=None):
    sorted_ids, block_expert, total, pairs = routing
    a_s = pre_sorted if pre_sorted is not None else ws.gather_sorted(a, sorted_ids, total, pairs, a_div)
    a_mode = 0 if sa is None else 2
    n_out = w.n // 2 if act else w.n
    return ws.moe_mm_ws(a_s, sa, w.data, w.scale if a.dtype != BF else None, bias, topw, sorted_ids, block_expert,
                        total, pairs, a_div, n_out, act, a_mode, num_stages=stages)


def check():
    torch.manual_seed(0)
    e, k, h, inter, t = 8, 2, 512, 384, 300
    ids = torch.rand(t, e, device=DEV).topk(k, dim=-1).indices.to(torch.int32)
    topw = torch.rand(t * k, device=DEV)
    routing = (*align_by_expert(ids, e, 128), t * k)
    cfg = C(128, 64, 64, 8, 4, 3)
    for dt, key in ((F8, "fp8"), (torch.int8, "int8"), (BF, "bf16")):
        for act, bias, down in ((1, False, False), (2, True, False), (0, False, True)):
            n, kk = (h, inter) if down else (2 * inter, h)
            wd = torch.randn(e, n, kk, device=DEV) * 0.05
            a = torch.randn(t * k if down else t, kk, device=DEV)
            if dt == BF:
                w = wf.WoWeight(wf.BF16, n, kk, wd.to(BF))
                aq, sa, code = a.to(BF), None, 0
            else:
                fmt = wf.FP8 if dt == F8 else wf.INT8
                qmax = 448.0 if dt == F8 else 127.0
                sw = wd.abs().amax(-1, keepdim=True) / qmax
                wq = (wd / sw).round().clamp(-127, 127).to(dt) if dt == torch.int8 else (wd / sw).to(dt)
                w = wf.WoWeight(fmt, n, kk, wq, sw.float().contiguous(), wf.S_FLOAT, kk, 1)
                sa = a.abs().amax(-1, keepdim=True) / qmax
                aq = (a / sa).round().clamp(-127, 127).to(dt) if dt == torch.int8 else (a / sa).to(dt)
                code = 1 if dt == F8 else 2
            b = torch.randn(e, n, device=DEV, dtype=BF) * 0.1 if bias else None
            tw = topw if down else None
            name = {0: "none", 1: "silu", 2: "gpt_oss"}[act]
            a_div = 1 if down else k
            ref = mg.grouped_gemm(aq, sa, w, routing, a_div=a_div, act=name, a_quant=code, a_group=0, cfg=cfg,
                                  bias=b, topk_weights=tw).float()
            try:
                got = ws_call(aq, sa, w, routing, a_div, act, b, tw).float()
                torch.cuda.synchronize()
                err = ((got - ref).norm() / ref.norm()).item()
                same = (got == ref).float().mean().item()
            except Exception as ex:  # noqa: BLE001 (a failing variant is reported, the probe goes on)
                err, same = float("nan"), 0.0
                print("ERR", key, name, type(ex).__name__, str(ex)[:300], flush=True)
            row = {"dtype": key, "act": name, "bias": bias, "down": down, "rel_err": err, "bits_equal": same,
                   "ok": err < 1e-2}
            res["check"].append(row)
            print("check", json.dumps(row), flush=True)
    save()


def bench():
    for name, (e, k, h, inter) in MODELS.items():
        w13 = torch.randn(e, 2 * inter, h, device=DEV, dtype=BF) * 0.02
        W13 = wf.WoWeight(wf.BF16, 2 * inter, h, w13)
        w13q = w13.to(F8)
        F13 = wf.WoWeight(wf.FP8, 2 * inter, h, w13q, torch.ones(e, 2 * inter, 1, device=DEV), wf.S_FLOAT, h, 1)
        for t in TOKENS:
            if time.time() - T0 > CAP:
                res.setdefault("notes", []).append(f"cap reached before {name} T={t}")
                save()
                return
            pairs = t * k
            ids = torch.rand(t, e, device=DEV).topk(k, dim=-1).indices.to(torch.int32)
            x = torch.randn(t, h, device=DEV, dtype=BF)
            flat = ids.reshape(-1).long()
            order = torch.argsort(flat, stable=True)
            offs = torch.cumsum(torch.bincount(flat, minlength=e), 0).to(torch.int32)
            xs = x[order // k].contiguous()
            xq, sx_tok = x.to(F8), torch.ones(t, 1, device=DEV)
            xsq = xs.to(F8)
            sx, sw = torch.ones(pairs, device=DEV), torch.ones(e, 2 * inter, device=DEV)
            row = {"model": name, "tokens": t}
            row["torch_scaled_grouped_mm_us"] = us(lambda: torch._scaled_grouped_mm(
                xsq, w13q.transpose(-2, -1), sx, sw, offs=offs, out_dtype=BF))
            row["torch_grouped_mm_us"] = us(lambda: torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs,
                                                                      out_dtype=BF))
            r128 = (*align_by_expert(ids, e, 128), pairs)
            for key, wt, xin, sxin, code in (("fp8", F13, xq, sx_tok, 1), ("bf16", W13, x, None, 0)):
                tc = table_config(f"moe_{key}", 2 * inter, h, t)
                r_tc = (*align_by_expert(ids, e, tc.block_m), pairs)
                row[f"{key}_table_us"] = us(lambda: mg.grouped_gemm(xin, sxin, wt, r_tc, a_div=k, act="silu",
                                                                    a_quant=code, a_group=0, cfg=tc))
                row[f"{key}_table_cfg"] = [tc.block_m, tc.block_n, tc.block_k, tc.num_warps, tc.num_stages]
                pre = ws.gather_sorted(xin, r128[0], r128[2], pairs, k)
                for st in STAGES:
                    if key == "bf16" and st > 4:
                        continue
                    row[f"{key}_ws{st}_us"] = us(lambda: ws_call(xin, sxin, wt, r128, k, 1, stages=st, pre_sorted=pre))
                st = max(s for s in STAGES if row.get(f"{key}_ws{s}_us")) if any(
                    row.get(f"{key}_ws{s}_us") for s in STAGES) else STAGES[-1]
                best = min((s for s in STAGES if row.get(f"{key}_ws{s}_us")), key=lambda s: row[f"{key}_ws{s}_us"],
                           default=st)
                row[f"{key}_ws_gather_us"] = us(lambda: ws_call(xin, sxin, wt, r128, k, 1, stages=best))
                row[f"{key}_gather_us"] = us(lambda: ws.gather_sorted(xin, r128[0], r128[2], pairs, k))
                peer = row["torch_scaled_grouped_mm_us" if key == "fp8" else "torch_grouped_mm_us"]
                for col in [c for c in list(row) if c.startswith(key) and c.endswith("_us") and c != f"{key}_gather_us"]:
                    if row[col] and peer:
                        row[col.replace("_us", "_over_torch")] = peer / row[col]
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
        del w13, W13, w13q, F13
        torch.cuda.empty_cache()
    g = {}
    for col in {c for r in res["rows"] for c in r if c.endswith("_over_torch")}:
        v = [r[col] for r in res["rows"] if r.get(col)]
        g[col] = math.exp(sum(map(math.log, v)) / len(v)) if v else None
    res["geomean"] = g
    print("geomean", json.dumps(g, indent=1), flush=True)
    save()


if __name__ == "__main__":
    check()
    bench()
    print("done in", time.time() - T0, flush=True)
