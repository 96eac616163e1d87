"""4-bit weight-only GEMV for decode (one or two rows) on CUDA cores, packed half2 arithmetic (Gluon + PTX on the GPU).

``wo_gemm``'s math for int4 weights (symmetric, or codes with zero points; groups of 32 or more), mxfp4
(e2m1 codes, e8m0 scales per 32: see WORD_DOT_E2M1) and nvfp4 (e4m3 scales per 16, fp32 global scale), and
one bf16 activation row:

    out[n] = sum_k x[k] * (v(code[n, k]) - z[n, g]) * s[n, g]

The tensor-core kernels pay for the MMA's operand layout (``wo_planes``: ~3.7 instructions an element for
symmetric codes at one row, ~120 registers a thread); a GEMV needs none of it. Each thread loads a 16-byte
*chunk* of a weight row (4 words, 32 elements, inside one scale group), and one PTX block per word turns
its eight nibbles into four half2 registers and multiplies them with the activation:

- the decode and half2 products of ``half2_ptx`` (``lop3`` under an fp16 magic for int4, a bytewise transform
  and ``prmt`` for e2m1), four half2 FMAs with the activation packed as (x[8c + j], x[8c + j + 4]), the two
  halves then added in fp32.

That is ~16 instructions for 8 elements; by default (``gemv_chain``) a chunk's four words chain their products in
one half2 accumulator and convert to fp32 once (``CHUNK_DOT_*``; nvfp4 two words, one scale group: ``PAIR_DOT_*``),
~13 for 8. fp16 has the precision but not bf16's range, so each chunk's 32
activation values are scaled by a power of two r first (max |x r| in [128, 256): a half's 16 chained products of
|q| <= 15 stay under 61440 < 65504, and x r is exact: bf16's 8-bit mantissa fits fp16's 11), and the chunk's
fp32 sum takes s / r. Products round to fp16 (relative 2**-11) and a half adds 4 (16 chained) of them in fp16:
about 1e-3 (2e-3) relative to their sum, under bf16's output rounding.

The tile is (BLOCK_N rows, BLOCK_K / 32 chunks, 4 words); a warp's lanes take BLOCK_K / 32 consecutive
chunks of 1024 / BLOCK_K rows, and each thread repeats over ROWS rows with the same chunk position, so the
activation is loaded (two 8-byte loads a word, in the layout without the rows: broadcast in registers),
scaled and packed once a thread for all its rows; the next K step's words and
activations load while this one computes (num_stages >= 2). Each chunk keeps a running fp32 sum; the
reduction across threads runs once, after the K loop. Split-K as ``wo_mma4`` (``store_or_reduce``).

Two activation rows (``_wo_gemv_rows_gluon_kernel``, up to GEMV_ROWS_MAX) share a program: the word dot runs as
two asm blocks, the decode (DECODE_*) once a word and the half2 products (DOT_HALF2) once a row, the rows a
leading axis of each thread's registers.

The GPU kernel is Gluon (``_wo_gemv_gluon_kernel``), which states that layout; the same steps in Triton
(``_wo_gemv_kernel``) run under ``TRITON_INTERPRET``, the PTX replaced by plain Triton (fp32 products; the
packing keeps the fp16 rounding of x r), so CI checks the indexing, scales, zero points and split-K, and
tests/runtime/test_wo_gemv.py emulates the PTX in numpy. ``uses_gemv`` is ``wo_gemm``'s policy and
``gemv_config`` its launch (measured on the H100: bench/results/wo_gemv_probe_h100_s19*.json,
wo_h100_s19_gemv_final_m1.json).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from ...kernel_specs import GEMV_ROWS
from ...plan import KernelConfig
from . import common
from .common import cdiv, env, sm_count
from .half2_ptx import (DOT_HALF2, E2M1_UNSCALE, X_EXP_E2M1, X_EXP_INT4, e2m1_prmt, gl_bf16_pair, gl_chunk_dot,
                        gl_decode, gl_pack, gl_pair_dot, gl_word_dot, half_of, pack_half2)
from .nibble_decode import e2m1_to_f32
from .wo_format import INT4, MXFP4, NVFP4, S_E8M0, S_FLOAT
from .wo_mma4 import split_workspace, store_or_reduce

CHUNK = tl.constexpr(32)  # elements a thread loads of a row a step: 4 int32 words, 16 bytes

@triton.jit
def _word_dot(words, p0, p1, p2, p3, z, HAS_ZERO: tl.constexpr, FMT: tl.constexpr):
    """fp32 sum of each word's eight (code - zero) x activation products (packs as in the module doc); e2m1
    (FMT >= 2): value x 2**-14 x activation. The word-dot PTX in plain Triton (fp32 products); the packs may
    carry a leading axis of activation rows (the result takes it by broadcasting)."""
    total = 0.0
    for j in tl.static_range(4):
        p = p0 if j == 0 else (p1 if j == 1 else (p2 if j == 2 else p3))
        for h in tl.static_range(2):  # h = 0: nibble j (low half), 1: nibble j + 4 (high half)
            c = (words >> (4 * j + 16 * h)) & 15
            if FMT >= 2:
                q = e2m1_to_f32(c) * (1.0 / E2M1_UNSCALE)
            elif HAS_ZERO:
                q = c.to(tl.float32) - z
            else:
                q = ((c ^ 8) - 8).to(tl.float32)
            total += q * half_of(p, h == 1)
    return total


@triton.jit
def _chunk_scale(ptrs, mask, FMT: tl.constexpr):
    """fp32 scale of each (row, chunk): bf16 (int4), or e8m0 bits times E2M1_UNSCALE (mxfp4)."""
    if FMT == 2:
        return (tl.load(ptrs, mask=mask, other=0).to(tl.int32) << 23).to(tl.float32, bitcast=True) * E2M1_UNSCALE
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _pair_operands(pid, P, A_DIV, e_ptr, x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, N, stride_xm,
                   stride_we, stride_se):
    """A grouped (MoE) program's N tile and operands: pair p = pid % P (pairs vary fastest over the grid), its
    expert's weight / scale / zero-point / global-scale stacks, x row p // A_DIV, output and workspace row p."""
    pair = pid % P
    expert = tl.load(e_ptr + pair).to(tl.int64)
    return (pid // P, x_ptr + (pair // A_DIV).to(tl.int64) * stride_xm, w_ptr + expert * stride_we,
            s_ptr + expert * stride_se, z_ptr + expert * stride_se, gs_ptr + expert, out_ptr + pair.to(tl.int64) * N,
            ws_ptr + pair.to(tl.int64) * N)


