"""MoE layers of quantc against torch's grouped GEMMs, one run, one GPU (shared/BENCH.md rules).

Sizes (E experts, top-k, hidden H, expert width I): Qwen3-30B-A3B, DeepSeek-V3, gpt-oss-120b,
Mixtral-8x7B; tokens T = 1, 16, 256, 4096, uniformly random distinct experts per token.

- A correctness check first: QuantMoE for every MoE kernel id on a small layer against the per-expert
  plain-torch loop, on the GPU.
- gate_up grouped GEMM alone: ours (bf16, activation fused) vs ``torch._grouped_mm`` (no activation);
  ours fp8 per-channel W8A8 vs ``torch._scaled_grouped_mm`` rowwise, on the same pre-quantized operands;
  ours mxfp4 weight-only (bf16 activations) vs ``torch._grouped_mm`` in bf16, with its weight bytes/s
  (the 4-bit decode floor of issue 12), and the same through the nibble-plane path
  (``gate_up_ours_mxfp4_planes_*``, QUANTC_MOE_PLANES, where H is a multiple of 128) and, up to 256 pairs, on
  the grouped 4-bit GEMV (``gate_up_ours_mxfp4_gemv_*``: no activation; ``gate_up_ours_mxfp4_plane_mma_*`` the
  gate_up alone on wo_plane_mma's grouped launch, H a multiple of 128; ``layer_ours_mxfp4_wo_gemv_*``, the
  layer with QUANTC_MOE_GEMV=1; the layer's default column takes it on sm_90 while pairs <= experts, and
  ``layer_ours_mxfp4_wo_grouped_*`` is the grouped GEMM, QUANTC_MOE_GEMV=0 and QUANTC_MOE_PLANE_MMA=0;
  ``layer_ours_mxfp4_wo_plane_mma_*`` the layer on wo_plane_mma's grouped launch, QUANTC_MOE_PLANE_MMA=1, where H
  and I are multiples of 128: the default column takes it on sm_90 from max(32, experts) pairs to 16 an expert); at >= 2048 (token, expert) pairs the bf16 gate_up also with a
  few larger tiles (``gate_up_ours_bf16_best_*``): what a tuned tile reaches next to the default (from
  512 pairs the fp8 gate_up too, with 128-deep tiles: ``gate_up_ours_fp8_best_*``); and
  bf16 and fp8 at the config the runtime runs (``gate_up_ours_{bf16,fp8}_table_*``: the compiler's
  lookup in the shipped kernels/<gpu>.json for the shape, the runtime's pick for the token count; the
  fixed config gives fp8 64-wide K steps), the fp8 one also with the K term of its load masks kept
  (``gate_up_ours_fp8_masked_k_*``, QUANTC_MOE_EVEN_K=0), and the fp8 gate_up on the Gluon grouped GEMM at
  128- and 64-row blocks, its sorted copy of the rows included (``gate_up_ours_fp8_ws{128,64}_*``).
- The fp8 gate_up as the layer runs it (``gate_up_ours_fp8_shipped_*``: the table's tile or, where the rule
  routes it, the Gluon kernel at 128-row blocks); ``summary``: its geomean over ``_scaled_grouped_mm``.
- The floor's reference for the bf16 gate_up: a dense bf16 GEMM of equal FLOPs in the same run
  (``dense_bf16_*``), and the bound the weight bytes set (``bandwidth.moe_roofline``: active experts' weights, tokens
  and output read or written once at the copy bandwidth measured in the same run).
- The whole expert path (sorting, gate_up + activation, down, weighted sum) as apply() runs it (the shipped
  table's tiles; the gate_up on the Gluon grouped GEMM where ``ws_block_m``'s default rule routes it): ours
  bf16, mxfp4 weight-only, fp8 and int8 W8A8 (activation quantization
  included), vs a torch path of ``_grouped_mm`` gate_up, SiLU-and-mul, ``_grouped_mm`` down, weighted sum
  (its sorting not timed); the switched paths beside them: bf16 / fp8 / int8 on the Triton kernels alone
  (``layer_ours_*_ws0_*``), on the Gluon grouped GEMM
  (``layer_ours_*_ws128_*``, ``_ws64_*``: QUANTC_MOE_WS; ``_wsup_*``: the gate_up alone on it, the down GEMM
  on the table's Triton tile at 128-row blocks, at every size) and mxfp4 dequantized to bf16 first at every size
  (``layer_ours_mxfp4_wo_dequant_*``: QUANTC_MOE_DEQUANT_MIN_PAIRS=0, within its 2 GiB cap) or never
  (``layer_ours_mxfp4_wo_bytes_*``; the default column takes the dequant path from 1024 pairs an expert), and
  bf16 / fp8 with their pairs sorted by the torch ops (``layer_ours_*_torch_sort_us``,
  QUANTC_MOE_ALIGN_KERNEL=0; the default sorts up to 1024 pairs in one Triton launch). The check
  runs each opt-in path on the small layer too (the torch sort bit for bit), and every path with
  transformers' dtypes (int64 ids, bf16 weights) against int32 ids and fp32 weights, bit for bit.
- The router: the whole QuantMoE forward (router GEMM, softmax / top-k / renormalisation, experts) for
  bf16 and fp8 with the one-launch router (``layer_routed_ours_*_us``) and with the torch ops
  (``_torch_router_us``, QUANTC_MOE_ROUTER_KERNEL=0); transformers' Qwen3 router alone as apply() replaces
  it (``router_ours_us``: QuantRouter, one launch after the GEMM) and as transformers computes it
  (``router_torch_us``); on the DeepSeek-V3 row the router columns take its group-limited rule (8 groups,
  4 kept, fp32 logits), the layer columns softmax_topk as every row. The check compares the router
  kernels with the torch rules on the GPU.
All inside CUDA graphs. Weight bytes count the experts that received at least one token.

Env: BENCH_CAP_S (default 240), BENCH_MODELS ("mixtral_8x7b,..."), BENCH_TOKENS ("256,4096"), OUT.
Writes $OUT/moe_<device>.json.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime.kernels import moe_gemm as mg  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.kernels.moe_routing import ALIGN_KERNEL_MAX_PAIRS, align_by_expert  # noqa: E402
from quantc.runtime.kernels.wo_gemv import gemv_config, grid_sms, launch_moe_gemv  # noqa: E402
from quantc.runtime.kernels.wo_plane_mma import launch_plane_mma_grouped, moe_tokens  # noqa: E402
from quantc.runtime.hf_moe import QuantRouter  # noqa: E402
from quantc.runtime.moe import QuantMoE  # noqa: E402
from bench.bandwidth import copy_gbps, moe_roofline  # noqa: E402
from bench.timing import env_set, graph_us as us  # noqa: E402

T0 = time.time()
CAP = float(os.environ.get("BENCH_CAP_S", "240"))
OUT = os.environ.get("OUT", "/tmp")
BF, F8 = torch.bfloat16, torch.float8_e4m3fn
DEV = "cuda"
MODELS = {"qwen3_30b_a3b": (128, 8, 2048, 768), "deepseek_v3": (256, 8, 7168, 2048),
          "gpt_oss_120b": (128, 4, 2880, 2880), "mixtral_8x7b": (8, 2, 4096, 14336)}
TOKENS = (1, 16, 256, 4096)
res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
             "timing": "CUDA graphs (do_bench_cudagraph); no L2 rotation", "check": [], "rows": [], "notes": []}


def fp8_summary(rows: list) -> dict:
    """Issue 12's fp8 floor: the geomean over the rows of ``_scaled_grouped_mm``'s time over our fp8 gate_up's
    as the layer runs it (``gate_up_ours_fp8_shipped_*``), and over the table's Triton tile's."""
    out = {}
    for col in ("gate_up_ours_fp8_shipped_over_torch", "gate_up_ours_fp8_table_over_torch"):
        vals = [r[col] for r in rows if r.get(col)]
        if vals:
            out[col] = {"geomean": math.exp(sum(map(math.log, vals)) / len(vals)), "rows": len(vals)}
    return out


def save():
    res["summary"] = fp8_summary(res["rows"])
    slug = re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    with open(os.path.join(OUT, f"moe_{slug}.json"), "w") as f:
        json.dump(res, f, indent=1)


def config(pairs: int) -> C:
    if pairs <= 64:
        return C(16, 64, 128, 8, 4, 3)
    if pairs <= 2048:
        return C(32, 128, 64, 8, 4, 3)
    return C(64, 128, 64, 8, 8, 3)


_TABLES: list = []  # the live GPU, its shipped kernel tables and the H100 fallback (if another GPU), read once


# the keys each MoE kernel id runs here (what the compiler's shared-memory fit counts)
KERNEL_KEYS = {"moe_bf16": ("none", "none"), "moe_weight_only": ("mxfp4", "none"),
               "moe_fp8": ("fp8_per_channel", "fp8_dynamic_per_token"), "moe_int8": ("int8_per_channel", "int8_dynamic_per_token")}


def table_config(kernel: str, n: int, k: int, tokens: int) -> C:
    """The config apply() runs for this GEMM: the compiler's table lookup for (kernel, N, K) as
    ``quantc.lower`` makes it (``quantc.emit.lookup``: this GPU's table, then the H100 table for a GPU
    without rows of its own; the exact row, else the nearest tuned shape, else the defaults; fitted to the
    GPU's shared memory) and the runtime's bucket pick for ``tokens``."""
    from quantc.emit import lookup, smem_fit, tables_and_fallback
    from quantc.gpus import gpu_from_device_name
    from quantc.runtime.tables import bucket_lookup, pick

    if not _TABLES:
        gpu = gpu_from_device_name(res["device"], torch.cuda.get_device_capability())
        _TABLES.extend([gpu, *tables_and_fallback(gpu.table)])
    gpu, tables, fallback = _TABLES
    fit = smem_fit(gpu, kernel, *KERNEL_KEYS.get(kernel, ("none", "none")))
    return pick(*bucket_lookup(lookup(tables, fallback, kernel, n, k, kernel, gpu.name, fit).buckets), tokens)


# tried on the bf16 gate_up at >= 2048 (token, expert) pairs next to the default tile: what the kernel
# reaches with a tile chosen for the load (the token-count defaults pick 64 x 128)
LARGE_TILES = [C(128, 128, 64, 8, 8, 3), C(128, 256, 64, 8, 8, 3), C(64, 256, 64, 8, 8, 3), C(128, 128, 64, 8, 4, 4)]
# and for the fp8 gate_up (1-byte operands: 128-deep steps move 128-byte rows), where torch's
# _scaled_grouped_mm leads at 256-4096 tokens on the large experts (``gate_up_ours_fp8_best_*``)
LARGE_TILES_FP8 = [C(128, 128, 128, 8, 8, 3), C(128, 256, 128, 8, 8, 3), C(64, 256, 128, 8, 8, 3),
                   C(64, 128, 128, 8, 4, 4), C(128, 128, 64, 8, 8, 4)]
WS_LAYERS = ("bf16", "fp8_w8a8", "int8_w8a8")  # the expert layers the Gluon grouped GEMM can run
if os.environ.get("BENCH_MODELS"):
    MODELS = {k: v for k, v in MODELS.items() if k in os.environ["BENCH_MODELS"].split(",")}
if os.environ.get("BENCH_TOKENS"):
    TOKENS = tuple(int(v) for v in os.environ["BENCH_TOKENS"].split(","))


def best_tile(row: dict, key: str, tiles: list, ids, experts: int, pairs: int, run) -> None:
    """Time ``run(tile, routing)`` for each tile, the routing aligned to its BLOCK_M outside the timed
    call; the fastest goes to ``gate_up_ours_<key>_best_us`` / ``_cfg``."""
    for alt in tiles:
        routing = (*align_by_expert(ids, experts, alt.block_m), pairs)
        t_alt = us(lambda: run(alt, routing))
        if t_alt and t_alt < (row.get(f"gate_up_ours_{key}_best_us") or float("inf")):
            row[f"gate_up_ours_{key}_best_us"] = t_alt
            row[f"gate_up_ours_{key}_best_cfg"] = [alt.block_m, alt.block_n, alt.block_k, alt.num_warps, alt.num_stages]


@contextmanager
def _path_env(label: str, name: str, value: str):
    """The check's switch for one path; the GEMV, grouped and dequant paths with wo_plane_mma's default rule off
    (it takes the check's 74 pairs on sm_90), the dequant one with the GEMV off too."""
    with env_set(name, value), \
            env_set("QUANTC_MOE_PLANE_MMA", "0") if label in ("dequant", "gemv", "grouped") else nullcontext(), \
            env_set("QUANTC_MOE_GEMV", "0") if label == "dequant" else nullcontext():
        yield


def check():
    torch.manual_seed(0)
    e, k, h, i, t = 8, 2, 256, 256, 37
    cases = [("moe_bf16", "none", "none", "silu"), ("moe_weight_only", "int4_group_128", "none", "silu"),
             ("moe_weight_only", "mxfp4", "none", "gpt_oss"), ("moe_weight_only", "nvfp4", "none", "silu"),
             ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token", "silu"),
             ("moe_fp8_block", "fp8_block_128x128", "fp8_dynamic_group_128", "silu"),
             ("moe_int8", "int8_per_channel", "int8_dynamic_per_token", "silu"),
             ("moe_mxfp4_mxfp8_emulated", "mxfp4", "mxfp8", "gpt_oss"), ("moe_mxfp8_emulated", "mxfp8", "mxfp8", "silu")]
    from quantc.runtime import quantize as qz

    for kernel, wkey, akey, act in cases:
        w13 = wf.quantize(torch.randn(e, 2 * i, h, device=DEV) * 0.1, wkey)
        w2 = wf.quantize(torch.randn(e, h, i, device=DEV) * 0.1, wkey)
        moe = QuantMoE(kernel, w13, w2, torch.randn(e, h, device=DEV, dtype=BF), top_k=k, activation=act,
                       act_key=akey, router="gpt_oss" if act == "gpt_oss" else "softmax_topk")
        x = torch.randn(t, h, device=DEV, dtype=BF)
        out = moe(x).float()
        tw, ids = moe.route(x)
        if akey == "none":
            dq = None
        elif akey == "mxfp8":
            def dq(v):
                q, s = qz.quant_mx(v.float(), 32)
                return q.float() * qz.e8m0_to_float(s).repeat_interleave(32, 1)
        else:
            def dq(v, quant=qz.ACTIVATION_QUANTIZERS[akey], g=akey == "fp8_dynamic_group_128"):
                q, s = quant(v.float())
                return q.float() * (s.repeat_interleave(128, 1) if g else s)
        ref = mg.reference_expert_loop(x, w13, w2, tw, ids, act, act_dq=dq)
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        res["check"].append({"kernel": kernel, "weight": wkey, "act": akey, "rel_err": err, "ok": err < 4e-2})
        # the same layer down the opt-in paths: 4-bit experts dequantized first, the Gluon grouped GEMM
        variants = ([("dequant", "QUANTC_MOE_DEQUANT_MIN_PAIRS", "0"), ("gemv", "QUANTC_MOE_GEMV", "1"),
                     ("grouped", "QUANTC_MOE_GEMV", "0"), ("plane_mma", "QUANTC_MOE_PLANE_MMA", "1")]
                    if kernel == "moe_weight_only" else [])
        if kernel in ("moe_bf16", "moe_fp8", "moe_int8"):
            variants += [(f"ws{rows}", "QUANTC_MOE_WS", rows) for rows in ("128", "64", "up")]
        # the token sort with the torch ops (the one-launch kernel is the default up to 1024 pairs): the same
        # bits, so the layer's output too
        variants.append(("torch_sort", "QUANTC_MOE_ALIGN_KERNEL", "0"))
        for label, name, value in variants:
            with _path_env(label, name, value):
                got = moe(x).float()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            ok = err < 4e-2 and (label != "torch_sort" or torch.equal(got, out))
            res["check"].append({"kernel": f"{kernel}/{label}", "weight": wkey, "act": akey, "rel_err": err, "ok": ok})
        # as transformers calls the experts (QuantExperts): int64 ids and bf16 weights, taken as they come,
        # give the bits of int32 ids and the weights' fp32 copy, on every path of this kernel id
        tw16 = tw.bfloat16()
        for label, name, value in [("", "QUANTC_MOE_WS", "0")] + variants:
            with _path_env(label, name, value):
                want = moe.experts(x, tw16.float(), ids.to(torch.int32))
                got = moe.experts(x, tw16, ids.to(torch.int64))
            res["check"].append({"kernel": f"{kernel}/{label or 'default'}/hf_dtypes", "weight": wkey, "act": akey,
                                 "rel_err": ((got.float() - want.float()).abs().max() / want.float().abs().max()).item(),
                                 "ok": torch.equal(got, want)})
    # the one-launch router against the torch routers: distinct fp32 logits (no ties), ids exactly, weights
    # to fp32 rounding (the GPU's exp is not torch's)
    from quantc.runtime.kernels import moe_routing as mr

    for tt, kk, ng, tg in ((1, 8, 8, 4), (300, 8, 8, 4), (16, 6, 4, 2)):  # deepseek_v3's rule: the same experts
        logits = (torch.randperm(tt * 256, device=DEV).view(tt, 256).float() / (tt * 256) * 16 - 8)
        bias = torch.randn(256, device=DEV) * 0.1
        w, i = mr.deepseek_v3(logits, kk, bias, ng, tg, 2.5)
        w_ref, i_ref = mr.deepseek_v3_torch(logits, kk, bias, ng, tg, 2.5)
        i, i_ref = i.long(), i_ref.long()  # both by expert: the torch rule's order is topk's
        w, w_ref = w.gather(1, i.argsort(1)), w_ref.gather(1, i_ref.argsort(1))
        same = torch.equal(i.sort(1).values, i_ref.sort(1).values)
        err = ((w - w_ref).abs().max() / w_ref.abs().max()).item()
        res["check"].append({"kernel": "router/deepseek_v3", "weight": f"T{tt}E256k{kk}", "act": "none",
                             "rel_err": err, "ok": same and err < 1e-5})
    for name, kw in (("softmax_topk", {"renormalize": True}), ("softmax_topk", {"renormalize": False}), ("gpt_oss", {})):
        for tt, ee, kk in ((1, 128, 8), (16, 8, 2), (300, 128, 4), (5, 256, 8)):
            logits = (torch.randperm(tt * ee, device=DEV).view(tt, ee).float() / (tt * ee) * 16 - 8)
            w, i = mr.ROUTERS[name](logits, kk, **kw)
            with env_set("QUANTC_MOE_ROUTER_KERNEL", "0"):
                w_ref, i_ref = mr.ROUTERS[name](logits, kk, **kw)
            err = ((w - w_ref).abs().max() / w_ref.abs().max()).item()
            res["check"].append({"kernel": f"router/{name}{'' if kw.get('renormalize', True) else '/no_renorm'}",
                                 "weight": f"T{tt}E{ee}k{kk}", "act": "none", "rel_err": err,
                                 "ok": torch.equal(i, i_ref) and err < 1e-5})
    print("moe check", [(c["kernel"], c["weight"], round(c["rel_err"], 4)) for c in res["check"]], flush=True)
    bad = [(c["kernel"], c["weight"]) for c in res["check"] if not c["ok"]]
    print(f"moe check FAILED: {bad}" if bad else f"moe check: all {len(res['check'])} ok", flush=True)
    save()


def bench():
    res["copy_GBps"] = copy_gbps()
    for name, (e, k, h, inter) in MODELS.items():
        w13 = torch.randn(e, 2 * inter, h, device=DEV, dtype=BF) * 0.02
        w2 = torch.randn(e, h, inter, device=DEV, dtype=BF) * 0.02
        W13 = wf.WoWeight(wf.BF16, 2 * inter, h, w13)
        W2 = wf.WoWeight(wf.BF16, h, inter, w2)
        w13q, w2q = w13.to(F8), w2.to(F8)  # unit scales: speed only
        s13, s2 = torch.ones(e, 2 * inter, 1, device=DEV), torch.ones(e, h, 1, device=DEV)
        F13 = wf.WoWeight(wf.FP8, 2 * inter, h, w13q, s13, wf.S_FLOAT, h, 1)
        F2 = wf.WoWeight(wf.FP8, h, inter, w2q, s2, wf.S_FLOAT, inter, 1)
        I13 = wf.WoWeight(wf.INT8, 2 * inter, h, torch.randint(-127, 128, (e, 2 * inter, h), device=DEV,
                                                               dtype=torch.int8), s13 / 127, wf.S_FLOAT, h, 1)
        I2 = wf.WoWeight(wf.INT8, h, inter, torch.randint(-127, 128, (e, h, inter), device=DEV, dtype=torch.int8),
                         s2 / 127, wf.S_FLOAT, inter, 1)
        M13 = wf.WoWeight(wf.MXFP4, 2 * inter, h, torch.randint(-2**31, 2**31 - 1, (e, 2 * inter, h // 8), device=DEV,
                                                                   dtype=torch.int32),
                          torch.randint(118, 124, (e, 2 * inter, h // 32), device=DEV, dtype=torch.uint8), wf.S_E8M0, 32)
        M2 = wf.WoWeight(wf.MXFP4, h, inter, torch.randint(-2**31, 2**31 - 1, (e, h, inter // 8), device=DEV,
                                                           dtype=torch.int32),
                         torch.randint(118, 124, (e, h, inter // 32), device=DEV, dtype=torch.uint8), wf.S_E8M0, 32)
        router = torch.randn(e, h, device=DEV, dtype=BF)
        def tables(kid, n=2 * inter, kk=h):  # the configs apply() gives the layer: the shipped table's rows
            return lambda tokens: (table_config(kid, n, kk, tokens), table_config(kid, kk, inter, tokens))

        moes = {"bf16": QuantMoE("moe_bf16", W13, W2, router, top_k=k, configs=tables("moe_bf16")),
                "mxfp4_wo": QuantMoE("moe_weight_only", M13, M2, router, top_k=k, configs=tables("moe_weight_only")),
                "fp8_w8a8": QuantMoE("moe_fp8", F13, F2, router, top_k=k, act_key="fp8_dynamic_per_token",
                                     configs=tables("moe_fp8")),
                "int8_w8a8": QuantMoE("moe_int8", I13, I2, router, top_k=k, act_key="int8_dynamic_per_token",
                                      configs=tables("moe_int8"))}
        for t in TOKENS:
            if time.time() - T0 > CAP:
                res["notes"].append(f"time cap reached before {name} T={t}")
                save()
                return
            pairs = t * k
            ids = torch.rand(t, e, device=DEV).topk(k, dim=-1).indices.to(torch.int32)
            tw = torch.softmax(torch.randn(t, k, device=DEV), -1)
            x = torch.randn(t, h, device=DEV, dtype=BF)
            cfg = config(pairs)
            sorted_ids, block_expert, total = align_by_expert(ids, e, cfg.block_m)
            routing = (sorted_ids, block_expert, total, pairs)
            # torch peer operands: rows sorted by expert
            flat = ids.reshape(-1).long()
            order = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=e)
            offs = torch.cumsum(counts, 0).to(torch.int32)
            xs = x[order // k].contiguous()
            xq = xs.to(F8)
            sx, sw = torch.ones(pairs, device=DEV), torch.ones(e, 2 * inter, device=DEV)
            row = {"model": name, "E": e, "top_k": k, "H": h, "I": inter, "tokens": t,
                   "active_experts": int((counts > 0).sum()), "cfg": [cfg.block_m, cfg.block_n, cfg.block_k]}
            row["gate_up_torch_grouped_mm_us"] = us(lambda: torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs,
                                                                               out_dtype=BF))
            row["gate_up_ours_bf16_us"] = us(lambda: mg.grouped_gemm(x, None, W13, routing, a_div=k, act="silu",
                                                                     a_quant=0, a_group=0, cfg=cfg))
            if pairs >= 2048:  # larger tiles when each expert gets hundreds of rows (Mixtral: 8 experts)
                best_tile(row, "bf16", LARGE_TILES, ids, e, pairs, lambda alt, r: mg.grouped_gemm(
                    x, None, W13, r, a_div=k, act="silu", a_quant=0, a_group=0, cfg=alt))
            row["gate_up_torch_scaled_grouped_mm_us"] = us(lambda: torch._scaled_grouped_mm(
                xq, w13q.transpose(-2, -1), sx, sw, offs=offs, out_dtype=BF))
            xq_tok, sx_tok = x.to(F8), torch.ones(t, 1, device=DEV)
            row["gate_up_ours_fp8_us"] = us(lambda: mg.grouped_gemm(xq_tok, sx_tok, F13, routing, a_div=k, act="silu",
                                                                    a_quant=1, a_group=0, cfg=cfg))
            if pairs >= 512:
                best_tile(row, "fp8", LARGE_TILES_FP8, ids, e, pairs, lambda alt, r: mg.grouped_gemm(
                    xq_tok, sx_tok, F13, r, a_div=k, act="silu", a_quant=1, a_group=0, cfg=alt))
            # the same two kernels at the shipped table's config for this shape and token count (what
            # apply() runs; the fixed ``config`` above gives fp8 the bf16 tile's 64-wide K steps)
            for kid, wt, key, aq, xin, sxin in (("moe_bf16", W13, "bf16", 0, x, None),
                                                ("moe_fp8", F13, "fp8", 1, xq_tok, sx_tok)):
                tc = table_config(kid, 2 * inter, h, t)
                r_tc = (*align_by_expert(ids, e, tc.block_m), pairs)
                row[f"gate_up_ours_{key}_table_us"] = us(lambda: mg.grouped_gemm(
                    xin, sxin, wt, r_tc, a_div=k, act="silu", a_quant=aq, a_group=0, cfg=tc))
                row[f"gate_up_ours_{key}_table_cfg"] = [tc.block_m, tc.block_n, tc.block_k, tc.num_warps, tc.num_stages]
                if key == "fp8" and h % tc.block_k == 0:  # the same call with the K term of the load masks kept
                    with env_set("QUANTC_MOE_EVEN_K", "0"):
                        row["gate_up_ours_fp8_masked_k_us"] = us(lambda: mg.grouped_gemm(
                            xin, sxin, wt, r_tc, a_div=k, act="silu", a_quant=aq, a_group=0, cfg=tc))
            # the fp8 gate_up on the Gluon grouped GEMM at 128- and 64-row routing blocks, the sorted copy of
            # the rows included (what apply() runs where ``ws_block_m`` routes it)
            for rows in (128, 64):
                r_ws = (*align_by_expert(ids, e, rows), pairs)
                row[f"gate_up_ours_fp8_ws{rows}_us"] = us(lambda: mg.grouped_gemm(
                    xq_tok, sx_tok, F13, r_ws, a_div=k, act="silu", a_quant=1, a_group=0,
                    cfg=C(rows, 128, 128, 8, 4, 3), ws=True))
            # the fp8 gate_up as the layer runs it: on the Gluon kernel where the default rule routes it there
            with env_set("QUANTC_MOE_WS", None):
                on_ws = mg.ws_block_m(x.device, [F13], 1, 0, e, pairs) == 128
            row["gate_up_ours_fp8_shipped"] = "ws128" if on_ws else "table"
            row["gate_up_ours_fp8_shipped_us"] = row["gate_up_ours_fp8_ws128_us" if on_ws else "gate_up_ours_fp8_table_us"]
            row["gate_up_ours_mxfp4_us"] = us(lambda: mg.grouped_gemm(x, None, M13, routing, a_div=k, act="silu",
                                                                      a_quant=0, a_group=0, cfg=cfg))
            if h % 128 == 0:  # the nibble-plane path (opt-in, K a multiple of 128), same operands
                with env_set("QUANTC_MOE_PLANES", "1"):
                    row["gate_up_ours_mxfp4_planes_us"] = us(lambda: mg.grouped_gemm(
                        x, None, M13, routing, a_div=k, act="silu", a_quant=0, a_group=0, cfg=cfg))
            if h % 64 == 0 and pairs <= 256:  # the grouped GEMV (decode; K = 2880 at 64-deep steps): the gate_up alone
                flat_ids = ids.reshape(-1).contiguous()
                gemv_cfg = gemv_config(pairs * M13.n, M13.k, grid_sms(x.device), grouped=True)  # as QuantMoE picks
                row["gate_up_ours_mxfp4_gemv_us"] = us(lambda: launch_moe_gemv(x, M13, flat_ids, k, *gemv_cfg))
            if h % 64 == 0:  # wo_plane_mma's grouped launch (the default from max(32, E) pairs to 16 an expert): the
                # gate_up alone, its routing blocks as QuantMoE sorts them
                tok = moe_tokens(pairs, e)
                pm_ids, pm_blocks, _ = align_by_expert(ids, e, tok)
                row["gate_up_ours_mxfp4_plane_mma_us"] = us(lambda: launch_plane_mma_grouped(
                    x, M13, pm_ids, pm_blocks, pairs, k, tok))

            def torch_layer():
                g = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs, out_dtype=BF)
                a = torch.nn.functional.silu(g[:, :inter]) * g[:, inter:]
                y = torch._grouped_mm(a, w2.transpose(-2, -1), offs=offs, out_dtype=BF)
                out = torch.zeros(pairs, h, device=DEV, dtype=torch.float32)
                out.index_copy_(0, order, y.float() * tw.reshape(-1)[order, None])
                return out.view(t, k, h).sum(1)

            # the floor's reference: a dense bf16 GEMM of the same FLOPs (all pairs' rows against one weight)
            row["dense_bf16_equal_flops_us"] = us(lambda: xs @ w13[0].t())
            row["layer_torch_bf16_us"] = us(torch_layer)
            # the layers on the Triton grouped GEMM (QUANTC_MOE_WS=0), and bf16 / fp8 / int8 on the Gluon one
            # at 128- and 64-row blocks (moe_mm_ws with the sorted copies of the rows; ``ws_block_m``'s rule)
            # (None: QUANTC_MOE_WS unset, ``ws_block_m``'s default rule, what apply() runs: the main column)
            for mode, keys in ((None, moes), ("0", WS_LAYERS), ("128", WS_LAYERS), ("64", WS_LAYERS),
                               ("up", WS_LAYERS)):
                with env_set("QUANTC_MOE_WS", mode):
                    for key in keys:
                        col = f"layer_ours_{key}_us" if mode is None else f"layer_ours_{key}_ws{mode}_us"
                        row[col] = us(lambda m=moes[key]: m.experts(x, tw, ids))
            if pairs <= ALIGN_KERNEL_MAX_PAIRS:  # the pairs sorted by the torch ops (the kernel is the default)
                with env_set("QUANTC_MOE_ALIGN_KERNEL", "0"):
                    for key in ("bf16", "fp8_w8a8"):
                        row[f"layer_ours_{key}_torch_sort_us"] = us(lambda m=moes[key]: m.experts(x, tw, ids))
            # the router too: QuantMoE.forward (router GEMM, softmax / top-k / renormalisation, experts) with the
            # one-launch router and with the torch ops; and transformers' Qwen3 router alone (QuantRouter,
            # bf16 weights, int64 ids) both ways
            xr = x.view(t, h)
            for key in ("bf16", "fp8_w8a8"):
                for switch, col in (("1", f"layer_routed_ours_{key}_us"), ("0", f"layer_routed_ours_{key}_torch_router_us")):
                    with env_set("QUANTC_MOE_ROUTER_KERNEL", switch):
                        row[col] = us(lambda m=moes[key]: m(xr))
            if name == "deepseek_v3":  # its group-limited router (fp32 logits), as transformers has it
                hf_router = QuantRouter("gate", SimpleNamespace(
                    weight=torch.nn.Parameter(router.float(), requires_grad=False), top_k=k, hidden_dim=h,
                    e_score_correction_bias=torch.randn(e, device=DEV) * 0.1, num_group=8, topk_group=4,
                    routed_scaling_factor=2.5), "deepseek_v3", renormalize=True, cast=False)
            else:
                hf_router = QuantRouter("gate", SimpleNamespace(weight=torch.nn.Parameter(router, requires_grad=False),
                                                                top_k=k, hidden_dim=h), "softmax_topk",
                                        renormalize=True, cast=True)
            for switch, col in (("1", "router_ours_us"), ("0", "router_torch_us")):
                with env_set("QUANTC_MOE_ROUTER_KERNEL", switch):
                    row[col] = us(lambda: hf_router(xr))
            # the 4-bit layer off the GEMV (the default takes decode on sm_90 while pairs <= experts): the grouped
            # GEMM, dequantized to bf16 first at every size, and on the byte path at every size
            for col, env_name, value in (("grouped", None, None), ("dequant", "QUANTC_MOE_DEQUANT_MIN_PAIRS", "0"),
                                         ("bytes", "QUANTC_MOE_DEQUANT_MIN_PAIRS", str(1 << 40))):
                with env_set("QUANTC_MOE_GEMV", "0"), env_set("QUANTC_MOE_PLANE_MMA", "0"), \
                        env_set(env_name or "QUANTC_BENCH_UNUSED", value):
                    row[f"layer_ours_mxfp4_wo_{col}_us"] = us(lambda: moes["mxfp4_wo"].experts(x, tw, ids))
            if h % 64 == 0 and inter % 64 == 0 and pairs <= 256:  # and on the grouped GEMV at every count
                with env_set("QUANTC_MOE_GEMV", "1"), env_set("QUANTC_MOE_PLANE_MMA", "0"):
                    row["layer_ours_mxfp4_wo_gemv_us"] = us(lambda: moes["mxfp4_wo"].experts(x, tw, ids))
            if h % 64 == 0 and inter % 64 == 0:  # and on wo_plane_mma's grouped launch (gpt-oss's 2880: forced only) (opt-in, routing blocks)
                with env_set("QUANTC_MOE_PLANE_MMA", "1"):
                    row["layer_ours_mxfp4_wo_plane_mma_us"] = us(lambda: moes["mxfp4_wo"].experts(x, tw, ids))
            act = row["active_experts"]
            fl = 2 * pairs * h * 2 * inter
            if row.get("gate_up_ours_bf16_best_us") and row["gate_up_torch_grouped_mm_us"]:
                row["gate_up_ours_bf16_best_over_torch"] = row["gate_up_torch_grouped_mm_us"] / row["gate_up_ours_bf16_best_us"]
                row["gate_up_ours_bf16_best_tflops"] = fl / row["gate_up_ours_bf16_best_us"] / 1e6
            # mxfp4 bytes: half a byte a weight plus an e8m0 scale per 32; its peer is torch's bf16 grouped GEMM
            for peer, ours, wbytes in (("gate_up_torch_grouped_mm_us", "gate_up_ours_bf16_us", act * 2 * inter * h * 2),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_us", act * 2 * inter * h),
                                       ("gate_up_torch_grouped_mm_us", "gate_up_ours_bf16_table_us", act * 2 * inter * h * 2),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_table_us",
                                        act * 2 * inter * h),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_masked_k_us",
                                        act * 2 * inter * h),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_ws128_us",
                                        act * 2 * inter * h),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_ws64_us",
                                        act * 2 * inter * h),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_best_us",
                                        act * 2 * inter * h),
                                       ("gate_up_torch_scaled_grouped_mm_us", "gate_up_ours_fp8_shipped_us",
                                        act * 2 * inter * h),
                                       ("gate_up_torch_grouped_mm_us", "gate_up_ours_mxfp4_us",
                                        act * 2 * inter * h * 17 // 32),
                                       ("gate_up_torch_grouped_mm_us", "gate_up_ours_mxfp4_planes_us",
                                        act * 2 * inter * h * 17 // 32),
                                       ("gate_up_torch_grouped_mm_us", "gate_up_ours_mxfp4_gemv_us",
                                        act * 2 * inter * h * 17 // 32),
                                       ("gate_up_torch_grouped_mm_us", "gate_up_ours_mxfp4_plane_mma_us",
                                        act * 2 * inter * h * 17 // 32)):
                if row[peer] and row.get(ours):
                    row[ours.replace("_us", "_over_torch")] = row[peer] / row[ours]
                    row[ours.replace("_us", "_tflops")] = fl / row[ours] / 1e6
                    row[ours.replace("_us", "_weight_GBps")] = wbytes / row[ours] / 1e3
            if row["dense_bf16_equal_flops_us"]:
                row.update(moe_roofline(row, fl, res["copy_GBps"]))
            for key in (*moes, *(f"{k_}_ws{r}" for k_ in WS_LAYERS for r in (0, 128, 64, "up")), "mxfp4_wo_dequant",
                        "mxfp4_wo_gemv", "mxfp4_wo_grouped", "mxfp4_wo_plane_mma"):
                if row["layer_torch_bf16_us"] and row.get(f"layer_ours_{key}_us"):
                    row[f"layer_ours_{key}_over_torch_bf16"] = row["layer_torch_bf16_us"] / row[f"layer_ours_{key}_us"]
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
        del w13, w2, w13q, w2q, moes, W13, W2, F13, F2, M13, M2, I13, I2
        torch.cuda.empty_cache()


if __name__ == "__main__":
    check()
    bench()
    print("done in", time.time() - T0, flush=True)
