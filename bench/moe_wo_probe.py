"""The 4-bit MoE expert path (bf16 activations) on each of its kernels, side by side, to set ``moe.uses_moe_gemv`` /
``uses_moe_plane_mma``'s rule: for each model (bench_moe.py's sizes) and token count, ``QuantMoE.experts`` for mxfp4
and int4 g128 experts as apply() runs it (``default``), on the grouped GEMV (QUANTC_MOE_GEMV=1, up to 256 pairs),
on the grouped GEMM (QUANTC_MOE_GEMV=0, QUANTC_MOE_PLANE_MMA=0) and on wo_plane_mma's grouped launch
(QUANTC_MOE_PLANE_MMA=1, H and I multiples of 64: gpt-oss's 2880 only when forced); each path checked against the expert loop first (small tokens,
relative error under 2e-2). CUDA graphs, no L2 rotation (as bench_moe.py).

Env: PROBE_MODELS, PROBE_TOKENS (default 1,4,16,64,256), PROBE_FMTS (mxfp4,int4_group_128), PROBE_CAP_S, OUT.
Writes $OUT/moe_wo_probe_<gpu>.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quantc.runtime.kernels import moe_gemm as mg  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.moe import QuantMoE  # noqa: E402
from bench.timing import env_sets, graph_us, gpu_slug  # noqa: E402

MODELS = {"qwen3_30b_a3b": (128, 8, 2048, 768), "deepseek_v3": (256, 8, 7168, 2048),
          "gpt_oss_120b": (128, 4, 2880, 2880), "mixtral_8x7b": (8, 2, 4096, 14336)}
PATHS = {"default": {}, "gemv": {"QUANTC_MOE_GEMV": "1", "QUANTC_MOE_PLANE_MMA": "0"},
         "grouped": {"QUANTC_MOE_GEMV": "0", "QUANTC_MOE_PLANE_MMA": "0"},
         "plane_mma": {"QUANTC_MOE_PLANE_MMA": "1"}}


def run_on(path: str, fn):
    with env_sets(PATHS[path]):
        return fn()


def takes(path: str, h: int, inter: int, pairs: int) -> bool:
    if path == "gemv":
        return h % 64 == 0 and inter % 64 == 0 and pairs <= 256
    if path == "plane_mma":  # fp4 also at K a multiple of 64 (gpt-oss: forced, the default rule needs 128)
        return h % 64 == 0 and inter % 64 == 0
    return True


def main() -> None:
    t0 = time.time()
    cap = float(os.environ.get("PROBE_CAP_S", "300"))
    models = os.environ.get("PROBE_MODELS", ",".join(MODELS)).split(",")
    tokens = [int(v) for v in os.environ.get("PROBE_TOKENS", "1,4,16,64,256").split(",")]
    fmts = os.environ.get("PROBE_FMTS", "mxfp4,int4_group_128").split(",")
    out = os.environ.get("OUT", "/tmp")
    res = {"device": torch.cuda.get_device_name(), "rows": [], "check": [], "notes": []}
    dev, bf = "cuda", torch.bfloat16
    torch.manual_seed(0)
    for name in models:
        e, k, h, inter = MODELS[name]
        for key in fmts:
            if time.time() - t0 > cap:
                res["notes"].append(f"time cap before {name} {key}")
                break
            # each path checked on a small layer of this model's experts and top-k (the reference dequantizes every
            # expert in fp32: DeepSeek-V3's would not fit)
            s13 = wf.quantize(torch.randn(e, 512, 256, device=dev, dtype=bf) * 0.1, key)
            s2 = wf.quantize(torch.randn(e, 256, 256, device=dev, dtype=bf) * 0.1, key)
            small = QuantMoE("moe_weight_only", s13, s2, torch.randn(e, 256, device=dev, dtype=bf), top_k=k)
            x = torch.randn(5, 256, device=dev, dtype=bf)
            tw, ids = small.route(x)
            ref = mg.reference_expert_loop(x, s13, s2, tw, ids, "silu").float()
            for path in PATHS:
                if takes(path, 256, 256, 5 * k):
                    got = run_on(path, lambda: small.experts(x, tw, ids)).float()
                    err = ((got - ref).abs().max() / ref.abs().max()).item()
                    res["check"].append({"model": name, "fmt": key, "path": path, "rel_err": err, "ok": err < 2e-2})
            w13 = wf.quantize(torch.randn(e, 2 * inter, h, device=dev, dtype=bf) * 0.02, key)
            w2 = wf.quantize(torch.randn(e, h, inter, device=dev, dtype=bf) * 0.02, key)
            moe = QuantMoE("moe_weight_only", w13, w2, torch.randn(e, h, device=dev, dtype=bf), top_k=k)
            for t in tokens:
                if time.time() - t0 > cap:
                    res["notes"].append(f"time cap before {name} {key} T={t}")
                    break
                ids = torch.rand(t, e, device=dev).topk(k, dim=-1).indices.to(torch.int32)
                tw = torch.softmax(torch.randn(t, k, device=dev), -1)
                x = torch.randn(t, h, device=dev, dtype=bf)
                row = {"model": name, "fmt": key, "tokens": t, "pairs": t * k, "experts": e,
                       "active": int(ids.unique().numel())}
                for path in PATHS:
                    if takes(path, h, inter, t * k):
                        row[f"{path}_us"] = run_on(path, lambda: graph_us(lambda: moe.experts(x, tw, ids)))
                timed = {p: row[f"{p}_us"] for p in PATHS if row.get(f"{p}_us")}
                row["best"] = min(timed, key=timed.get) if timed else None
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
            del moe, w13, w2
            torch.cuda.empty_cache()
    bad = [c for c in res["check"] if not c["ok"]]
    print(f"check: {len(res['check']) - len(bad)}/{len(res['check'])} ok", bad[:4], flush=True)
    with open(os.path.join(out, f"moe_wo_probe_{gpu_slug(res['device'])}.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
