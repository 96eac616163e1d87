"""Persistent, TMA-fed variant of the 8-bit W8A8 GEMMs for large M (Hopper): one program per SM walks
the output tiles (GROUP_M-swizzled, stride = grid size) and loads its A and B tiles through device-side
tensor descriptors (``tl.make_tensor_descriptor``: TMA on sm_90, plain loads under the interpreter).
The flattened tile loop lets Triton's pipeliner overlap one tile's epilogue with the next tile's loads.

Covers the pre-quantized activation paths of ``scaled_mm`` (no fused quantizer, no split-K):
``fp8_scaled_gemm`` / ``int8_gemm`` (tensor or row x tensor or channel scales, applied once in the
epilogue) and ``fp8_block_gemm`` (1x128 x 128x128 scales, applied to each 128-wide K step's partial).
Same math and summation order per K step as ``scaled_mm._scaled_mm_kernel``.

TMA wants 16-byte aligned row strides: K a multiple of 16 (8-bit operands) and N of 8 (bf16 output);
``supported`` says when a call qualifies. The descriptors need a global scratch allocator, which
``common.ensure_tma_allocator`` installs once (Triton calls it per launch for the descriptors' 128-byte records;
the caching allocator serves it, also under CUDA-graph capture).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import cdiv, ensure_tma_allocator, grouped_tile, launch as launch_kernel, sm_count
from .scaled_mm import A_GROUP, A_ROW, A_TENSOR, B_BLOCK, B_CHANNEL, B_TENSOR, _add_scaled_partial, _epilogue


@triton.jit
def _scaled_mm_tma_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K, stride_sam, stride_sak, stride_sbn, stride_sbk, n_programs,
    A_MODE: tl.constexpr, B_MODE: tl.constexpr, INT8: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GROUP_K: tl.constexpr, GROUP_N: tl.constexpr,
):
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    acc_dtype = tl.int32 if INT8 else tl.float32
    for t in tl.range(tl.program_id(0), num_pid_m * num_pid_n, n_programs, flatten=True):
        pid_m, pid_n = grouped_tile(t, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        for ki in range(0, k_tiles):
            a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            b = b_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
            if B_MODE == 3:  # 128x128 weight blocks x 1x128 activation groups: scale each K step's partial
                kg = (ki * BLOCK_K) // GROUP_K
                sa_k = tl.load(sa_ptr + offs_m * stride_sam + kg * stride_sak, mask=mask_m, other=0.0)
                acc = _add_scaled_partial(acc, tl.dot(a, b.T), sa_k, sb_ptr, pid_n, offs_n, mask_n, kg,
                                          stride_sbn, stride_sbk, A_MODE, False, GROUP_N, BLOCK_N)
            else:
                acc = tl.dot(a, b.T, acc, out_dtype=acc_dtype)
        if B_MODE == 3:
            out = acc
            if HAS_BIAS:
                out = out + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        else:
            out = _epilogue(acc, 0.0, sa_ptr, sb_ptr, bias_ptr, offs_m[:, None], offs_n[None, :],
                            mask_m[:, None], mask_n[None, :], stride_sam, stride_sbn,
                            A_MODE, B_MODE, False, HAS_BIAS)
        c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], out.to(tl.bfloat16))


# (A mode, B mode) pairs this kernel runs: pre-quantized activations only
PAIRS = {(A_TENSOR, B_TENSOR), (A_TENSOR, B_CHANNEL), (A_ROW, B_TENSOR), (A_ROW, B_CHANNEL), (A_GROUP, B_BLOCK)}


def supported(a_mode: int, b_mode: int, mx: bool, n: int, k: int, config) -> bool:
    """Whether a pre-quantized call can take this kernel (TMA alignment, no split-K, whole groups)."""
    if (a_mode, b_mode) not in PAIRS or mx or config.split_k > 1 or k % 16 or n % 8:
        return False
    return b_mode != B_BLOCK or (config.block_k <= 128 and 128 % config.block_k == 0)


def num_programs(device: torch.device, tiles: int) -> int:
    if device.type != "cuda":
        return min(tiles, 4)  # the interpreter: a few programs, each walking several tiles
    return min(tiles, sm_count(device))


def launch(a, weight, sa, weight_scale, bias, a_mode, b_mode, int8, group_k, group_n, config, out):
    """out (M, N) bf16 = scaled a @ weight.T; ``sa`` / ``weight_scale`` as ``scaled_mm`` passes them."""
    ensure_tma_allocator()
    m, k = a.shape
    n = weight.shape[0]
    sa2 = sa if sa.dim() == 2 else sa.reshape(-1, 1)
    sb2 = weight_scale if weight_scale.dim() == 2 else weight_scale.reshape(-1, 1)
    programs = num_programs(a.device, cdiv(m, config.block_m) * cdiv(n, config.block_n))
    # common.launch: Triton's per-call binding cost ~40 us of host time, paid per linear in eager prefill
    launch_kernel(_scaled_mm_tma_kernel, (programs,), (
        a, weight, out, sa, weight_scale, bias if bias is not None else out,
        m, n, k, sa2.stride(0), sa2.stride(1), sb2.stride(0), sb2.stride(1), programs,
    ), dict(
        A_MODE=a_mode, B_MODE=b_mode, INT8=int8, HAS_BIAS=bias is not None,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
        GROUP_K=group_k, GROUP_N=group_n,
    ), config.num_warps, config.num_stages)
    return out
