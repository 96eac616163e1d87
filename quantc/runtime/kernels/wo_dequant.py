"""4-bit weights at prefill sizes: dequantize the whole (N, K) weight to bf16 in one bandwidth-bound pass,
then one bf16 cuBLAS GEMM. At M in the thousands the GEMM is compute-bound and the in-kernel decode of
``wo_mma4`` sits on its critical path: an H100 profile of a two-layer Llama w4a16 prefill (2048 tokens,
bench/e2e_profile.py) spent 8.6 ms in ``_wo_mma4_kernel`` against 2.2 ms of cuBLAS bf16 for the same
GEMMs. Dequantizing costs 2.5 bytes a weight of traffic (0.5 read, 2 written) plus the GEMM's read of the
bf16 copy, small next to 2 * M FLOPs a weight at these M. The bf16 copy is a transient of N * K * 2 bytes
from the caching allocator.

The values are the reference's ``code * scale`` (``- zero`` first for asymmetric int4, ``* global`` for
nvfp4) rounded once to bf16, the operand precision of every other bf16 path.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from .common import cdiv, empty, env, launch, round_bf16, torch_op
from .nibble_decode import USE_ASM, decode_words
from .wo_format import INT4
from .wo_mma4 import element_scales, element_zeros

# smallest M that takes this path on a GPU (QUANTC_DEQUANT_MIN_M overrides it; set it above any M to turn the path
# off). bench/dequant_probe.py on an H200 (bench/results/dequant_probe_h200.json): the dequantized operand is bit-
# identical to the reference on the GPU (PTX decode), and this path beats wo_mma4's best config on every shape and
# format from M = 256 on (1.03x-1.61x at 256, 1.5x-2.4x at 1024-8192); at M = 64 it loses (0.4x-0.5x)
DEQUANT_MIN_M = 256
DEQUANT_DEFAULT_ON = True
BLOCK_N = 32


@triton.jit
def _dequant_kernel(
    w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, N, K, stride_wn, stride_sn, stride_on, GS_ROWS,
    FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_GLOBAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k0 = tl.program_id(1) * BLOCK_K
    words = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + k0 // 8 + tl.arange(0, BLOCK_K // 8)[None, :],
                    mask=n_mask[:, None], other=0)
    w = decode_words(words, FMT, not HAS_ZERO and FMT == 1, ASM).to(tl.float32)
    s_rows = offs_n.to(tl.int64) * stride_sn
    s = element_scales(s_ptr, s_rows, n_mask, k0, SFMT, GROUP, BLOCK_N, BLOCK_K, True)  # fp32
    if HAS_ZERO:
        w = (w - element_zeros(z_ptr, s_rows, n_mask, k0, GROUP, BLOCK_N, BLOCK_K, True)) * s
    else:
        w = w * s
    if HAS_GLOBAL:  # one global scale per GS_ROWS rows (an expert's)
        w = w * tl.load(gs_ptr + offs_n // GS_ROWS, mask=n_mask, other=0.0)[:, None]
    out = out_ptr + offs_n.to(tl.int64)[:, None] * stride_on + k0 + tl.arange(0, BLOCK_K)[None, :]
    tl.store(out, round_bf16(w).to(tl.bfloat16), mask=n_mask[:, None])


def block_k(k: int) -> int:
    """The widest K tile (128, 64 or 32) dividing K (4-bit K is a multiple of 32). It holds whole scale
    groups: a group (16-128) divides K, so it is at most the widest of these that does."""
    return next(b for b in (128, 64, 32) if k % b == 0)


def dequantize_bf16(w) -> torch.Tensor:
    """A 4-bit WoWeight (N, K) -> bf16 (N, K) on its device; a stack of experts (E, N, K) -> bf16 (E, N, K)
    in one launch (its rows taken as E * N rows, nvfp4's global scale per expert)."""
    n, k = w.n, w.k
    lead = w.data.shape[:-1]  # (N,) or (E, N)
    rows = lead.numel()
    data, scale = w.data.reshape(rows, -1), w.scale.reshape(rows, -1)
    zeros = w.zeros.reshape(rows, -1) if w.zeros is not None else scale
    bk = block_k(k)
    out = empty((rows, k), torch.bfloat16, w.data.device)
    launch(_dequant_kernel, (cdiv(rows, BLOCK_N), k // bk), (
        data, scale, zeros, w.global_scale if w.global_scale is not None else scale, out,
        rows, k, data.stride(0), scale.stride(0), out.stride(0),
        n if w.global_scale is not None and w.global_scale.numel() > 1 else rows,
    ), dict(
        FMT=1 if w.fmt == INT4 else 2, SFMT=w.sfmt, GROUP=w.group, HAS_ZERO=w.zeros is not None,
        HAS_GLOBAL=w.global_scale is not None, BLOCK_N=BLOCK_N, BLOCK_K=bk, ASM=USE_ASM,
    ), 4)
    return out.view(*lead, k)


def uses_dequant(m: int, device: torch.device) -> bool:
    """The launcher's policy: QUANTC_DEQUANT_MIN_M=N takes this path from M = N on (0: everywhere, the
    interpreter included); unset, from DEQUANT_MIN_M on a GPU (the interpreter keeps wo_mma4, which the
    CPU tests cover at every M)."""
    forced = env("QUANTC_DEQUANT_MIN_M")
    if forced is not None:
        return m >= int(forced)
    return DEQUANT_DEFAULT_ON and m >= DEQUANT_MIN_M and device.type == "cuda"


def launch_dequant(x2: torch.Tensor, w) -> torch.Tensor:
    """bf16 (M, K) x 4-bit WoWeight (N, K) -> bf16 (M, N): dequantize, then torch.matmul (cuBLAS)."""
    return torch_op(torch.matmul, x2, dequantize_bf16(w).T)
