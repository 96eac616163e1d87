"""mxfp4 weights x mxfp8 activations, emulated on sm_90 (no block-scaled MMA). Kernel id
``mxfp4_mxfp8_gemm_emulated``.

    out = sum over 32-wide K slices s:  (xq[:, s] * 2**ex[:, s]) . (wq[:, s] * 2**ew[:, s])

Both scales are powers of two, so each product term equals (xq * 2**ex) * (wq * 2**ew) exactly, and the
sum equals a GEMM of the *dequantized* operands: the activation is rounded to mxfp8 (e4m3 elements, e8m0
scale per 32, OCP MX v1.0) and written back as bf16 (e4m3 values times a power of two are exact in
bf16), then the fp4 weight-only GEMM runs on it. Correctness first: the QDQ pass costs one extra read
and write of the activations, negligible at decode sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import quantize as qz
from .common import cdiv, floor_log2, pow2, round_e4m3
from .wo_format import WoWeight
from .wo_gemm import check, launch as wo_launch, reference as wo_reference


@triton.jit
def _qdq_mxfp8_kernel(x_ptr, y_ptr, K, stride_xm, stride_ym, GROUPS_PER_PROG: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g0 = tl.program_id(1) * GROUPS_PER_PROG
    offs_g = g0 + tl.arange(0, GROUPS_PER_PROG)
    offs = offs_g[:, None] * 32 + tl.arange(0, 32)[None, :]
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12)
    e = floor_log2(amax) - 8  # e4m3 emax = 8
    y = round_e4m3(x * pow2(-e)[:, None]) * pow2(e)[:, None]
    tl.store(y_ptr + row * stride_ym + offs, y.to(tl.bfloat16), mask=mask)


def _qdq_impl(x: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    y = torch.empty((m, k), dtype=torch.bfloat16, device=x.device)
    gpp = 4
    _qdq_mxfp8_kernel[(m, cdiv(k // 32, gpp))](x, y, k, x.stride(0), y.stride(0), GROUPS_PER_PROG=gpp)
    return y


@torch.library.custom_op("quantc::qdq_mxfp8", mutates_args=())
def _qdq_op(x: torch.Tensor) -> torch.Tensor:
    return _qdq_impl(x)


@_qdq_op.register_fake
def _(x):
    return torch.empty_like(x, dtype=torch.bfloat16)


def qdq_mxfp8(x: torch.Tensor) -> torch.Tensor:
    """(.., K) -> bf16 (.., K) holding exactly the mxfp8 values of x (K a multiple of 32)."""
    k = x.shape[-1]
    if k % 32:
        raise ValueError(f"mxfp8 activations need K a multiple of 32, got K = {k}")
    qdq = torch.ops.quantc.qdq_mxfp8 if torch.compiler.is_compiling() else _qdq_impl  # eager: no op dispatch
    return qdq(x.reshape(-1, k).contiguous()).reshape(x.shape)


def launch(x: torch.Tensor, w: WoWeight, cfg) -> torch.Tensor:
    check(x, w)
    return wo_launch(qdq_mxfp8(x), w, cfg)


def reference(x: torch.Tensor, w: WoWeight) -> torch.Tensor:
    q, e = qz.quant_mx(x.reshape(-1, w.k).float(), 32)
    xd = q.float() * qz.e8m0_to_float(e).repeat_interleave(32, 1)
    return wo_reference(xd, w).reshape(*x.shape[:-1], w.n)
