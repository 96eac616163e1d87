"""Weight-only GEMM: bf16 activations x int4 / mxfp4 / nvfp4 (and fp8 / int8) weights, dequantized in
registers. Kernel ids ``int4_weight_only_gemm`` and ``fp4_weight_only_gemm``.

    out[m, n] = sum_k x[m, k] * deq(w)[n, k]          deq(w)[n, k] = v(code[n, k]) * s[n // RB, k // G]
                                                          (* global scale for nvfp4)

with v the signed int4 code (or code - zero point) or the e2m1 value. Layouts: ``wo_format``.

Decode (M <= 16) is bandwidth-bound: a program owns BLOCK_N rows of the weight and a slice of K
(split-K, partial sums added with fp32 atomics when SPLIT_K > 1); each row's K tile is one contiguous
run of 32-bit words. At M = 1 the product is a plain multiply-and-reduce in fp32 (no tensor cores, no
padding of M); for M > 1 it is ``tl.dot`` with M padded to at least 16. Where a K tile lies inside one
scale group (int4 with G >= BLOCK_K) the scale is applied once per tile to the partial sums, so the
inner loop is only shift, mask, convert and multiply-add.
"""

from __future__ import annotations

import os
import torch
import triton
import triton.language as tl

from ...plan import KernelConfig as WoConfig  # stdlib-only; any object with these fields works
from .wo_format import FP8, INT8, WoWeight, decode_elements, dequant_tile, dequantize, load_tile_scales
from .wo_mma4 import launch_mma4

