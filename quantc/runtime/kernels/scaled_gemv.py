"""Dense scaled GEMV for decode (Triton): ``scaled_mm``'s math on CUDA cores, one activation row a program.

At M <= 4 a tensor-core tile pads the activation to 16 rows; decode only needs the weight streamed once
at full bandwidth. Here each thread loads 16-byte vectors of a weight row (K contiguous) and the
matching activation elements, multiplies them in fp32 (int32 for int8 x int8: its sum stays exact),
sums its own products and keeps one running sum per vector position; the reduction across threads runs
once, after the K loop. Few registers a thread, so many programs an SM keep enough loads in flight.
A config with ``block_m`` = 1 selects it (``scaled_mm`` dispatches); the grid is (rows, N tiles, K
slices), rows fastest, so the programs that read one weight tile for different rows run together.

Modes are ``scaled_mm``'s (A none / tensor / row / 1x128 group; B tensor / channel / 128x128 block), with
the same scale placement: per-tensor / row / channel scales in the epilogue after the whole K sum, group
and block scales on each K step's partial sums. mx (e8m0) pairs stay on the tensor-core kernel.

The quantizer is not fused here: the activation is read once per weight row of a tile (the layout that
keeps every sum in registers), so a fused quantizer rounds each element BLOCK_N times; on the H100 that
made the layer 2.3-2.8x slower than the separate quantizer's launch plus this kernel
(bench/results/gemv_probe_h100.json). A forced ``fuse=True`` runs the tile kernel's fused path.

Split-K as in ``scaled_mm``: slices of whole K tiles, raw partials to ``ws[s, m, n]``, the slice that
arrives last on the tile's counter sums them in slice order (deterministic) and runs the epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import cdiv, k_slice, split_k_reduce, tile_counters
from .scaled_mm import _epilogue  # one epilogue for both kernels (scaled_mm imports this module lazily)


@triton.jit
def _load_a(ptrs, k, k_end, A_VEC: tl.constexpr, TWO_HALVES: tl.constexpr):
    """The activation of a step at offsets ``k`` (< ``k_end``): one load, or the two halves of each chunk
    (the second is 0 without them). Kept in L2 (every program of the row reads it)."""
    a = tl.load(ptrs, mask=k < k_end, other=0.0, eviction_policy="evict_last")
    a2 = 0.0
    if TWO_HALVES:
        a2 = tl.load(ptrs + A_VEC, mask=k + A_VEC < k_end, other=0.0, eviction_policy="evict_last")
    return a, a2


@triton.jit
def _gemv_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, ws_ptr, cnt_ptr,
    M, N, K,
    stride_am, stride_bn, stride_cm, stride_cn,
    stride_sam, stride_sak, stride_sbn, stride_sbk,
    A_MODE: tl.constexpr, B_MODE: tl.constexpr, INT8: tl.constexpr, GROUP_K: tl.constexpr,
    GROUP_N: tl.constexpr, HAS_BIAS: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, EVICT: tl.constexpr,
):
    # rows of the activation vary fastest over the grid: the programs of one weight tile run together
    # and share its bytes through L2
    row = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    t_start, t_end = k_slice(K, pid_k, BLOCK_K, SPLIT_K)
    # the (BLOCK_N, BLOCK_K) weight tile as CHUNKS = BLOCK_N * BLOCK_K / VEC rows of VEC consecutive K
    # elements (a 16-byte load of 8-bit weights): chunk c is weight row c // (BLOCK_K / VEC), K offset
    # (c % (BLOCK_K / VEC)) * VEC. The activation is read in the same shape (L1 serves the repeats), so
    # product, sum over VEC and running sum stay in the thread that loaded the bytes. A bf16 activation
    # (weight-only) is 32 bytes a chunk, two 16-byte loads of A_VEC elements: one (CHUNKS, VEC) bf16 load
    # would get a layout of 8 elements a thread (Triton's widest vector) and every step would convert
    # the fp8 tile to it through shared memory; the weight tile is split in registers instead
    VEC: tl.constexpr = min(16, BLOCK_K)
    TWO_HALVES: tl.constexpr = A_MODE == 0 and VEC == 16
    A_VEC: tl.constexpr = VEC // 2 if TWO_HALVES else VEC
    PER_ROW: tl.constexpr = BLOCK_K // VEC
    CHUNKS: tl.constexpr = BLOCK_N * PER_ROW
    chunk = tl.arange(0, CHUNKS)
    offs_n_c = pid_n * BLOCK_N + chunk // PER_ROW  # each chunk's weight row
    k_c = (chunk % PER_ROW) * VEC
    mask_n_c = offs_n_c < N
    k_in = k_c[:, None] + tl.arange(0, VEC)[None, :]  # (CHUNKS, VEC): K offsets within a step; unit stride
    ka_in = k_c[:, None] + tl.arange(0, A_VEC)[None, :]  # the activation's (first half's) offsets
    a_ptrs = a_ptr + row.to(tl.int64) * stride_am + t_start * BLOCK_K + ka_in
    b_ptrs = b_ptr + offs_n_c[:, None].to(tl.int64) * stride_bn + t_start * BLOCK_K + k_in
    ONE_SB: tl.constexpr = GROUP_N % BLOCK_N == 0  # a block-scaled tile inside one block row

    acc_dtype = tl.int32 if INT8 else tl.float32
    acc = tl.zeros((CHUNKS,), dtype=acc_dtype)
    # each weight byte is read once a call: streamed past L2 (EVICT) ahead of the activation, which every
    # program of the row reads. PREFETCH: the next step's loads are issued before this step's products,
    # two tiles in flight a thread (Triton pipelines only loads that feed a dot)
    # the slice's end: past it a prefetch loads nothing (the step after a slice's last)
    k_end = K if SPLIT_K == 1 else tl.minimum(K, t_end * BLOCK_K)
    k0 = t_start * BLOCK_K
    if PREFETCH:
        a_nxt, a2_nxt = _load_a(a_ptrs, k0 + ka_in, k_end, A_VEC, TWO_HALVES)
        b_nxt = tl.load(b_ptrs, mask=mask_n_c[:, None] & (k0 + k_in < k_end), other=0.0, eviction_policy=EVICT)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        if PREFETCH:
            a = a_nxt
            a2 = a2_nxt
            b = b_nxt
            k1 = k0 + BLOCK_K
            a_nxt, a2_nxt = _load_a(a_ptrs + BLOCK_K, k1 + ka_in, k_end, A_VEC, TWO_HALVES)
            b_nxt = tl.load(b_ptrs + BLOCK_K, mask=mask_n_c[:, None] & (k1 + k_in < k_end), other=0.0,
                            eviction_policy=EVICT)
        else:
            a, a2 = _load_a(a_ptrs, k0 + ka_in, K, A_VEC, TWO_HALVES)
            b = tl.load(b_ptrs, mask=mask_n_c[:, None] & (k0 + k_in < K), other=0.0, eviction_policy=EVICT)
        if INT8:
            acc += tl.sum(a.to(tl.int32) * b.to(tl.int32), axis=1)
        else:
            if TWO_HALVES:  # the weight tile's two halves, split in registers (each thread holds its 16 bytes)
                b_lo, b_hi = tl.split(tl.permute(tl.reshape(b, (CHUNKS, 2, A_VEC)), (0, 2, 1)))
                part = tl.sum(a.to(tl.float32) * b_lo.to(tl.float32), axis=1) + \
                    tl.sum(a2.to(tl.float32) * b_hi.to(tl.float32), axis=1)
            else:
                part = tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=1)
            if A_MODE == 3:  # the activation's group scale, one number a K step (BLOCK_K divides the group)
                part = part * tl.load(sa_ptr + row * stride_sam + (k0 // GROUP_K) * stride_sak)
            if B_MODE == 3:
                sb_k = sb_ptr + (k0 // GROUP_K) * stride_sbk
                if ONE_SB:
                    part = part * tl.load(sb_k + ((pid_n * BLOCK_N) // GROUP_N) * stride_sbn)
                else:
                    part = part * tl.load(sb_k + (offs_n_c // GROUP_N) * stride_sbn, mask=mask_n_c, other=0.0)
            acc += part
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    acc = tl.sum(tl.reshape(acc, (1, BLOCK_N, PER_ROW)), axis=2)  # (1, BLOCK_N): the one cross-thread sum

    offs_m = row + tl.arange(0, 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    o_mask = mask_m[:, None] & mask_n[None, :]
    last = True
    if SPLIT_K > 1:
        ws_tile = ws_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        acc, last = split_k_reduce(acc, ws_tile, o_mask, cnt_ptr + pid_n * M + row, pid_k, M * N, SPLIT_K)
    if last:
        out = _epilogue(acc, 0.0, sa_ptr, sb_ptr, bias_ptr, offs_m[:, None], offs_n[None, :],
                        mask_m[:, None], mask_n[None, :], stride_sam, stride_sbn,
                        A_MODE, B_MODE, False, HAS_BIAS)
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=o_mask)


def launch(a: torch.Tensor, weight: torch.Tensor, sa: torch.Tensor, weight_scale: torch.Tensor,
           bias: torch.Tensor | None, a_mode: int, b_mode: int, int8: bool, group_k: int, group_n: int,
           block_k: int, config, split: int, out: torch.Tensor, evict: str = "evict_first") -> torch.Tensor:
    """``out`` (M, N) from the already quantized activation ``a`` (bf16 for weight-only) and its scales
    ``sa``; ``config.num_stages`` >= 2 prefetches a K step ahead. ``evict``: the weight loads' L2
    eviction policy ("" for none; benchmarks compare)."""
    a = a if a.stride(1) == 1 else a.contiguous()  # (M, K): a small copy; weights must be K-contiguous
    m, k = a.shape
    n = weight.shape[0]
    grid = (m, cdiv(n, config.block_n), split)
    ws = cnt = out  # placeholders without split-K
    if split > 1:
        ws = common.empty(split * m * n, torch.int32 if int8 else torch.float32, a.device)
        cnt = tile_counters(a.device, grid[0] * grid[1])
    sa2 = sa if sa.dim() == 2 else sa.reshape(-1, 1)
    sb2 = weight_scale if weight_scale.dim() == 2 else weight_scale.reshape(-1, 1)
    common.launch(_gemv_kernel, grid, (
        a, weight, out, sa, weight_scale, bias if bias is not None else out, ws, cnt,
        m, n, k,
        a.stride(0), weight.stride(0), out.stride(0), out.stride(1),
        sa2.stride(0), sa2.stride(1), sb2.stride(0), sb2.stride(1),
    ), dict(
        A_MODE=a_mode, B_MODE=b_mode, INT8=int8, GROUP_K=group_k, GROUP_N=group_n,
        HAS_BIAS=bias is not None, PREFETCH=config.num_stages >= 2,
        BLOCK_N=config.block_n, BLOCK_K=block_k, SPLIT_K=split, EVICT=evict,
    ), config.num_warps, 1)
    return out


def runs(config, mx: bool, fused: bool, weight: torch.Tensor) -> bool:
    """Whether ``scaled_mm`` takes this kernel: a config of one row a program (``block_m`` = 1), not an
    mx pair, not the fused quantizer, a weight whose K is the unit-stride axis (a transposed view would
    need a copy of the weight a call; the tile kernel reads it as it is)."""
    return config.block_m == 1 and not mx and not fused and weight.stride(1) == 1
