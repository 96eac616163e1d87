"""The one-row 4-bit GEMV (wo_gemv) at M = 1 over its word-dot and tile variants, on every dense shape, side by side
with bf16 torch.matmul and tinygemm (int4) in the same run, weights rotated past L2 (bench_wo.py's timing):

- ``policy``: ``gemv_config``'s launch as the runtime takes it (chained word dots, QUANTC_GEMV_CHAIN on);
- ``unchained``: the same launch, each word's dot converted on its own (QUANTC_GEMV_CHAIN=0);
- ``ahead2``: the policy's tile with two K steps an iteration in two register buffers (num_stages 3);
- ``split_x``: the policy's launch with QUANTC_GEMV_SPLIT_X=1 (one activation word a lane, packs gathered);
- ``rows8`` / ``rows8_ahead2``: 8 rows a thread (block_n 32 at 1024-deep steps, 16 at 2048), split-K as the
  policy sizes it.
Each variant is checked against the reference first. Env: PROBE_SHAPES, PROBE_FMTS, PROBE_CAP_S, OUT.
Writes $OUT/gemv_chain_probe_<gpu>.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench.bench_dense import SHAPES  # noqa: E402
from bench.bench_wo import n_copies, random_weight, rotated_us  # noqa: E402
from bench.timing import env_sets, gpu_slug  # noqa: E402
from quantc.runtime.kernels import wo_gemm as wg  # noqa: E402
from quantc.runtime.kernels import wo_gemv as gv  # noqa: E402
from quantc.runtime.kernels.common import cdiv  # noqa: E402


def variants(n: int, k: int, sms: int) -> dict:
    cfg, warps_k = gv.gemv_config(n, k, sms)
    out = {"policy": (cfg, warps_k, {}), "unchained": (cfg, warps_k, {"QUANTC_GEMV_CHAIN": "0"}),
           "ahead2": (replace(cfg, num_stages=3), warps_k, {}),
           "split_x": (cfg, warps_k, {"QUANTC_GEMV_SPLIT_X": "1"})}
    bk = cfg.block_k
    bn = 16 if bk >= 2048 else 32  # 8 rows a thread at 4 warps along K
    programs = cdiv(n, bn)
    split = 1 if programs >= sms else max(1, min(cdiv(3 * sms, programs), k // bk))
    rows8 = replace(cfg, block_n=bn, num_warps=4, split_k=split)
    if gv.gemv_tile(rows8, k, 4)[0] == 8 and gv.gemv_tile(cfg, k, warps_k)[0] != 8:
        out["rows8"] = (rows8, 4, {})
        out["rows8_ahead2"] = (replace(rows8, num_stages=3), 4, {})
    return out


def main() -> None:
    t0 = time.time()
    cap = float(os.environ.get("PROBE_CAP_S", "200"))
    shapes = ([tuple(int(v) for v in s.split("x")) for s in os.environ["PROBE_SHAPES"].split(",")]
              if os.environ.get("PROBE_SHAPES") else SHAPES)
    fmts = os.environ.get("PROBE_FMTS", "int4_group_128,mxfp4,nvfp4").split(",")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(), "rows": [], "check": [], "notes": []}
    torch.manual_seed(0)
    for key in fmts:  # correctness of every variant at a small shape (K = 4096: the 2048-deep tiles)
        w = random_weight(key, 512, 4096)
        x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
        ref = wg.reference(x, w).float()
        for name, (cfg, warps_k, env) in variants(512, 4096, sms).items():
            with env_sets(env):
                got = gv.launch_gemv(x, w, cfg, warps_k).float()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            res["check"].append({"fmt": key, "variant": name, "rel_err": err, "ok": err < 1e-2})
    print("check", [(c["fmt"], c["variant"], round(c["rel_err"], 5)) for c in res["check"]], flush=True)
    for n, k in shapes:
        if time.time() - t0 > cap:
            res["notes"].append(f"time cap before {n}x{k}")
            break
        wbf = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(n_copies(n * k * 2))]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        bf16 = rotated_us(lambda i: x @ wbf[i].T, len(wbf))
        del wbf
        for key in fmts:
            ws = [random_weight(key, n, k) for _ in range(n_copies(n * k // 2))]
            row = {"N": n, "K": k, "fmt": key, "bf16_us": bf16}
            for name, (cfg, warps_k, env) in variants(n, k, sms).items():
                with env_sets(env):
                    t = rotated_us(lambda i: gv.launch_gemv(x, ws[i], cfg, warps_k), len(ws))
                row[name] = {"us": t, "over_bf16": bf16 / t if t and bf16 else None,
                             "cfg": [cfg.block_n, cfg.block_k, cfg.num_warps, warps_k, cfg.num_stages, cfg.split_k],
                             "GBps": ws[0].nbytes() / t / 1e3 if t else None}
            res["rows"].append(row)
            print(n, k, key, {v: round(row[v]["over_bf16"] or 0, 3) for v in row if isinstance(row[v], dict)},
                  flush=True)
            del ws
        torch.cuda.empty_cache()
        with open(os.path.join(os.environ.get("OUT", "/tmp"), f"gemv_chain_probe_{gpu_slug(res['device'])}.json"),
                  "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
