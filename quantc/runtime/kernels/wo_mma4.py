"""Tensor-core weight-only GEMM for 4-bit weights (int4 sym/asym, mxfp4, nvfp4) with bf16 activations,
at every M, decode included. Same math and layouts as ``wo_gemm`` (its module docstring):

    out[m, n] = sum_k x[m, k] * (v(code[n, k]) - z[n, g]) * s[n, g]      (* global scale for nvfp4)

The packed weights are read as they are stored (checkpoint bytes seen as int32 words, no repack): a
(BLOCK_N, BLOCK_K/8) word tile per step, 16-byte loads. ``nibble_decode.decode_words`` turns each word
into its eight exact bf16 values, two consecutive elements per bf16x2 register, which is the order the
mma.sync operand holds them in (8 consecutive k per thread), so nothing is shuffled between the decode
and the tensor cores (M padded to 16): at decode the MMA is nearly free and the kernel is bound by
the weight bytes and the decode's integer instructions (~1.7 per int4 element, ~3 per e2m1 element).

Scales: when a K tile lies inside one scale group (int4 with G >= BLOCK_K) the scale multiplies the
fp32 partial sums once per tile and zero points enter as ``z * sum(x)`` of the tile; otherwise (mxfp4
G=32, nvfp4 G=16, int4 g32/g64 under a wider tile) the bf16 tile is scaled per element before the
MMA (exact for the fp4 formats: e2m1 x power-of-two or e4m3 fits bf16's mantissa; int4 rounds once,
as the reference's bf16 operand does).

SWAP computes out^T = W x^T instead (the weight as the MMA's M operand, wgmma with A in registers).
Split-K (decode shapes with few N tiles) reduces in the same launch: see ``split_workspace``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import cdiv, tile_counters
from .nibble_decode import USE_ASM, decode_words
from .wo_format import UPCAST_DOT, e8m0_bits_to_f32, group_scales_bf16, group_zeros, repeat_groups


@triton.jit
def _tile_scale(s_ptr, s_rows, n_mask, k0, SFMT: tl.constexpr, GROUP: tl.constexpr):
    """fp32 (BLOCK_N,) scales of a K tile that lies inside one group."""
    s = tl.load(s_ptr + s_rows + k0 // GROUP, mask=n_mask, other=0.0)
    if SFMT == 2:
        return e8m0_bits_to_f32(s)
    return s.to(tl.float32)


@triton.jit
def element_scales(s_ptr, s_rows, n_mask, k0, SFMT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    """bf16 (BLOCK_N, BLOCK_K) scales of a tile holding several groups, each group's scale decoded once
    then repeated over its elements."""
    NG: tl.constexpr = BLOCK_K // GROUP
    s = group_scales_bf16(s_ptr, s_rows, n_mask, k0, SFMT, GROUP, NG, False)
    if UPCAST:  # the interpreter has no bf16 arithmetic
        s = s.to(tl.float32)
    return repeat_groups(s, BLOCK_N, NG, GROUP)


@triton.jit
def element_zeros(z_ptr, s_rows, n_mask, k0, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  UPCAST: tl.constexpr):
    NG: tl.constexpr = BLOCK_K // GROUP
    z = group_zeros(z_ptr, s_rows, n_mask, k0, GROUP, NG)
    return repeat_groups(z.to(tl.float32) if UPCAST else z.to(tl.bfloat16), BLOCK_N, NG, GROUP)


@triton.jit
def tile_coords(M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """A program's output rows/columns (grid: N tiles, M tiles, K slices) and its range of K tiles
    (the launcher picks BLOCK_K dividing K)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t_start = tl.program_id(2) * per_split
    return offs_n, offs_m, offs_n < N, offs_m < M, t_start, tl.minimum(t_start + per_split, k_tiles)