# The CPU interpreter mis-computes tl.dot on bf16 operands (it sees raw bits); upcast there only.
UPCAST_DOT = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _wo_gemm_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr,      # activations, weight words, scales, zeros, global, out
    M, N, K,
    stride_xm, stride_wn, stride_sn, stride_om,
    FMT: tl.constexpr, SFMT: tl.constexpr, PACK: tl.constexpr,
    GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_GLOBAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    BKW: tl.constexpr = BLOCK_K // PACK
    PER_TILE: tl.constexpr = GROUP % BLOCK_K == 0
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_w = tl.arange(0, BKW)
    n_mask = offs_n < N
    m_mask = offs_m < M
    KW = K // PACK
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t_end = tl.minimum((pid_k + 1) * per_split, k_tiles)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    s_rows = (offs_n // ROW_BLOCK).to(tl.int64) * stride_sn
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc2 = tl.zeros((BLOCK_N, BKW), tl.float32)  # M = 1: elementwise partial sums, reduced once at the end
    for t in range(pid_k * per_split, t_end):
        kw = t * BKW + offs_w
        k_mask = kw < KW
        words = tl.load(w_rows + kw[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        s, z = load_tile_scales(s_ptr, z_ptr, s_rows, n_mask, kw, k_mask, t, SFMT, PACK, GROUP, HAS_ZERO, BLOCK_K)
        if BLOCK_M == 1:
            part2 = tl.zeros((BLOCK_N, BKW), tl.float32)
            for j in tl.static_range(PACK):
                v = decode_elements(words, z, j, FMT, HAS_ZERO)
                if not PER_TILE:
                    v = v * s
                xv = tl.load(x_rows + (kw * PACK + j)[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                part2 += v * xv.to(tl.float32)
            if PER_TILE:
                acc2 += part2 * s[:, None]
            else:
                acc2 += part2
        else:
            w = dequant_tile(words, s, z, FMT, HAS_ZERO, not PER_TILE, PACK)
            xk = t * BLOCK_K + tl.arange(0, BLOCK_K)
            xv = tl.load(x_rows + xk[None, :], mask=m_mask[:, None] & (xk < K)[None, :], other=0.0)
            if UPCAST:
                part = tl.dot(xv.to(tl.float32), tl.trans(w))
            else:
                part = tl.dot(xv, tl.trans(w.to(tl.bfloat16)))
            if PER_TILE:
                acc += part * s[None, :]
            else:
                acc += part
    if BLOCK_M == 1:
        acc = tl.sum(acc2, axis=1)[None, :]
    if HAS_GLOBAL:
        acc = acc * tl.load(gs_ptr)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    o_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(out_ptrs, acc, mask=o_mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def effective_blocks(m: int, pack: int, cfg) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_K) actually launched: BLOCK_M = 1 (the reduce path) at M = 1, else at least 16
    (tl.dot); BLOCK_K at least 16 words' worth on the dot path and a multiple of the pack."""
    if m == 1:
        return 1, max(cfg.block_k, pack)
    return max(16, cfg.block_m), max(cfg.block_k, 16 * pack)


def _launch(x2, data, scale, zeros, gscale, fmt, sfmt, pack, group, row_block, n, cfg) -> torch.Tensor:
    m, k = x2.shape
    if pack == 8:  # 4-bit: the tensor-core kernel with the bf16x2 nibble decode
        w = WoWeight(fmt, n, k, data, scale, sfmt, group, row_block, zeros, gscale)
        return launch_mma4(x2, w, cfg)
    bm, bk = effective_blocks(m, pack, cfg)
    split = max(1, min(cfg.split_k, triton.cdiv(k, bk)))
    out = (torch.zeros if split > 1 else torch.empty)((m, n), dtype=torch.float32 if split > 1 else torch.bfloat16,
                                                      device=x2.device)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, bm), split)
    _wo_gemm_kernel[grid](
        x2, data, scale if scale is not None else data, zeros if zeros is not None else data,
        gscale if gscale is not None else data, out,
        m, n, k, x2.stride(0), data.stride(0), scale.stride(0) if scale is not None else 0, out.stride(0),
        FMT=fmt, SFMT=sfmt, PACK=pack, GROUP=group, ROW_BLOCK=row_block,
        HAS_ZERO=zeros is not None, HAS_GLOBAL=gscale is not None,
        BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=bk, SPLIT_K=split, UPCAST=UPCAST_DOT,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(torch.bfloat16) if split > 1 else out


@torch.library.custom_op("quantc::wo_gemm", mutates_args=())
def _wo_gemm_op(
    x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor | None, zeros: torch.Tensor | None,
    gscale: torch.Tensor | None, fmt: int, sfmt: int, pack: int, group: int, row_block: int, n: int,
    block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int, split_k: int,
) -> torch.Tensor:
    cfg = WoConfig(block_m, block_n, block_k, num_warps=num_warps, num_stages=num_stages, split_k=split_k)
    return _launch(x, data, scale, zeros, gscale, fmt, sfmt, pack, group, row_block, n, cfg)


@_wo_gemm_op.register_fake
def _(x, data, scale, zeros, gscale, fmt, sfmt, pack, group, row_block, n, *cfg):
    return x.new_empty((x.shape[0], n), dtype=torch.bfloat16)


def check(x: torch.Tensor, w: WoWeight) -> None:
    if w.data.dim() != 2:
        raise ValueError(f"wo_gemm takes one (N, K) weight, got data of shape {tuple(w.data.shape)}")
    if x.shape[-1] != w.k:
        raise ValueError(f"activation has K = {x.shape[-1]}, the weight K = {w.k}")
    if w.k % w.pack or (w.fmt not in (FP8, INT8) and w.k % 32 and w.pack > 1):
        raise ValueError(f"K = {w.k} is not a multiple of 32 (4-bit weights need whole words)")


def launch(x: torch.Tensor, w: WoWeight, cfg) -> torch.Tensor:
    """bf16 (.., K) x WoWeight (N, K) -> bf16 (.., N). ``cfg`` is the plan's KernelConfig for M."""
    check(x, w)
    if w.k_perm is not None:
        x = x.index_select(-1, w.k_perm)
    x2 = x.reshape(-1, w.k).to(torch.bfloat16).contiguous()
    out = torch.ops.quantc.wo_gemm(
        x2, w.data, w.scale, w.zeros, w.global_scale, w.fmt, w.sfmt, w.pack, w.group, w.row_block, w.n,
        cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, cfg.split_k,
    )
    return out.reshape(*x.shape[:-1], w.n)


def reference(x: torch.Tensor, w: WoWeight) -> torch.Tensor:
    """fp32 x @ dequantized(w).T, the same math in plain torch."""
    if w.k_perm is not None:
        x = x.index_select(-1, w.k_perm)
    return x.float() @ dequantize(w).T


def _split(n: int, k: int, bn: int, bk: int, sms: int) -> int:
    """K slices so that the grid covers the SMs about twice (decode shapes have few N tiles)."""
    return max(1, min(triton.cdiv(2 * sms, triton.cdiv(n, bn)), k // bk, 16))


def default_config(m: int, n: int, k: int, sms: int = 132) -> WoConfig:
    """A reasonable config without a tuned table. 4-bit weights at M <= 16 run swap-AB on 64 weight rows
    per program; split-K covers the SMs where N alone does not."""
    if m <= 16:  # measured on an H100 (bench/results/wo_h100.json): 64 x 256 tiles, split-K on small N
        return WoConfig(16, 64, 256, num_warps=4, num_stages=3, split_k=_split(n, k, 64, 256, sms))
    if m <= 64:
        return WoConfig(64, 128, 128, num_warps=4, num_stages=3, split_k=_split(n, k, 128, 128, sms))
    return WoConfig(64, 128, 128, num_warps=4, num_stages=3)


def candidates(m: int, n: int, k: int, sms: int = 132) -> list[WoConfig]:
    """Configs ``quantc tune`` (and the bench) try for one (M, N, K)."""
    if m <= 16:
        tiles = [(32, 256, 4), (64, 256, 4), (128, 128, 4), (128, 256, 8)]
        bm = 16
    else:
        tiles = [(64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8)]
        bm = 64 if m <= 64 else 128
    out = []
    for bn, bk, warps in tiles:
        if bk > k:
            continue
        split = _split(n, k, bn, bk, sms) if m <= 256 else 1
        out.append(WoConfig(bm, bn, bk, num_warps=warps, num_stages=3, split_k=split))
        if split > 1 and m <= 16 and bn in (32, 64):
            out.append(WoConfig(bm, bn, bk, num_warps=warps, num_stages=4, split_k=1))
    return out
