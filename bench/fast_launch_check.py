"""On a GPU: ``common.launch``'s direct call of the compiled kernel gives the same bits as Triton's own
launch path, for every kernel that uses it (quantizers, tile GEMM with and without split-K, GEMV, the 4-bit
weight-only kernels, the grouped MoE GEMM), eagerly and replayed in a CUDA graph, at several shapes (so
specializations differ); and ``launch_memo``'s replays of QuantLinear calls against the launchers. Prints one line per case
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


def check(out: dict, label: str, layer, x: torch.Tensor, exact: bool = True,
          switch: str = "QUANTC_FAST_LAUNCH") -> list[str]:
    """``layer()`` with ``switch`` off (Triton's launches; for QUANTC_LAUNCH_MEMO the launchers' Python), then
    three times with it on (the direct calls; the memo's recording and replays) and once captured in a CUDA
    graph and replayed on new input: the same bits every time (``exact``; the 4-bit kernels' split-K sums
    arrive by fp32 atomics in any order, so theirs are compared within 1e-3 relative). Returns [label] on a
    mismatch."""
    os.environ[switch] = "0"
    want = layer()
    os.environ[switch] = "1"
    runs = [layer() for _ in range(3)]
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        graphed = layer()
    x.copy_(x * 0.5)
    os.environ[switch] = "0"
    want_half = layer()
    os.environ[switch] = "1"
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


MEMO_FORMATS = (("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"),
                ("fp8_scaled_gemm", "fp8_per_tensor", "fp8_dynamic_per_tensor"),
                ("int8_gemm", "int8_per_channel", "int8_dynamic_per_token"),
                ("fp8_block_gemm", "fp8_block_128x128", "fp8_dynamic_group_128"),
                ("mxfp8_gemm_emulated", "mxfp8", "mxfp8"),
                ("fp8_weight_only_gemm", "fp8_per_channel", "none"),
                ("int4_weight_only_gemm", "int4_group_128", "none"), ("fp4_weight_only_gemm", "mxfp4", "none"))
ROWS_8BIT = ((1, False), (3, False), (200, False), (1100, False), (2048, False), (4096, False), (200, True))
ROWS_4BIT = ((1, False), (3, False), (40, False), (200, False), (300, False), (200, True))  # 300: the dequant path


def memo_check(out: dict) -> list[str]:
    """``launch_memo``: QuantLinear layers with a bias, 8-bit at M = 1, 3, 200, 1100, 2048 and 4096 rows (the GEMV,
    the tile GEMM, the Gluon kernels, the persistent TMA kernel; at 4096 rows dynamic per-tensor's cooperative
    quantizer), 4-bit at 1, 3, 40, 200 and 300 rows (planes, mma4,
    dequantize-then-cuBLAS; the bias added by a recorded torch op), and each on an input 2 bytes off 16-byte
    alignment (TMA refuses it: the tiled path), the runtime's kernel defaults: the recording call and two
    replays against the launchers (memo off), bit for bit (the 4-bit split-K sums arrive by atomics: within
    1e-3), and a replay captured in a CUDA graph against the launchers on new input."""
    from quantc.runtime import launch_memo
    from quantc.runtime.modules import QuantLinear
    from quantc.runtime.registry import LAUNCHERS

    bad = []
    n, k = 1024, 2048
    for kernel, wk, ak in MEMO_FORMATS:
        w = torch.randn(n, k, device="cuda") * 0.05
        bufs = LAUNCHERS[kernel].prepare(Q.quantize_weight(w, wk), wk, n, k)
        four_bit = kernel in ("int4_weight_only_gemm", "fp4_weight_only_gemm")
        mod = QuantLinear("m", kernel, wk, ak, n, k, dict(bufs), torch.randn(n, device="cuda"), None)
        for m, misaligned in ROWS_4BIT if four_bit else ROWS_8BIT:
            base = torch.randn(m * k + 1, device="cuda", dtype=torch.bfloat16)
            x = base[1:].view(m, k) if misaligned else base[: m * k].view(m, k)
            label = f"memo/{kernel}/{wk}/{ak}/M{m}{'/misaligned' if misaligned else ''}"
            bad += check(out, label, lambda: mod(x), x, exact=not four_bit, switch="QUANTC_LAUNCH_MEMO")
            rec = mod._memo.get((m, not x.data_ptr() & 15, x.device, common.stream_key(x.device)))
            replayed = rec is not None and rec.program is not None
            out[label].update(replayed=replayed,
                              launches=sum(a[0] == "launch" for a in rec.program) if replayed else None,
                              torch_ops=sum(a[0] == "op" for a in rec.program) if replayed else None)
            if not replayed:  # the launchers ran every time: nothing was checked
                print(label, "not replayed", flush=True)
                out[label]["ok"] = False
                bad += [] if label in bad else [label]
    os.environ.pop("QUANTC_LAUNCH_MEMO", None)
    launch_memo.clear()
    return bad


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
    bad += memo_check(out)
    out["direct_calls_cached"] = len(common._COMPILED)
    print("fast launch check:", "all ok" if not bad else f"FAILED {bad}", f"({len(common._COMPILED)} specializations)",
          flush=True)
    Path(os.environ.get("OUT", "/tmp"), "fast_launch_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