@triton.jit
def _wo_mma4_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_sn, stride_om,
    FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
    HAS_GLOBAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    SWAP: tl.constexpr, ASM: tl.constexpr, UPCAST: tl.constexpr,
):
    PER_TILE: tl.constexpr = GROUP % BLOCK_K == 0
    BKW: tl.constexpr = BLOCK_K // 8
    offs_n, offs_m, n_mask, m_mask, t_start, t_end = tile_coords(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + tl.arange(0, BKW)[None, :]
    s_rows = offs_n.to(tl.int64) * stride_sn
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + tl.arange(0, BLOCK_K)[None, :]
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        xv = tl.load(x_rows + k0, mask=m_mask[:, None], other=0.0)
        words = tl.load(w_rows + k0 // 8, mask=n_mask[:, None], other=0)
        w = decode_words(words, FMT, not HAS_ZERO and FMT == 1, ASM)
        if not PER_TILE:  # bf16 products: exact for fp4 x (e8m0 | e4m3); int4 rounds once, like the reference
            s2 = element_scales(s_ptr, s_rows, n_mask, k0, SFMT, GROUP, BLOCK_N, BLOCK_K, UPCAST)
            if UPCAST:
                w = w.to(tl.float32)
            if HAS_ZERO:
                w = (w - element_zeros(z_ptr, s_rows, n_mask, k0, GROUP, BLOCK_N, BLOCK_K, UPCAST)) * s2
            else:
                w = w * s2
        if UPCAST:
            wd = w.to(tl.float32)
            xd = xv.to(tl.float32)
        else:
            wd = w
            xd = xv
        if SWAP:
            part = tl.dot(wd, tl.trans(xd))  # (BLOCK_N, BLOCK_M)
        else:
            part = tl.dot(xd, tl.trans(wd))  # (BLOCK_M, BLOCK_N)
        if PER_TILE:
            s = _tile_scale(s_ptr, s_rows, n_mask, k0, SFMT, GROUP)
            if HAS_ZERO:
                z = tl.load(z_ptr + s_rows + k0 // GROUP, mask=n_mask, other=0).to(tl.float32)
                xs = tl.sum(xv.to(tl.float32), axis=1)
                if SWAP:
                    part = part - z[:, None] * xs[None, :]
                else:
                    part = part - xs[:, None] * z[None, :]
            if SWAP:
                part = part * s[:, None]
            else:
                part = part * s[None, :]
        acc += part
    if HAS_GLOBAL:
        acc = acc * tl.load(gs_ptr)
    if SWAP:
        out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
        o_mask = n_mask[:, None] & m_mask[None, :]
    else:
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        o_mask = m_mask[:, None] & n_mask[None, :]
    if SWAP:
        ws_ptrs = ws_ptr + offs_m.to(tl.int64)[None, :] * N + offs_n[:, None]
    else:
        ws_ptrs = ws_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    store_or_reduce(acc, out_ptrs, ws_ptrs, o_mask, cnt_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0),
                    SPLIT_K)


@triton.jit
def store_or_reduce(acc, out_ptrs, ws_ptrs, o_mask, cnt_ptr, SPLIT_K: tl.constexpr):
    """Store the output tile, or with split-K add it into the zero-at-rest fp32 workspace: the program
    that arrives last for this tile (``cnt_ptr`` is its counter) writes the bf16 result and zeroes the
    workspace and the counter again, so one launch does it all (no memset or cast kernels around it:
    they cost more than the GEMM at decode)."""
    if SPLIT_K > 1:
        tl.atomic_add(ws_ptrs, acc, mask=o_mask, sem="relaxed")
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.load(ws_ptrs, mask=o_mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptrs, total.to(out_ptrs.dtype.element_ty), mask=o_mask)
            tl.store(ws_ptrs, 0.0, mask=o_mask)
            tl.atomic_xchg(cnt_ptr, 0)
    else:
        tl.store(out_ptrs, acc.to(out_ptrs.dtype.element_ty), mask=o_mask)


def tile_k(k: int, block_k: int) -> int:
    """The K tile launched: the config's (at least 32: one 16-deep MMA step, 4-byte decode packs),
    halved until it divides K. K is a multiple of 32 and groups are powers of two, so a tile either
    holds whole groups or lies inside one."""
    bk = max(32, block_k)
    while k % bk:
        bk //= 2
    return bk


def launch_mma4(x2: torch.Tensor, w, cfg, swap: bool | None = None) -> torch.Tensor:
    """bf16 (M, K) x 4-bit WoWeight (N, K) -> bf16 (M, N) on the tensor cores."""
    m, k = x2.shape
    bk = tile_k(k, cfg.block_k)
    if swap is None:
        swap = False  # measured: mma.sync with x as the A operand is a little faster at M = 1 and 16
    bm = 16 if m <= 16 else max(16, cfg.block_m)
    bn = max(16, cfg.block_n)
    if swap:
        bn = max(64, bn)
    split = max(1, min(cfg.split_k, k // bk))
    out, grid, args, meta = kernel_launch(x2, w, cfg, bm, bn, bk, split)
    common.launch(_wo_mma4_kernel, grid, args, dict(meta, SWAP=swap), cfg.num_warps, cfg.num_stages)
    return out


def kernel_launch(x2: torch.Tensor, w, cfg, bm: int, bn: int, bk: int, split: int):
    """What both 4-bit kernels (this one and ``wo_planes``) are launched with: the bf16 output, the grid
    (N tiles, M tiles, K slices), the positional arguments and the format / tile constexprs (warps and
    stages are ``cfg``'s)."""
    m, k = x2.shape
    n = w.n
    out = common.empty((m, n), torch.bfloat16, x2.device)
    grid = (cdiv(n, bn), cdiv(m, bm), split)
    ws, cnt = split_workspace(x2.device, m * n, grid[0] * grid[1]) if split > 1 else (out, out)
    data = w.data  # int32 words, eight codes each
    args = (x2, data, w.scale, w.zeros if w.zeros is not None else w.scale,
            w.global_scale if w.global_scale is not None else w.scale, out, ws, cnt,
            m, n, k, x2.stride(0), data.stride(0), w.scale.stride(0), out.stride(0))
    meta = dict(FMT=1 if w.fmt == 1 else 2, SFMT=w.sfmt, GROUP=w.group, HAS_ZERO=w.zeros is not None,
                HAS_GLOBAL=w.global_scale is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split,
                ASM=USE_ASM, UPCAST=UPCAST_DOT)
    return out, grid, args, meta


def split_workspace(device, numel: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K workspace (fp32 partial sums) and arrival counters (``common.tile_counters``, shared with
    ``scaled_mm``) of this device and stream (``common.workspace``), zero at rest: every split-K launch
    leaves them zeroed."""
    return common.workspace("split_sums", device, numel, torch.float32, zeroed=True), tile_counters(device, tiles)
