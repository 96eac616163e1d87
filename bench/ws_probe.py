"""A warp-specialized fp8 128-block kernel against the tiled one and cuBLAS's blockwise
``torch._scaled_mm`` on the same pre-quantized operands (GPU, CUDA graphs, one run). An experiment, kept
with its result; nothing in the runtime uses this kernel.

The tiled kernel (``scaled_mm._scaled_mm_kernel``) scales each 128-wide K step's partial into the running
sum, and Triton waits for that step's wgmma group before the scaling, so the tensor cores idle while it
scales. The kernel here marks its K loop ``warp_specialize``: Triton's Hopper pass (triton >= 3.5, with
num_warps = 4) then gives the TMA loads to a producer warpgroup and MMA + scaling to two consumer
warpgroups, each on half the tile (two explicit 64-row halves at BLOCK_M = 128; the pass splits a 64-row
tile by columns itself): 12 warps, 232 registers a consumer thread (triton 3.9 compiles every config
here for sm_90 offline; it fails in the pass for a single 128-row or a 256-wide tile, so those are not
offered). Same per-step math as the tiled kernel: bit-identical under the interpreter and on the H100.

Result (H100, triton 3.6, ``bench/results/ws_probe_h100.json``, 7 shapes x M = 16..8192): slower than
the tiled kernel everywhere, 0.41 of cuBLAS blockwise at M >= 1024 (tiled 0.64) and 0.80 at M 16..256
(tiled 1.12); the same loop without warp specialization (``_nows``) is slower again, so the per-program
descriptors and 4-warp tiles cost as much as the specialization gains. The overlap cuBLAS gets needs a
hand-written producer/consumer kernel (Gluon), not the automatic pass.

Every config is first checked against the tiled kernel's output, then timed; the tiled kernel runs at
a few tile configs, its best kept. Prints a row per (shape, M) and the geomean ratios the issue floor
uses (cuBLAS blockwise time / ours) over M >= 1024 and M = 16..256.

    python bench/ws_probe.py      # env PROBE_MS (default 16,64,256,1024,4096,8192), PROBE_SHAPES ("NxK,..."),
                                  # PROBE_WS ("BMxBNxSTAGES[xnows],..."); writes $OUT/ws_probe_<gpu>.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.block_ws_probe import AK, MS, SHAPES, TILED, WK, cublas_blockwise  # noqa: E402
from bench.timing import geomean, gpu_slug, graph_us, matched_graph_us  # noqa: E402
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.common import cdiv, ensure_tma_allocator, grouped_tile  # noqa: E402
from quantc.runtime.kernels.scaled_mm import _add_scaled_partial, scaled_mm  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
# SHAPES, MS (PROBE_SHAPES / PROBE_MS), the tiled configs and the keys: bench/block_ws_probe.py's
# (block_m, block_n, stages, warp-specialized)
WS = [(64, 128, 4, True), (64, 128, 3, True), (128, 128, 3, True), (128, 128, 4, True), (128, 64, 4, True),
      (64, 64, 4, True), (128, 128, 4, False)]
if os.environ.get("PROBE_WS"):
    WS = [(*(int(v) for v in c_.split("x")[:3]), not c_.endswith("nows")) for c_ in os.environ["PROBE_WS"].split(",")]


@triton.jit
def _block_mm_ws_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K, stride_sam, stride_sak, stride_sbn, stride_sbk,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_STAGES: tl.constexpr, WS: tl.constexpr,
):
    BLOCK_K: tl.constexpr = 128
    HALF: tl.constexpr = BLOCK_M // 2 if BLOCK_M == 128 else BLOCK_M  # rows of one accumulator
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[HALF, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[HALF, BLOCK_N])
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    m0 = pid_m * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m0 = m0 + tl.arange(0, HALF)
    offs_m1 = offs_m0 + HALF
    acc0 = tl.zeros((HALF, BLOCK_N), tl.float32)
    acc1 = tl.zeros((HALF, BLOCK_N), tl.float32)
    for kg in tl.range(0, tl.cdiv(K, BLOCK_K), num_stages=NUM_STAGES, warp_specialize=WS):
        b = b_desc.load([pid_n * BLOCK_N, kg * BLOCK_K])
        a0 = a_desc.load([m0, kg * BLOCK_K])
        sa0 = tl.load(sa_ptr + offs_m0 * stride_sam + kg * stride_sak, mask=offs_m0 < M, other=0.0)
        acc0 = _add_scaled_partial(acc0, tl.dot(a0, b.T), sa0, sb_ptr, pid_n, offs_n, mask_n, kg,
                                   stride_sbn, stride_sbk, 3, False, 128, BLOCK_N)
        if BLOCK_M == 128:
            a1 = a_desc.load([m0 + HALF, kg * BLOCK_K])
            sa1 = tl.load(sa_ptr + offs_m1 * stride_sam + kg * stride_sak, mask=offs_m1 < M, other=0.0)
            acc1 = _add_scaled_partial(acc1, tl.dot(a1, b.T), sa1, sb_ptr, pid_n, offs_n, mask_n, kg,
                                       stride_sbn, stride_sbk, 3, False, 128, BLOCK_N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        acc0 = acc0 + bias
        acc1 = acc1 + bias
    c_desc.store([m0, pid_n * BLOCK_N], acc0.to(tl.bfloat16))
    if BLOCK_M == 128:
        c_desc.store([m0 + HALF, pid_n * BLOCK_N], acc1.to(tl.bfloat16))


def launch_ws(a, weight, sa, weight_scale, bias, config, out, ws: bool = True):
    """out (M, N) bf16 = (a x sa) @ (weight x weight_scale).T for 1x128 / 128x128 scales (``scaled_mm``'s
    operands); ``ws`` False compiles the same loop without warp specialization (the probes compare)."""
    ensure_tma_allocator()
    m, k = a.shape
    n = weight.shape[0]
    grid = (cdiv(m, config.block_m) * cdiv(n, config.block_n),)
    _block_mm_ws_kernel[grid](
        a, weight, out, sa, weight_scale, bias if bias is not None else out,
        m, n, k, sa.stride(0), sa.stride(1), weight_scale.stride(0), weight_scale.stride(1),
        HAS_BIAS=bias is not None, BLOCK_M=config.block_m, BLOCK_N=config.block_n, GROUP_M=config.group_m,
        NUM_STAGES=config.num_stages, WS=ws,
        # the pass adds the producer and the second consumer warpgroup to these four warps
        num_warps=4, num_stages=config.num_stages,
    )
    return out


def main() -> None:
    os.environ["QUANTC_BLOCK_WS"] = "0"  # scaled_mm here means the tiled / TMA Triton kernels, not the Gluon one
    gpu = torch.cuda.get_device_name()
    rows = []
    torch.manual_seed(0)
    for n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        t = Q.quantize_weight(w, WK)
        wq, ws_ = t["weight"], t["weight_scale_inv"].float()
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xg, sg = quantize_activation(x, AK)
            row = {"M": m, "N": n, "K": k}
            row["cublas_block_us"] = graph_us(lambda: cublas_blockwise(xg, wq, sg, ws_))
            want = scaled_mm(xg, wq, ws_, WK, AK, TILED[0], x_scale=sg, tma=False).float()
            best = None
            for cfg in TILED:
                us = graph_us(lambda: scaled_mm(xg, wq, ws_, WK, AK, cfg, x_scale=sg, tma=False))
                row[f"tiled_{cfg.block_m}x{cfg.block_n}x{cfg.num_warps}w"] = us
                if us and (best is None or us < best[0]):
                    best = (us, f"{cfg.block_m}x{cfg.block_n}x{cfg.num_warps}w")
            row["tiled_us"], row["tiled_cfg"] = best if best else (None, None)
            best = None
            for bm, bn, st, on in WS:
                cfg = C(bm, bn, 128, 8, 4, st)
                name = f"ws_{bm}x{bn}x{st}{'' if on else '_nows'}"
                out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                us = matched_graph_us(row, name, lambda: launch_ws(xg, wq, sg, ws_, None, cfg, out, ws=on), want)
                if us and (best is None or us < best[0]):
                    best = (us, name)
            row["ws_us"], row["ws_cfg"] = best if best else (None, None)
            c = row["cublas_block_us"]
            for p in ("tiled", "ws"):
                row[f"{p}_vs_cublas"] = c / row[f"{p}_us"] if c and row[f"{p}_us"] else None
            print(json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in row.items()
                              if not k_.endswith("_maxdiff")}), flush=True)
            rows.append(row)
    summary = {}
    for p in ("tiled", "ws"):
        summary[f"{p}_vs_cublas_M>=1024"] = geomean([r[f"{p}_vs_cublas"] for r in rows if r["M"] >= 1024])
        summary[f"{p}_vs_cublas_M16..256"] = geomean([r[f"{p}_vs_cublas"] for r in rows if 16 <= r["M"] <= 256])
    print("summary", json.dumps(summary), flush=True)
    slug = gpu_slug(gpu)
    Path(OUT, f"ws_probe_{slug}.json").write_text(json.dumps({"device": gpu, "triton": __import__("triton").__version__,
                                                              "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