@triton.jit
def _wo_gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr, e_ptr,
    N, K, stride_wn, stride_sn, P, A_DIV, stride_xm, stride_we, stride_se, M,
    GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    FMT: tl.constexpr = 1, HAS_GLOBAL: tl.constexpr = False, GROUPED: tl.constexpr = False, XR: tl.constexpr = 1,
):
    """Grid (N tiles, K slices); one row of x. FMT 1: int4 with bf16 scales; 2: mxfp4 (e8m0 scales per chunk);
    3: nvfp4 (e4m3 scales per 16: each word's sum scaled, then the chunk's; fp32 global scale at the end).
    GROUPED (MoE): grid (P pairs x N tiles, K slices), pairs fastest; pair p multiplies x row p // A_DIV by
    expert e_ptr[p]'s weight (strides stride_we / stride_se over the experts' stacks) into output row p.
    XR (dense only): the program multiplies the tile by x's M <= XR rows (``_wo_gemv_rows_gluon_kernel``)."""
    X_EXP: tl.constexpr = X_EXP_E2M1 if FMT >= 2 else X_EXP_INT4
    CH: tl.constexpr = BLOCK_K // CHUNK
    pid = tl.program_id(0)
    pid_n = pid
    if GROUPED:
        pid_n, x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr = _pair_operands(
            pid, P, A_DIV, e_ptr, x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, N, stride_xm, stride_we,
            stride_se)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t_start = tl.program_id(1) * per_split
    t_end = tl.minimum(t_start + per_split, k_tiles)
    ch = tl.arange(0, CH)
    wd = tl.arange(0, 4)
    word = (ch[:, None] * 4 + wd[None, :])[None, :, :]  # (1, CH, 4): a tile's word offsets
    w_tile = w_ptr + offs_n.to(tl.int64)[:, None, None] * stride_wn + word
    xr = tl.arange(0, XR)
    # (XR, 1, CH, 4): element 8c + j of word c, rows past M reading the last one (their sums are not stored)
    x_tile = x_ptr + tl.minimum(xr, M - 1).to(tl.int64)[:, None, None, None] * stride_xm + word[None] * 8
    s_rows = offs_n.to(tl.int64)[:, None] * stride_sn
    acc = tl.zeros((XR, BLOCK_N, CH), tl.float32)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        words = tl.load(w_tile + k0 // 8, mask=n_mask[:, None, None], other=0, eviction_policy="evict_first")
        xs = x_tile + k0
        x0 = tl.load(xs).to(tl.float32)
        x1 = tl.load(xs + 1).to(tl.float32)
        x2 = tl.load(xs + 2).to(tl.float32)
        x3 = tl.load(xs + 3).to(tl.float32)
        x4 = tl.load(xs + 4).to(tl.float32)
        x5 = tl.load(xs + 5).to(tl.float32)
        x6 = tl.load(xs + 6).to(tl.float32)
        x7 = tl.load(xs + 7).to(tl.float32)
        amax = tl.maximum(tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)), tl.maximum(tl.abs(x2), tl.abs(x3))),
                          tl.maximum(tl.maximum(tl.abs(x4), tl.abs(x5)), tl.maximum(tl.abs(x6), tl.abs(x7))))
        amax = tl.max(amax, axis=3, keep_dims=True)  # (XR, 1, CH, 1): the chunk's, inside one thread
        # r = 2**(X_EXP - floor(log2 amax)): max |x r| in [2**X_EXP, 2**(X_EXP + 1)), and 1/r; amax's exponent
        # clamped so both stay normal (zero or subnormal chunks, inf)
        e = tl.minimum(tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, X_EXP + 1), 254)
        r = ((-e + (254 + X_EXP)) << 23).to(tl.float32, bitcast=True)
        r_inv = ((e - X_EXP) << 23).to(tl.float32, bitcast=True)
        p0 = pack_half2(x0 * r, x4 * r)
        p1 = pack_half2(x1 * r, x5 * r)
        p2 = pack_half2(x2 * r, x6 * r)
        p3 = pack_half2(x3 * r, x7 * r)
        g = (k0 + ch * CHUNK) // GROUP  # the chunk's scale group
        if FMT == 3:
            s = E2M1_UNSCALE
        else:
            s = _chunk_scale(s_ptr + s_rows + g[None, :], n_mask[:, None], FMT)  # (BLOCK_N, CH)
        z = 0.0
        if HAS_ZERO:
            z = tl.load(z_ptr + s_rows + g[None, :], mask=n_mask[:, None], other=0).to(tl.float32)[:, :, None]
        dots = _word_dot(words, p0, p1, p2, p3, z, HAS_ZERO, FMT)  # (XR, BLOCK_N, CH, 4)
        if FMT == 3:  # each word lies in one 16-element group
            dots = dots * tl.load(s_ptr + s_rows[:, :, None] + (k0 + word * 8) // GROUP, mask=n_mask[:, None, None],
                                  other=0.0).to(tl.float32)
        part = tl.sum(dots, axis=3)  # (XR, BLOCK_N, CH)
        acc += part * (s * tl.reshape(r_inv, (XR, 1, CH)))
    total = tl.sum(acc, axis=2)  # (XR, BLOCK_N): the one cross-thread sum
    if HAS_GLOBAL:
        total = total * tl.load(gs_ptr)
    out_ptrs = out_ptr + xr[:, None] * N + offs_n[None, :]
    ws_ptrs = ws_ptr + xr[:, None] * N + offs_n[None, :]
    o_mask = (xr[:, None] < M) & n_mask[None, :]
    store_or_reduce(total, out_ptrs, ws_ptrs, o_mask, cnt_ptr + pid, SPLIT_K)

# ---- the GPU kernel: the same steps in Gluon, whose explicit layout keeps a chunk's four words and their
# activation values in one thread (Triton's own layout choice for the stride-8 activation loads moved every
# weight tile through shared memory and reduced each step across lanes: 3.25 SASS instructions an element)

