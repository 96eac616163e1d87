"""The grouped MoE GEMM's raw-sum path with and without load masks (``moe_gemm.EVEN_TILES``), on a GPU, in
one run: the gate_up (SiLU fused) at bench_moe's four model sizes, bf16 and fp8 per-channel W8A8, at the
config the runtime runs (the shipped table's), next to the torch peer of bench_moe (``_grouped_mm`` /
``_scaled_grouped_mm`` rowwise on the same operands). Outputs with and without masks must be equal bit
for bit. CUDA graphs, as bench_moe times.

    python3 bench/moe_even_probe.py [--tokens 256,4096] [--out $OUT/moe_even_probe.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_moe import MODELS, table_config  # noqa: E402
from bench.timing import graph_us as us  # noqa: E402
from quantc.runtime.kernels import moe_gemm as mg  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.kernels.moe_routing import align_by_expert  # noqa: E402

BF, F8, DEV = torch.bfloat16, torch.float8_e4m3fn, "cuda"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="256,4096")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows, ratios = [], {"bf16": [], "fp8": []}
    for name, (e, k, h, inter) in MODELS.items():
        w13 = torch.randn(e, 2 * inter, h, device=DEV, dtype=BF) * 0.02
        w13q = w13.to(F8)
        W13 = wf.WoWeight(wf.BF16, 2 * inter, h, w13)
        F13 = wf.WoWeight(wf.FP8, 2 * inter, h, w13q, torch.ones(e, 2 * inter, 1, device=DEV), wf.S_FLOAT, h, 1)
        for t in (int(v) for v in a.tokens.split(",")):
            pairs = t * k
            ids = torch.rand(t, e, device=DEV).topk(k, dim=-1).indices.to(torch.int32)
            x = torch.randn(t, h, device=DEV, dtype=BF)
            xq, sx = x.to(F8), torch.ones(t, 1, device=DEV)
            flat = ids.reshape(-1).long()
            order = torch.argsort(flat, stable=True)
            offs = torch.cumsum(torch.bincount(flat, minlength=e), 0).to(torch.int32)
            xs = x[order // k].contiguous()
            row = {"model": name, "tokens": t,
                   "torch_grouped_mm_us": us(lambda: torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs,
                                                                        out_dtype=BF)),
                   "torch_scaled_grouped_mm_us": us(lambda: torch._scaled_grouped_mm(
                       xs.to(F8), w13q.transpose(-2, -1), torch.ones(pairs, device=DEV),
                       torch.ones(e, 2 * inter, device=DEV), offs=offs, out_dtype=BF))}
            for key, kid, wt, xin, sxin, aq in (("bf16", "moe_bf16", W13, x, None, 0), ("fp8", "moe_fp8", F13, xq, sx, 1)):
                cfg = table_config(kid, 2 * inter, h, t)
                routing = (*align_by_expert(ids, e, cfg.block_m), pairs)

                def run():
                    return mg.grouped_gemm(xin, sxin, wt, routing, a_div=k, act="silu", a_quant=aq, a_group=0, cfg=cfg)

                row[f"{key}_cfg"] = [cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages]
                row[f"{key}_even_applies"] = (inter % cfg.block_n == 0 and h % cfg.block_k == 0)
                mg.EVEN_TILES = True
                even_out = run()
                row[f"{key}_even_us"] = us(run)
                mg.EVEN_TILES = False
                masked_out = run()
                row[f"{key}_masked_us"] = us(run)
                mg.EVEN_TILES = True
                row[f"{key}_same_bits"] = bool(torch.equal(even_out, masked_out))
                if row[f"{key}_masked_us"] and row[f"{key}_even_us"]:  # None: did not run (printed)
                    row[f"{key}_masked_over_even"] = row[f"{key}_masked_us"] / row[f"{key}_even_us"]
                    ratios[key].append(row[f"{key}_masked_over_even"])
            for name_, peer, ours in (("fp8_even_vs_torch", "torch_scaled_grouped_mm_us", "fp8_even_us"),
                                      ("fp8_masked_vs_torch", "torch_scaled_grouped_mm_us", "fp8_masked_us"),
                                      ("bf16_even_vs_torch", "torch_grouped_mm_us", "bf16_even_us")):
                if row[peer] and row[ours]:
                    row[name_] = row[peer] / row[ours]
            rows.append(row)
            print(json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in row.items()}), flush=True)
    summary = {f"{key}_masked_over_even_geomean": math.exp(sum(map(math.log, v)) / len(v)) for key, v in ratios.items()
               if v}
    summary["all_same_bits"] = all(r["bf16_same_bits"] and r["fp8_same_bits"] for r in rows)
    print(summary, flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows, "summary": summary},
                                          indent=1))


if __name__ == "__main__":
    main()
