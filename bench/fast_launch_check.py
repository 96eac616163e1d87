"""On a GPU: ``common.launch``'s direct call of the compiled kernel gives the same bits as Triton's own
launch path, for every kernel that uses it (quantizers, tile GEMM with and without split-K, GEMV, the 4-bit
weight-only kernels, the grouped MoE GEMM), eagerly and replayed in a CUDA graph, at several shapes (so
specializations differ). Prints one line per case
and ``fast launch check: all ok`` or the failures; writes $OUT/fast_launch_check.json.

    python bench/fast_launch_check.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels import common  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402

CASES = [  # weight key, activation key, config
    ("fp8_per_channel", "fp8_dynamic_per_token", C(16, 64, 128, 8, 4, 3)),
    ("fp8_per_channel", "fp8_dynamic_per_token", C(16, 32, 128, 8, 4, 4, 4)),
    ("fp8_per_channel", "fp8_dynamic_per_token", C(1, 16, 512, 8, 4, 1, 4)),
    ("int8_per_channel", "int8_dynamic_per_token", C(1, 8, 256, 8, 4, 2, 1)),
    ("fp8_block_128x128", "fp8_dynamic_group_128", C(1, 32, 128, 8, 4, 1, 2)),
    ("fp8_block_128x128", "fp8_dynamic_group_128", C(64, 128, 128, 8, 4, 3)),
    ("fp8_per_channel", "none", C(1, 8, 512, 8, 4, 1, 2)),
    ("mxfp8", "mxfp8", C(16, 64, 32, 8, 4, 3)),
]
SHAPES = [(1, 576, 512), (3, 1024, 2048), (200, 4096, 1024), (1100, 4096, 1024)]  # 1100: the persistent TMA kernel


def check(out: dict, label: str, layer, x: torch.Tensor, exact: bool = True) -> list[str]:
    """``layer()`` with Triton's launches, then three times with the direct calls and once captured in a
    CUDA graph and replayed on new input: the same bits every time (``exact``; the 4-bit kernels' split-K
    sums arrive by fp32 atomics in any order, so theirs are compared within 1e-3 relative). Returns
    [label] on a mismatch."""
    os.environ["QUANTC_FAST_LAUNCH"] = "0"
    want = layer()
    os.environ["QUANTC_FAST_LAUNCH"] = "1"
    runs = [layer() for _ in range(3)]
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        graphed = layer()
    x.copy_(x * 0.5)
    os.environ["QUANTC_FAST_LAUNCH"] = "0"
    want_half = layer()
    os.environ["QUANTC_FAST_LAUNCH"] = "1"
    g.replay()
    torch.cuda.synchronize()
    def same(a, b):
        return torch.equal(a, b) if exact else ((a.float() - b.float()).norm() / b.float().norm()).item() < 1e-3

    ok = all(same(o, want) for o in runs) and same(graphed, want_half)
    err = max(((o.float() - w.float()).norm() / w.float().norm()).item() for o, w in
              ((runs[0], want), (runs[1], want), (runs[2], want), (graphed, want_half)))
    out[label] = {"ok": ok, "bitwise": exact, "max_rel_err": err}
    print(label, "ok" if ok else "MISMATCH", "" if exact else f"(atomic sums: rel err {err:.2e})", flush=True)
    return [] if ok else [label]


def main() -> None:
    out, bad = {}, []
    torch.manual_seed(0)
    for wk, ak, cfg in CASES:
        for m, n, k in SHAPES:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t = Q.quantize_weight(torch.randn(n, k, device="cuda") * 0.05, wk)
            sc = t.get("weight_scale", t.get("weight_scale_inv"))

            label = f"{wk}/{ak}/{tuple(cfg.__dict__.values())}/M{m}N{n}K{k}"
            bad += check(out, label, lambda: scaled_mm(x, t["weight"], sc, wk, ak, cfg), x)
    for key in ("fp8_dynamic_per_token", "int8_dynamic_per_token", "mxfp8", "fp8_dynamic_group_128",
                "fp8_dynamic_per_tensor"):
        for m, k in ((1, 4096), (64, 14336), (1024, 7168), (8, 20480)):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            os.environ["QUANTC_FAST_LAUNCH"] = "0"
            wq, ws = quantize_activation(x, key)
            os.environ["QUANTC_FAST_LAUNCH"] = "1"
            runs = [quantize_activation(x, key) for _ in range(3)]
            ok = all(torch.equal(q.view(torch.uint8), wq.view(torch.uint8)) and torch.equal(s, ws) for q, s in runs)
            out[f"quant/{key}/M{m}K{k}"] = ok
            if not ok:
                bad.append(f"quant/{key}/M{m}K{k}")
    # 4-bit weight-only (plane kernel at decode, mma4 above, dequantize-then-cuBLAS from M = 256) and the
    # grouped MoE GEMM
    from quantc.runtime.kernels import wo_format as wf
    from quantc.runtime.kernels import wo_gemm
    from quantc.runtime.moe import QuantMoE

    for key in ("int4_group_128", "mxfp4"):
        w = wf.quantize(torch.randn(2048, 1024, device="cuda") * 0.05, key)
        for m in (1, 16, 64, 300):
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            cfg = wo_gemm.default_config(m, w.n, w.k, int4=w.fmt == wf.INT4)
            bad += check(out, f"wo/{key}/M{m}", lambda: wo_gemm.launch(x, w, cfg), x, exact=False)
    for kernel, wkey, akey in (("moe_bf16", "none", "none"), ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token"),
                               ("moe_weight_only", "int4_group_128", "none")):
        e, h, i = 8, 512, 256
        w13 = wf.quantize(torch.randn(e, 2 * i, h, device="cuda") * 0.1, wkey)
        w2 = wf.quantize(torch.randn(e, h, i, device="cuda") * 0.1, wkey)
        moe = QuantMoE(kernel, w13, w2, torch.randn(e, h, device="cuda").bfloat16(), top_k=2, act_key=akey)
        for t in (1, 40):
            x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
            bad += check(out, f"moe/{kernel}/T{t}", lambda: moe(x), x)
    out["direct_calls_cached"] = len(common._COMPILED)
    print("fast launch check:", "all ok" if not bad else f"FAILED {bad}", f"({len(common._COMPILED)} specializations)",
          flush=True)
    Path(os.environ.get("OUT", "/tmp"), "fast_launch_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