@gluon.jit
def _gl_load_x(x_ptr, word3, k0, X_VEC: gl.constexpr):
    """The eight activations of each word (elements k0 + 8c + j), fp32. X_VEC (x 16-byte aligned): two 8-byte
    loads a word instead of eight 2-byte ones."""
    if X_VEC:
        xq = x_ptr.to(gl.pointer_type(gl.int64), bitcast=True) + (k0 // 4 + word3 * 2)
        a = gl.load(xq)
        b = gl.load(xq + 1)
        x0, x1 = gl_bf16_pair(a.to(gl.int32))
        x2, x3 = gl_bf16_pair((a >> 32).to(gl.int32))
        x4, x5 = gl_bf16_pair(b.to(gl.int32))
        x6, x7 = gl_bf16_pair((b >> 32).to(gl.int32))
        return x0, x1, x2, x3, x4, x5, x6, x7
    xs = x_ptr + k0 + word3 * 8
    return (gl.load(xs).to(gl.float32), gl.load(xs + 1).to(gl.float32), gl.load(xs + 2).to(gl.float32),
            gl.load(xs + 3).to(gl.float32), gl.load(xs + 4).to(gl.float32), gl.load(xs + 5).to(gl.float32),
            gl.load(xs + 6).to(gl.float32), gl.load(xs + 7).to(gl.float32))


@gluon.jit
def _gl_load_words(w_tile, t, t_end, n_mask3, EVEN_N: gl.constexpr, BLOCK_K: gl.constexpr):
    """K step t's words (zero past t_end or N); EVEN_N (N a multiple of the tile): unmasked, the step clamped to the
    program's last (a re-read of words it holds), so no register is zero-filled for the masked lanes. 5-11% fewer
    loop instructions; on the H200 (bench/results/wo_probe_h200_s22_gemv_rows16.json against _gemv_tiles.json, the
    same configs) int4 0.99x and mxfp4 1.01x the masked loads' time (bench_wo: mxfp4's geomean 2.16 -> 2.31x bf16),
    nvfp4 0.91x, so the launcher keeps nvfp4 on the masked loads."""
    if EVEN_N:
        return gl.load(w_tile + gl.minimum(t, t_end - 1) * (BLOCK_K // 8), eviction_policy="evict_first")
    return gl.load(w_tile + t * (BLOCK_K // 8), mask=n_mask3 & (t < t_end), other=0, eviction_policy="evict_first")


@gluon.jit
def _gl_gemv_step(acc, words, x0, x1, x2, x3, x4, x5, x6, x7, k0, s_ptr, z_ptr, s16_ptr, s_rows, ch2, n_mask2,
                  byte_shift3, GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, FMT: gl.constexpr, PRMT: gl.constexpr,
                  CHAIN: gl.constexpr, X_EXP: gl.constexpr, BLOCK_N: gl.constexpr, CH: gl.constexpr,
                  L2: gl.constexpr, LX: gl.constexpr, SPLIT_X: gl.constexpr = False):
    """One K step of ``_wo_gemv_gluon_kernel``: the activations' chunk scale and half2 packs, the group scales,
    the word dots; ``acc`` plus this step's scaled chunk sums. SPLIT_X: x0..x7 hold one word a lane (the lanes that
    share a chunk split it), the chunk's max and the packs then gathered across them (shuffles) into ``LX``."""
    amax = gl.maximum(gl.maximum(gl.maximum(gl.abs(x0), gl.abs(x1)), gl.maximum(gl.abs(x2), gl.abs(x3))),
                      gl.maximum(gl.maximum(gl.abs(x4), gl.abs(x5)), gl.maximum(gl.abs(x6), gl.abs(x7))))
    amax = gl.max(amax, axis=1)  # (CH,): inside one thread
    e = gl.minimum(gl.maximum((amax.to(gl.int32, bitcast=True) >> 23) & 0xFF, X_EXP + 1), 254)
    r_inv = gl.expand_dims(gl.convert_layout(((e - X_EXP) << 23).to(gl.float32, bitcast=True),
                                             gl.SliceLayout(0, L2)), 0)  # (1, CH): the same registers
    r = gl.expand_dims(((-e + (254 + X_EXP)) << 23).to(gl.float32, bitcast=True), 1)
    p0 = gl.expand_dims(gl.convert_layout(gl_pack(x0 * r, x4 * r), LX), 0)  # (1, CH, 4)
    p1 = gl.expand_dims(gl.convert_layout(gl_pack(x1 * r, x5 * r), LX), 0)
    p2 = gl.expand_dims(gl.convert_layout(gl_pack(x2 * r, x6 * r), LX), 0)
    p3 = gl.expand_dims(gl.convert_layout(gl_pack(x3 * r, x7 * r), LX), 0)
    g = (k0 + ch2 * 32) // GROUP
    if FMT == 3:  # per word below; here the decode's 2**14
        s = gl.full([BLOCK_N, CH], E2M1_UNSCALE, gl.float32, L2)
    elif FMT == 2:  # e8m0 bits, times the decode's 2**14
        s = (gl.load(s_ptr + s_rows + g, mask=n_mask2, other=0).to(gl.int32) << 23).to(gl.float32, bitcast=True)
        s = s * E2M1_UNSCALE
    else:
        s = gl.load(s_ptr + s_rows + g, mask=n_mask2, other=0.0).to(gl.float32)  # (BLOCK_N, CH)
    if HAS_ZERO:  # the zero points' half2 constants (BLOCK_N, CH): 1024 + z and -(64 + z)
        z = gl.load(z_ptr + s_rows + g, mask=n_mask2, other=0).to(gl.int32)
        c0 = (0x6400 + z) * 0x10001
        c1 = (0xD400 + 16 * z) * 0x10001
        if CHAIN:
            part = gl.convert_layout(gl_chunk_dot(words, p0, p1, p2, p3, c0, c1, HAS_ZERO, FMT, PRMT), L2)
        else:
            part = gl.sum(gl_word_dot(words, p0, p1, p2, p3, gl.expand_dims(c0, 2), gl.expand_dims(c1, 2), HAS_ZERO,
                                      FMT, PRMT), axis=2)
    elif CHAIN and FMT != 3:
        part = gl.convert_layout(gl_chunk_dot(words, p0, p1, p2, p3, words, words, HAS_ZERO, FMT, PRMT), L2)
    elif FMT == 3:  # nvfp4: each word lies in one 16-element group, scaled before the chunk's sum
        # the chunk's two e4m3 scales as one 2-byte load a row (k0 / 16 + 2c and stride_sn are even);
        # words 0-1 take the low byte, 2-3 the high one
        s2 = gl.load(s16_ptr + ((s_rows + k0 // GROUP) // 2 + ch2), mask=n_mask2, other=0).to(gl.int32)
        sw = (gl.expand_dims(s2, 2) >> byte_shift3) & 0xFF
        sw = sw.to(gl.int8).to(gl.float8e4nv, bitcast=True).to(gl.float32)
        if CHAIN:
            part = gl.convert_layout(gl_pair_dot(words, p0, p1, p2, p3, sw, PRMT), L2)
        else:
            part = gl.sum(gl_word_dot(words, p0, p1, p2, p3, words, words, HAS_ZERO, FMT, PRMT) * sw, axis=2)
    else:
        part = gl.sum(gl_word_dot(words, p0, p1, p2, p3, words, words, HAS_ZERO, FMT, PRMT), axis=2)
    return acc + part * (s * r_inv)


@gluon.jit
def _wo_gemv_gluon_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr, e_ptr,
    N, K, stride_wn, stride_sn, P, A_DIV, stride_xm, stride_we, stride_se, M,
    GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, ROWS: gl.constexpr, LANES_N: gl.constexpr,
    SPLIT_K: gl.constexpr, WARPS: gl.constexpr, WARPS_K: gl.constexpr, PREFETCH: gl.constexpr,
    FMT: gl.constexpr, HAS_GLOBAL: gl.constexpr, X_VEC: gl.constexpr, GROUPED: gl.constexpr,
    PRMT: gl.constexpr = False, CHAIN: gl.constexpr = False, EVEN_N: gl.constexpr = False,
    SPLIT_X: gl.constexpr = False,
):
    """``_wo_gemv_kernel`` with the layout spelled out: a thread holds ROWS rows x one chunk (4 words); a
    warp's lanes take 32 / LANES_N consecutive chunks of LANES_N rows; WARPS / WARPS_K warps stack along N and
    WARPS_K along K (their sums meet once, after the K loop, through shared memory)."""
    LANES_CH: gl.constexpr = 32 // LANES_N
    WARPS_N: gl.constexpr = WARPS // WARPS_K
    X_EXP: gl.constexpr = X_EXP_E2M1 if FMT >= 2 else X_EXP_INT4
    L3: gl.constexpr = gl.BlockedLayout([ROWS, 1, 4], [LANES_N, LANES_CH, 1], [WARPS_N, WARPS_K, 1], [2, 1, 0])
    L2: gl.constexpr = gl.SliceLayout(2, L3)  # (rows, chunks)
    BLOCK_N: gl.constexpr = ROWS * LANES_N * WARPS_N
    CH: gl.constexpr = LANES_CH * WARPS_K
    BLOCK_K: gl.constexpr = CH * 32
    pid = gl.program_id(0)
    pid_n = pid
    if GROUPED:  # (a @triton.jit helper: scalars only)
        pid_n, x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr = _pair_operands(
            pid, P, A_DIV, e_ptr, x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, N, stride_xm, stride_we,
            stride_se)
    k_tiles = K // BLOCK_K
    per_split = gl.cdiv(k_tiles, SPLIT_K)
    t_start = gl.program_id(1) * per_split
    t_end = gl.minimum(t_start + per_split, k_tiles)
    rows1 = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L2))
    ch1 = gl.arange(0, CH, layout=gl.SliceLayout(0, L2))
    wd1 = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    rows2 = gl.expand_dims(rows1, 1)  # (BLOCK_N, 1)
    ch2 = gl.expand_dims(ch1, 0)  # (1, CH)
    if EVEN_N:  # a constant mask: the scale loads go unpredicated
        n_mask2 = gl.full([BLOCK_N, 1], 1, gl.int1, L2)
    else:
        n_mask2 = rows2 < N
    word3 = gl.expand_dims(ch2 * 4, 2) + gl.expand_dims(gl.expand_dims(wd1, 0), 1)  # (1, CH, 4)
    byte_shift3 = gl.expand_dims(gl.expand_dims((wd1 // 2) * 8, 0), 1)  # nvfp4: (1, 1, 4) 0, 0, 8, 8
    s16_ptr = s_ptr.to(gl.pointer_type(gl.int16), bitcast=True)
    # the activations' words as (CH, 4) in the rows-sliced layout: loaded and prescaled once a thread, then
    # broadcast over its ROWS rows in registers (loaded as (1, CH, 4), triton 3.6 repeats every load a row)
    LX: gl.constexpr = gl.SliceLayout(0, L3)
    # SPLIT_X: the chunk's four words over the LANES_N lanes that share it (lane = chunk + LANES_CH x word, as L3
    # numbers them), so each loads and scales one word; requires LANES_N == 4
    XD: gl.constexpr = gl.BlockedLayout([1, 1], [LANES_CH, LANES_N], [WARPS_K, WARPS_N], [0, 1])
    XL: gl.constexpr = XD if SPLIT_X else LX
    xword2 = (gl.expand_dims(gl.arange(0, CH, layout=gl.SliceLayout(1, XL)) * 4, 1)
              + gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, XL)), 0))
    n_mask3 = gl.expand_dims(n_mask2, 2)
    w_tile = w_ptr + gl.expand_dims(rows2.to(gl.int64) * stride_wn, 2) + word3
    s_rows = rows2.to(gl.int64) * stride_sn
    acc = gl.zeros([BLOCK_N, CH], gl.float32, L2)
    if PREFETCH == 2:  # two steps an iteration, two register buffers (no copy of the prefetched tile a step)
        w_a = _gl_load_words(w_tile, t_start, t_end, n_mask3, EVEN_N, BLOCK_K)
        x_a = _gl_load_x(x_ptr, xword2, gl.minimum(t_start * BLOCK_K, K - BLOCK_K), X_VEC)
        for t in range(t_start, t_end, 2):
            k0 = t * BLOCK_K
            w_b = _gl_load_words(w_tile, t + 1, t_end, n_mask3, EVEN_N, BLOCK_K)
            x_b = _gl_load_x(x_ptr, xword2, gl.minimum(k0 + BLOCK_K, K - BLOCK_K), X_VEC)
            a0, a1, a2, a3, a4, a5, a6, a7 = x_a
            acc = _gl_gemv_step(acc, w_a, a0, a1, a2, a3, a4, a5, a6, a7, k0, s_ptr, z_ptr, s16_ptr, s_rows, ch2,
                                n_mask2, byte_shift3, GROUP, HAS_ZERO, FMT, PRMT, CHAIN, X_EXP, BLOCK_N, CH, L2, LX,
                                SPLIT_X)
            w_a = _gl_load_words(w_tile, t + 2, t_end, n_mask3, EVEN_N, BLOCK_K)
            x_a = _gl_load_x(x_ptr, xword2, gl.minimum(k0 + 2 * BLOCK_K, K - BLOCK_K), X_VEC)
            if t + 1 < t_end:
                b0, b1, b2, b3, b4, b5, b6, b7 = x_b
                acc = _gl_gemv_step(acc, w_b, b0, b1, b2, b3, b4, b5, b6, b7, k0 + BLOCK_K, s_ptr, z_ptr, s16_ptr,
                                    s_rows, ch2, n_mask2, byte_shift3, GROUP, HAS_ZERO, FMT, PRMT, CHAIN, X_EXP,
                                    BLOCK_N, CH, L2, LX, SPLIT_X)
    else:
        if PREFETCH:  # the next step's words and activations load while this step computes
            w_nxt = _gl_load_words(w_tile, t_start, t_end, n_mask3, EVEN_N, BLOCK_K)
            x_nxt = _gl_load_x(x_ptr, xword2, t_start * BLOCK_K, X_VEC)
        for t in range(t_start, t_end):
            k0 = t * BLOCK_K
            if PREFETCH:
                words = w_nxt
                x0, x1, x2, x3, x4, x5, x6, x7 = x_nxt
                w_nxt = _gl_load_words(w_tile, t + 1, t_end, n_mask3, EVEN_N, BLOCK_K)
                x_nxt = _gl_load_x(x_ptr, xword2, gl.minimum(k0 + BLOCK_K, K - BLOCK_K), X_VEC)
            else:
                words = _gl_load_words(w_tile, t, t_end, n_mask3, EVEN_N, BLOCK_K)
                x0, x1, x2, x3, x4, x5, x6, x7 = _gl_load_x(x_ptr, xword2, k0, X_VEC)
            acc = _gl_gemv_step(acc, words, x0, x1, x2, x3, x4, x5, x6, x7, k0, s_ptr, z_ptr, s16_ptr, s_rows, ch2,
                                n_mask2, byte_shift3, GROUP, HAS_ZERO, FMT, PRMT, CHAIN, X_EXP, BLOCK_N, CH, L2, LX,
                                SPLIT_X)
    total = gl.sum(acc, axis=1)  # (BLOCK_N,): the one cross-lane sum
    if HAS_GLOBAL:
        total = total * gl.load(gs_ptr)
    n_mask = rows1 < N
    # wo_mma4's split-K protocol (a @triton.jit helper: Gluon compiles it with this kernel's layouts)
    store_or_reduce(total, out_ptr + rows1, ws_ptr + rows1, n_mask, cnt_ptr + pid, SPLIT_K)


@gluon.jit
def _gl_rows_x(xq, xw, k0):
    """(XR, CH, 4) activation words as fp32 x0..x7 (two 8-byte loads a word; ``xq`` the rows' int64 bases)."""
    a = gl.load(xq + (k0 // 4 + xw * 2))
    b = gl.load(xq + (k0 // 4 + xw * 2 + 1))
    x0, x1 = gl_bf16_pair(a.to(gl.int32))
    x2, x3 = gl_bf16_pair((a >> 32).to(gl.int32))
    x4, x5 = gl_bf16_pair(b.to(gl.int32))
    x6, x7 = gl_bf16_pair((b >> 32).to(gl.int32))
    return x0, x1, x2, x3, x4, x5, x6, x7


@gluon.jit
def _wo_gemv_rows_gluon_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, stride_wn, stride_sn, stride_xm,
    GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, ROWS: gl.constexpr, LANES_N: gl.constexpr,
    SPLIT_K: gl.constexpr, WARPS: gl.constexpr, WARPS_K: gl.constexpr, FMT: gl.constexpr, HAS_GLOBAL: gl.constexpr,
    XR: gl.constexpr, PRMT: gl.constexpr = False,
):
    """``_wo_gemv_gluon_kernel`` for M <= XR activation rows (a dense weight; x 16-byte aligned, rows a multiple of
    8 elements apart): the program's weight tile loads and decodes once (``gl_decode``) and each row takes its
    own half2 products (DOT_HALF2) and sums, the rows a thread's registers' leading axis. The next step's words
    and activations load while this one computes."""
    LANES_CH: gl.constexpr = 32 // LANES_N
    WARPS_N: gl.constexpr = WARPS // WARPS_K
    X_EXP: gl.constexpr = X_EXP_E2M1 if FMT >= 2 else X_EXP_INT4
    L4: gl.constexpr = gl.BlockedLayout([XR, ROWS, 1, 4], [1, LANES_N, LANES_CH, 1], [1, WARPS_N, WARPS_K, 1],
                                        [3, 2, 1, 0])
    L3: gl.constexpr = gl.SliceLayout(0, L4)  # (rows, chunks, words): the weight
    L2: gl.constexpr = gl.SliceLayout(2, L3)  # (rows, chunks)
    LX: gl.constexpr = gl.SliceLayout(1, L4)  # (x rows, chunks, words): the activations
    LA: gl.constexpr = gl.SliceLayout(3, L4)  # (x rows, rows, chunks): the sums
    BLOCK_N: gl.constexpr = ROWS * LANES_N * WARPS_N
    CH: gl.constexpr = LANES_CH * WARPS_K
    BLOCK_K: gl.constexpr = CH * 32
    pid = gl.program_id(0)
    k_tiles = K // BLOCK_K
    per_split = gl.cdiv(k_tiles, SPLIT_K)
    t_start = gl.program_id(1) * per_split
    t_end = gl.minimum(t_start + per_split, k_tiles)
    rows2 = gl.expand_dims(pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L2)), 1)
    ch2 = gl.expand_dims(gl.arange(0, CH, layout=gl.SliceLayout(0, L2)), 0)
    wd1 = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    n_mask2 = rows2 < N
    n_mask3 = gl.expand_dims(n_mask2, 2)
    word3 = gl.expand_dims(ch2 * 4, 2) + gl.expand_dims(gl.expand_dims(wd1, 0), 1)  # (1, CH, 4)
    byte_shift3 = gl.expand_dims(gl.expand_dims((wd1 // 2) * 8, 0), 1)  # nvfp4: (1, 1, 4) 0, 0, 8, 8
    s16_ptr = s_ptr.to(gl.pointer_type(gl.int16), bitcast=True)
    w_tile = w_ptr + gl.expand_dims(rows2.to(gl.int64) * stride_wn, 2) + word3
    s_rows = rows2.to(gl.int64) * stride_sn
    # the activations as (XR, CH, 4) int64 words (rows past M read the last row; their sums are not stored)
    xr = gl.arange(0, XR, layout=gl.SliceLayout(1, gl.SliceLayout(2, LX)))
    x_base = gl.minimum(xr, M - 1).to(gl.int64) * (stride_xm // 4)
    xw = gl.expand_dims(gl.expand_dims(gl.arange(0, CH, layout=gl.SliceLayout(1, gl.SliceLayout(0, LX))) * 4, 1)
                        + gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(0, LX))), 0), 0)
    xq = x_ptr.to(gl.pointer_type(gl.int64), bitcast=True) + gl.expand_dims(gl.expand_dims(x_base, 1), 2)
    acc = gl.zeros([XR, BLOCK_N, CH], gl.float32, LA)
    w_nxt = gl.load(w_tile + t_start * (BLOCK_K // 8), mask=n_mask3 & (t_start < t_end), other=0,
                    eviction_policy="evict_first")
    x_nxt = _gl_rows_x(xq, xw, gl.minimum(t_start * BLOCK_K, K - BLOCK_K))
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        words = w_nxt
        x0, x1, x2, x3, x4, x5, x6, x7 = x_nxt
        w_nxt = gl.load(w_tile + (k0 + BLOCK_K) // 8, mask=n_mask3 & (t + 1 < t_end), other=0,
                        eviction_policy="evict_first")
        x_nxt = _gl_rows_x(xq, xw, gl.minimum(k0 + BLOCK_K, K - BLOCK_K))
        amax = gl.maximum(gl.maximum(gl.maximum(gl.abs(x0), gl.abs(x1)), gl.maximum(gl.abs(x2), gl.abs(x3))),
                          gl.maximum(gl.maximum(gl.abs(x4), gl.abs(x5)), gl.maximum(gl.abs(x6), gl.abs(x7))))
        amax = gl.max(amax, axis=2)  # (XR, CH): inside one thread
        e = gl.minimum(gl.maximum((amax.to(gl.int32, bitcast=True) >> 23) & 0xFF, X_EXP + 1), 254)
        r_inv = gl.expand_dims(gl.convert_layout(((e - X_EXP) << 23).to(gl.float32, bitcast=True),
                                                 gl.SliceLayout(1, LA)), 1)  # (XR, 1, CH)
        r = gl.expand_dims(((-e + (254 + X_EXP)) << 23).to(gl.float32, bitcast=True), 2)
        p0 = gl.expand_dims(gl_pack(x0 * r, x4 * r), 1)  # (XR, 1, CH, 4)
        p1 = gl.expand_dims(gl_pack(x1 * r, x5 * r), 1)
        p2 = gl.expand_dims(gl_pack(x2 * r, x6 * r), 1)
        p3 = gl.expand_dims(gl_pack(x3 * r, x7 * r), 1)
        g = (k0 + ch2 * 32) // GROUP
        if FMT == 3:
            s = gl.full([BLOCK_N, CH], E2M1_UNSCALE, gl.float32, L2)
        elif FMT == 2:
            s = (gl.load(s_ptr + s_rows + g, mask=n_mask2, other=0).to(gl.int32) << 23).to(gl.float32, bitcast=True)
            s = s * E2M1_UNSCALE
        else:
            s = gl.load(s_ptr + s_rows + g, mask=n_mask2, other=0.0).to(gl.float32)  # (BLOCK_N, CH)
        c0 = words
        c1 = words
        if HAS_ZERO:
            z = gl.expand_dims(gl.load(z_ptr + s_rows + g, mask=n_mask2, other=0).to(gl.int32), 2)
            c0 = (0x6400 + z) * 0x10001
            c1 = (0xD400 + 16 * z) * 0x10001
        t0, t1, t2, t3 = gl_decode(words, c0, c1, HAS_ZERO, FMT, PRMT)
        dots = gl.inline_asm_elementwise(
            DOT_HALF2, "=r,r,r,r,r,r,r,r,r",
            [gl.expand_dims(t0, 0), gl.expand_dims(t1, 0), gl.expand_dims(t2, 0), gl.expand_dims(t3, 0),
             p0, p1, p2, p3], dtype=gl.float32, is_pure=True, pack=1)  # (XR, BLOCK_N, CH, 4)
        if FMT == 3:  # the chunk's two e4m3 scales as one 2-byte load a row (as the one-row kernel)
            s2 = gl.load(s16_ptr + ((s_rows + k0 // GROUP) // 2 + ch2), mask=n_mask2, other=0).to(gl.int32)
            sw = (gl.expand_dims(s2, 2) >> byte_shift3) & 0xFF
            dots = dots * gl.expand_dims(sw.to(gl.int8).to(gl.float8e4nv, bitcast=True).to(gl.float32), 0)
        part = gl.sum(dots, axis=3)  # (XR, BLOCK_N, CH)
        acc += part * (gl.expand_dims(gl.convert_layout(s, gl.SliceLayout(0, LA)), 0) * r_inv)
    total = gl.sum(acc, axis=2)  # (XR, BLOCK_N)
    if HAS_GLOBAL:
        total = total * gl.load(gs_ptr)
    OL: gl.constexpr = gl.SliceLayout(2, LA)
    o_rows = gl.expand_dims(gl.arange(0, XR, layout=gl.SliceLayout(1, OL)), 1)
    o_cols = gl.expand_dims(pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, OL)), 0)
    offs = o_rows * N + o_cols
    store_or_reduce(total, out_ptr + offs, ws_ptr + offs, (o_rows < M) & (o_cols < N), cnt_ptr + pid, SPLIT_K)


# The policy (``uses_gemv``, ``gemv_config``), from bench/results/wo_gemv_probe_h100_s19_xvec.json (M = 1, the
# activations as 8-byte loads): on an sm_90 GPU every call the kernel takes runs here. It beat the plane kernel's
# best config (wo_gemv_probe_h100_s19.json, same machine kind) at all 21 (shape, format) pairs: int4 (28672, 4096)
# 24.9 vs 32.0 us, (4096, 4096) 7.3 vs 8.3; mxfp4 (24576, 7168) 39.9 vs 52.4; nvfp4 (4096, 14336) 19.3 vs 20.5.
# Tiles (``gemv_config``):
# - 16 rows a program with the 4 warps along K (each 256 of a 1024-deep step, 2048-deep from K = 4096 where it
#   divides K under 16384 rows; bench/results/wo_gemv_probe_h100_s19_warpsk.json against the 64-row tile in the
#   same call, `_warpsk_base.json`): no split-K round trip while the programs cover the SMs (int4 (7168, 2048)
#   7.6 -> 5.6 us, (6144, 4096) 9.3 -> 7.65, (4096, 4096) 7.5 -> 6.7; mxfp4 (7168, 2048) 8.0 -> 6.2); fewer
#   programs than SMs (2048 rows) split K to about three a SM ((2048, 7168) 7.3 either way).
# - from 16384 rows the same tile 1024-deep (wo_gemv_probe_h100_s20_wide.json, against the 64-row tile with the
#   warps along N in the same call): mxfp4 (28672, 4096) 28.7 -> 26.8 us, (24576, 7168) 39.6 -> 38.7; nvfp4
#   29.5 -> 28.6 and 41.7 -> 42.3; int4 24.7 -> 24.9 and 35.2 -> 34.4.
# - the MoE launch keeps 64 rows a program with the warps along N from 16384 rows (pairs x rows), 512-deep steps
#   where they divide K, else 256, split-K to cover the SMs about twice: the tile above was 10-26% slower there
#   (bench/results/moe_h100_s20_tiles.json against moe_h100_s20_gemv.json: DeepSeek-V3's gate_up at 16 tokens
#   675 -> 750 us, Qwen3-30B-A3B's 75 -> 95).
# - from K = 8192 (where 2048 divides it, under 16384 rows) 8 warps, all along K, 2048-deep
#   (wo_gemv_probe_h100_s20_long_k.json, (4096, 14336)): int4 15.4 -> 14.7 us, mxfp4 17.5 -> 16.1; a split
#   there is slower (17.8).
GEMV_CONFIG = KernelConfig(1, 16, 1024, num_warps=4, num_stages=2, split_k=1)
WIDE_N = 16384  # weight rows from which the steps stay 1024-deep
# and from which a thread takes 8 rows (block_n 32), its activation packs shared by twice the words: on the H200
# (bench/results/gemv_chain_probe_h200_s22.json, where the GEMV is instruction-bound, not bandwidth-bound)
# (28672, 4096) int4 2.69 -> 2.89x bf16, mxfp4 2.41 -> 2.62, nvfp4 2.24 -> 2.50; (24576, 7168) 2.81 -> 2.91,
# 2.54 -> 2.63, 2.33 -> 2.47; under 16384 rows it lost (7168 x 2048, 2048 x 7168: 5-15% slower)
# activation rows one program takes (``_wo_gemv_rows_gluon_kernel``; more: a program a row): at 2 rows it beat the
# plane kernels' geomean (bench/results/wo_h100_s20_m234_gemv.json against _m234.json, same call: int4 2.00x bf16
# against 1.82x, mxfp4 1.73 against 1.58); 4 rows a program ran at 2.7x the one-row time, slower than them
GEMV_ROWS_MAX = GEMV_ROWS  # (quantc.kernel_specs: explain and tune read it too)
LONG_K = 8192  # K from which 8 warps share a step


def uses_gemv(x2: torch.Tensor, w) -> bool:
    """Whether ``wo_gemm`` runs this call here: on an sm_90 GPU every call the kernel takes (``gemv_ok``);
    QUANTC_WO_GEMV_MIN_N=N instead takes them from N weight rows on, anywhere (0: all of them, the interpreter
    included; a large N turns the kernel off). Up to GEMV_ROWS_MAX activation rows (16-byte aligned, the row stride
    a multiple of 8) take one program an N tile, each word decoded once for all of them;
    QUANTC_WO_GEMV_MAX_M=M lets it take up to M rows, aligned or not (more than GEMV_ROWS_MAX, or unaligned: a
    program a row, the rows' programs sharing the weight tile through L2; 1: decode only)."""
    m = x2.shape[0]
    if not gemv_weight_ok(w) or m > int(env("QUANTC_WO_GEMV_MAX_M") or GEMV_ROWS_MAX):
        return False
    if 1 < m <= GEMV_ROWS_MAX and not env("QUANTC_WO_GEMV_MAX_M") and not rows_aligned(x2):
        return False  # unaligned rows would take a program each (the plane kernels are as fast there)
    forced = env("QUANTC_WO_GEMV_MIN_N")
    if forced is not None:
        return w.n >= int(forced)
    return common.on_sm90(x2.device)


def gemv_config(n: int, k: int, sms: int, grouped: bool = False) -> tuple[KernelConfig, int]:
    """The launch config and the warps along K for an (N, K) weight on a GPU of ``sms`` SMs (the tiles above).
    ``grouped`` (the MoE launch: ``n`` the pairs' rows together) keeps the 64-row tile from 16384 rows."""
    if k % 128:  # 64-deep steps (gpt-oss's K = 2880): a warp 16 rows x 2 chunks, 4 rows a thread, no warps along K
        programs = cdiv(n, 256)
        split = 1 if programs >= sms else max(1, min(cdiv(3 * sms, programs), k // 64))
        return replace(GEMV_CONFIG, block_n=256, block_k=64, split_k=split), 1
    if grouped and n >= WIDE_N:
        bk = 512 if k % 512 == 0 else 256
        split = max(1, min(cdiv(2 * sms, cdiv(n, 64)), k // bk, 32))
        if bk == 256 and k / bk / (2 * split) >= 1.5:
            split *= 2
        return replace(GEMV_CONFIG, block_n=64, block_k=bk, split_k=min(split, 32)), 1
    deep = n < WIDE_N and k % 2048 == 0
    warps = 8 if deep and k >= LONG_K else 4
    bk = 2048 if deep and k >= 4096 else 1024
    bn = 32 if n >= WIDE_N else 16  # 8 rows a thread from WIDE_N rows
    programs = cdiv(n, bn)
    split = 1 if programs >= sms else max(1, min(cdiv(3 * sms, programs), k // bk))
    return replace(GEMV_CONFIG, block_n=bn, block_k=bk, num_warps=warps, split_k=split), warps


def gemv_ok(x2: torch.Tensor, w) -> bool:
    """Whether this kernel takes the call at decode: one activation row and a weight it can read."""
    return x2.shape[0] == 1 and gemv_weight_ok(w)


def grid_sms(device: torch.device) -> int:
    """The SM count ``gemv_config`` sizes a launch by: the GPU's, or an H100's 132 off a GPU (the interpreter)."""
    return sm_count(device) if device.type == "cuda" else 132


def gemv_weight_ok(w, k_multiple: int = 128) -> bool:
    """Whether this kernel reads the weight (a dense one or a stack of experts): K a multiple of ``k_multiple``
    (128 where the policy routes by default; 64 takes 64-deep steps, ``gemv_config``), int4 codes in groups of
    whole chunks, mxfp4 (e8m0 scales per 32: one a chunk) or nvfp4 (e4m3 scales per 16: one a word pair, 2-byte
    aligned)."""
    if w.k % k_multiple or w.row_block != 1:
        return False
    return ((w.fmt == INT4 and w.group % CHUNK.value == 0) or (w.fmt == MXFP4 and w.sfmt == S_E8M0 and w.group == 32)
            or (w.fmt == NVFP4 and w.sfmt == S_FLOAT and w.group == 16  # scales read in pairs (2 bytes)
                and w.scale.data_ptr() % 2 == 0 and all(st % 2 == 0 for st in w.scale.stride()[:-1])))


def gemv_tile(cfg, k: int, warps_k: int = 1) -> tuple[int, int, int, int, int]:
    """(rows a thread, lanes along N, block_n, block_k, warps along K) the launch takes from ``cfg``: block_k
    128 .. 1024 a warp (halved until it divides K), split over ``warps_k`` of the warps (fewer where a warp would
    get under 128); a warp's 32 / (span / 32) lanes share a chunk position across rows; block_n rounded to a whole
    number of rows a thread (at least one) over the other warps and those lanes."""
    warps_k = max(1, min(warps_k, cfg.num_warps))
    bk = 1 << (max(128, min(1024 * warps_k, cfg.block_k, k)).bit_length() - 1)  # a power of two (K = 768: 512)
    while k % bk:
        bk //= 2
    while warps_k > 1 and bk // warps_k < 128:
        warps_k //= 2
    warps_n = cfg.num_warps // warps_k
    lanes_n = 1024 // (bk // warps_k)
    rows = max(1, cfg.block_n // (lanes_n * warps_n))
    rows = 1 << (rows.bit_length() - 1)
    return rows, lanes_n, rows * lanes_n * warps_n, bk, warps_k


def rows_aligned(x2: torch.Tensor) -> bool:
    """Whether the several-row kernel reads these activations (two 8-byte loads a word of each row)."""
    return x2.data_ptr() % 16 == 0 and x2.stride(0) % 8 == 0


def gemv_x_vec() -> bool:
    """QUANTC_WO_GEMV_XVEC=0: the activations as eight 2-byte loads a word (the probe's comparison)."""
    return env("QUANTC_WO_GEMV_XVEC") != "0"


def gemv_chain() -> bool:
    """The one-row kernel's word dots: a chunk's four words (nvfp4: two, one scale group) summed in one half2
    chain and converted to fp32 once (``half2_ptx.CHUNK_DOT_*``, ~11% fewer instructions at the policy's tiles);
    QUANTC_GEMV_CHAIN=0: each word's dot converted on its own (``WORD_DOT_*``)."""
    return env("QUANTC_GEMV_CHAIN") != "0"


def gemv_split_x() -> bool:
    """QUANTC_GEMV_SPLIT_X=1 (opt-in, untimed): the lanes that share a chunk each load and scale one of its words,
    the packs then gathered through shared memory (Triton's layout conversion: stmatrix / ldmatrix and a barrier
    each): 8-18% fewer loop instructions at the policy's tiles (``bench/kernel_sass.py``, SPLIT_X=1)."""
    return env("QUANTC_GEMV_SPLIT_X") == "1"


def gemv_even_n(n: int, block_n: int, fmt) -> bool:
    """Whether the one-row kernel loads unmasked (``_gl_load_words``): N a multiple of its tile, int4 or mxfp4."""
    return n % block_n == 0 and fmt in (INT4, MXFP4)


def launch_gemv(x2: torch.Tensor, w, cfg, warps_k: int = 1) -> torch.Tensor:
    """bf16 (M, K) x 4-bit WoWeight (N, K) -> bf16 (M, N): a program per N tile for one row (decode) or up to
    GEMV_ROWS_MAX rows (x 16-byte aligned, row stride a multiple of 8: the several-row kernel, each word decoded
    once for all rows); more rows run the grouped launch over a stack of one (a program per row and N tile). The
    Gluon kernels on a GPU, their Triton twin under the interpreter. ``cfg``: block_n rows a program, block_k
    (``gemv_tile``), split_k, num_warps; num_stages >= 2 loads the next K step's words and activations before
    this step's products (the GPU kernel). ``warps_k``: the warps that share a K step (a split-K inside the
    program, summed through shared memory). fp4 decodes in 11 instructions a word (QUANTC_E2M1_DECODE=shifts: the older 15)."""
    if not gemv_weight_ok(w) or x2.stride(1) != 1:
        raise ValueError("the 4-bit GEMV takes activation rows with unit stride, K a multiple of 128 and int4 codes in "
                         f"groups of a multiple of 32, mxfp4 or nvfp4; got K = {w.k}, format {w.fmt}, group {w.group}")
    m = x2.shape[0]
    if m == 1:
        return _launch(x2, w, cfg, warps_k, None, 1)
    if m <= GEMV_ROWS_MAX and rows_aligned(x2):
        return _launch(x2, w, cfg, warps_k, None, 1, xr=1 << (m - 1).bit_length())
    # more rows: the grouped launch over one expert (the weight as a stack of one), every row's id 0 (a zeroed
    # workspace nothing writes)
    one = dataclasses.replace(w, data=w.data.unsqueeze(0), scale=w.scale.unsqueeze(0),
                              zeros=None if w.zeros is None else w.zeros.unsqueeze(0),
                              global_scale=None if w.global_scale is None else w.global_scale.reshape(1))
    ids = common.workspace("gemv_zero_ids", x2.device, m, torch.int32, zeroed=True)[:m]
    return _launch(x2, one, cfg, warps_k, ids, 1)


def launch_moe_gemv(x2: torch.Tensor, w, experts: torch.Tensor, a_div: int, cfg, warps_k: int = 1) -> torch.Tensor:
    """The GEMV over (token, expert) pairs (MoE decode): bf16 ``x2`` (rows, K) and a 4-bit expert stack ``w``
    (E, N, K) -> bf16 (P, N), row p = x2[p // a_div] times expert ``experts[p]``'s weight (``experts``: P ids, in
    any order: the programs of one N tile run together for every pair, so pairs of one expert share its bytes
    through L2). ``cfg`` / ``warps_k`` as ``launch_gemv``'s."""
    if experts.dim() != 1 or w.data.dim() != 3 or x2.shape[0] * a_div != experts.numel():
        raise ValueError(f"the MoE GEMV takes P expert ids for x rows of P / a_div pairs each and an (E, N, K) "
                         f"stack; got ids {tuple(experts.shape)}, x {tuple(x2.shape)}, a_div {a_div}, data "
                         f"{tuple(w.data.shape)}")
    if (not gemv_weight_ok(w, 64) or x2.stride(1) != 1
            or (w.zeros is not None and w.zeros.stride() != w.scale.stride())):
        raise ValueError("the MoE GEMV takes K a multiple of 64, int4 groups of a multiple of 32, mxfp4 or nvfp4, "
                         f"rows with unit stride and zero points laid out as the scales; got K = {w.k}, format "
                         f"{w.fmt}, group {w.group}")
    return _launch(x2, w, cfg, warps_k, experts, a_div)


def _launch(x2, w, cfg, warps_k, experts, a_div, xr: int = 1) -> torch.Tensor:
    """``xr`` > 1 (dense): the program takes the M <= xr activation rows (the several-row kernel)."""
    n, k = w.n, w.k
    m = x2.shape[0] if xr > 1 else 1
    pairs = m if experts is None else experts.numel()
    rows, lanes_n, bn, bk, warps_k = gemv_tile(cfg, k, warps_k)
    split = max(1, min(cfg.split_k, k // bk))
    fmt = {INT4: 1, MXFP4: 2, NVFP4: 3}[w.fmt]
    prmt = fmt >= 2 and e2m1_prmt()  # the GPU kernels' e2m1 decode (a constexpr: read at each launch)
    out = common.empty((pairs, n), torch.bfloat16, x2.device)
    tiles = cdiv(n, bn)
    grid = ((1 if xr > 1 else pairs) * tiles, split)
    ws, cnt = split_workspace(x2.device, pairs * n, grid[0]) if split > 1 else (out, out)
    zeros = w.zeros if w.zeros is not None else w.scale
    gs = w.global_scale if w.global_scale is not None else w.scale
    grouped = experts is not None
    # a stack's strides: rows are dim 1 and experts dim 0 (a dense weight: rows dim 0, no experts)
    stride_wn, stride_sn = (w.data.stride(1), w.scale.stride(1)) if grouped else (w.data.stride(0), w.scale.stride(0))
    stride_we, stride_se = (w.data.stride(0), w.scale.stride(0)) if grouped else (0, 0)
    args = (x2, w.data, w.scale, zeros, gs, out, ws, cnt, experts if grouped else out, n, k, stride_wn, stride_sn,
            pairs, a_div, x2.stride(0), stride_we, stride_se, m)
    consts = dict(GROUP=w.group, HAS_ZERO=w.zeros is not None, SPLIT_K=split, FMT=fmt,
                  HAS_GLOBAL=w.global_scale is not None, GROUPED=grouped)
    if common.interpreted() or x2.device.type != "cuda":
        common.launch(_wo_gemv_kernel, grid, args, dict(consts, BLOCK_N=bn, BLOCK_K=bk, XR=xr), cfg.num_warps, 1)
    elif xr > 1:
        common.launch(_wo_gemv_rows_gluon_kernel, grid,
                      (x2, w.data, w.scale, zeros, gs, out, ws, cnt, m, n, k, stride_wn, stride_sn, x2.stride(0)),
                      dict(GROUP=w.group, HAS_ZERO=w.zeros is not None, ROWS=rows, LANES_N=lanes_n, SPLIT_K=split,
                           WARPS=cfg.num_warps, WARPS_K=warps_k, FMT=fmt, HAS_GLOBAL=w.global_scale is not None,
                           XR=xr, PRMT=prmt), cfg.num_warps, 1)
    else:
        x_vec = x2.data_ptr() % 16 == 0 and (x2.stride(0) * 2) % 16 == 0 and gemv_x_vec()
        common.launch(_wo_gemv_gluon_kernel, grid, args,
                      dict(consts, ROWS=rows, LANES_N=lanes_n, WARPS=cfg.num_warps, WARPS_K=warps_k,
                           PREFETCH=max(0, min(cfg.num_stages - 1, 2)), X_VEC=x_vec, PRMT=prmt, CHAIN=gemv_chain(),
                           EVEN_N=gemv_even_n(n, bn, w.fmt), SPLIT_X=gemv_split_x()),
                      cfg.num_warps, 1)
    return out
