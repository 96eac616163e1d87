"""4-bit weights in their natural order (the plane layout every 4-bit kernel reads) on the tensor cores at small M.

``wo_frag`` showed that an int4 weight decoded straight into m16n8k16 A fragments runs 2-16 rows near the one-row
GEMV's time (bench/results/frag_only_probe_h100_s21.json: (28672, 4096) at 2 rows 26.4 us against the two-row
GEMV's 35.0), but it needs the weight repacked into fragment order, which the other M then pay for. This kernel
gets the same instruction shape from the natural order, so no second copy and no repack:

- a lane (g, t) of a warp's 16-row tile loads four consecutive words (16 bytes) of row g and four of row g + 8 a
  128-deep step: the quad t = 0..3 covers the step's 128 K of both rows, a warp 16 rows x 64 bytes;
- one PTX block (``PLANE_DECODE_*``) turns a word into four bf16x2 registers holding the consecutive element pairs
  (2i, 2i + 1). int4: a ``prmt`` of the word and the word shifted by 4 puts nibbles 2i and 2i + 1 under one bf16
  magic each, ``lop3`` and one FMA leave the exact integer q or c - z (14 instructions a word). e2m1 (mxfp4,
  nvfp4): ``prmt`` looks the magnitudes' bf16 bytes up in two 8-byte tables, one more moves the signs, four
  interleave the bytes, and the group scale multiplies the registers (20 a word): a lane's 32 elements of a row
  are one mxfp4 group or two nvfp4 groups, while int4's scale waits for the step's fp32 sums;
- the MMA does not care in which order K is summed, so long as both operands take the same one: register i of
  row g's word v is the fragment's (row g, columns 2t, 2t + 1) for i = 2j, (row g, 2t + 8, 2t + 9) for i = 2j + 1,
  of the step's MMA (v, j); row g + 8's word gives the other two registers. The activation's B fragment then
  holds element pairs (32 t + 8 v + 4 j + 2 kh, + 1) of its token: a lane's 32 consecutive elements a token, four
  16-byte loads, every pair a register as it lies. No shuffles: the layouts meet by join / reshape / permute.

Eight MMAs a step an n8 half of the token tile, 8 words decoded a lane. Programs: WARPS x RT x 16 weight rows (RT
16-row tiles a warp share its B fragments), a tile of TOK (8 / 16 / 32 / 64) tokens, one or two steps an
iteration, split-K as ``wo_mma4``'s (``store_or_reduce``). Under the interpreter a Triton twin
(``_plane_mma_twin_kernel``) runs the same launch (grid, token tiles, split-K, masks) on ``tl.dot``. Timed on the
H100 (bench/plane_mma_probe.py, bench_wo): the policy below.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from ...kernel_specs import PLANE_MMA_ROWS, PLANE_MMA_ROWS_ZERO
from . import common
from .common import cdiv
from .nibble_decode import e2m1_to_f32
from .wo_format import INT4, MXFP4, NVFP4, S_E8M0, S_FLOAT, WoWeight, decode_scale
from .wo_frag import _bf16_halves, token_tile_k, token_tile_ptrs, twin_accumulate, zero_addend
from .wo_mma4 import split_workspace, store_or_reduce

STEP = 128  # K a step: a quad's four lanes x four words x 8 elements of one row
TOKENS = (8, 16, 32, 64)


def plane_mma_ok(w: WoWeight) -> bool:
    """Whether the kernel reads this weight: one dense weight, K a multiple of 128; int4 in groups of whole steps,
    mxfp4 (e8m0 per 32) or nvfp4 (e4m3 per 16, a global scale), whose K may also end in a half step (a multiple of
    64: gpt-oss's 2880; ``TAIL``); under 2**30 rows (the kernel's e2m1 tables rest on a row index below N | 2**30)."""
    k_ok = w.k >= STEP and (w.k % STEP == 0 or (w.fmt != INT4 and w.k % (STEP // 2) == 0))
    if (w.data.dim() != 2 or w.row_block != 1 or not k_ok or w.data.stride(1) != 1 or w.scale.stride(-1) != 1
            or w.n >= 2**30):
        return False
    return ((w.fmt == INT4 and w.group % STEP == 0) or (w.fmt == MXFP4 and w.sfmt == S_E8M0 and w.group == 32)
            or (w.fmt == NVFP4 and w.sfmt == S_FLOAT and w.group == 16))


# The policy (``uses_plane_mma``, ``plane_mma_split``), from bench/results/plane_mma_probe_h100_s21*.json: on an
# sm_90 GPU, int4 g128, mxfp4 and nvfp4 from 2 rows to PLANE_MMA_MAX_M (int4 with zero points to 16); 4 warps, two
# steps an iteration where 256 divides K (more bytes in flight: int4 (28672, 4096) at 2 rows 34.1 -> 29.0 us),
# split-K at SPLIT_WAVES x ``wo_gemm._split``'s two waves of 64-row programs (within 5% of the probe's best config
# at 2-8 rows, every shape). int4: at 2 rows 1.0-1.3x the two-row GEMV, at 4-8 rows 1.0-1.35x the plane kernel; at
# 16 rows without zero points it lost to the plane kernel (0.8-0.97x; two 8-token tiles no better), with them it won
# (1.03-1.21x). fp4 (_fp4.json): 1.11x / 1.09x (mxfp4 / nvfp4) the two-row GEMV's geomean at 2 rows, 1.17x / 1.06x
# mma4's at 8 rows; 0.72-0.95x mma4 at 16 rows.
PLANE_MMA_MAX_M = PLANE_MMA_ROWS
PLANE_MMA_MAX_M_ZERO = PLANE_MMA_ROWS_ZERO
SPLIT_WAVES = 2


def uses_plane_mma(x2: torch.Tensor, w: WoWeight) -> bool:
    """Whether ``wo_gemm`` runs this call here: a weight the kernel reads, 2 rows to PLANE_MMA_MAX_M (int4 with zero
    points PLANE_MMA_MAX_M_ZERO), on an sm_90 GPU. QUANTC_PLANE_MMA=0 never; =1 every call it can take, 1-64 rows,
    on any device (the interpreter included); QUANTC_PLANE_MMA_MAX_M=M moves the row bound."""
    switch = common.env("QUANTC_PLANE_MMA")
    m = x2.shape[0]
    if switch == "0" or m == 0 or (m == 1 and switch != "1"):  # the cheap refusals first: every linear asks
        return False
    bound = common.env("QUANTC_PLANE_MMA_MAX_M")
    top = int(bound) if bound else (64 if switch == "1" else
                                    (PLANE_MMA_MAX_M_ZERO if w.zeros is not None else PLANE_MMA_MAX_M))
    if m > top or not plane_mma_ok(w) or x2.stride(1) != 1:
        return False
    # a K that ends in a half step (the tail) is untimed: taken when forced only
    return switch == "1" or (common.on_sm90(x2.device) and w.k % STEP == 0)


def plane_mma_split(n: int, k: int, m: int, sms: int) -> int:
    """The policy's split-K for 4-warp programs: SPLIT_WAVES x ``wo_gemm._split``'s two waves of 64-row programs,
    shared among the M rows' token tiles, at most one slice an iteration (QUANTC_PLANE_MMA_SPLIT_WAVES overrides)."""
    from .wo_gemm import _split

    waves = float(common.env("QUANTC_PLANE_MMA_SPLIT_WAVES") or SPLIT_WAVES)
    base = _split(n, k, 64, STEP, sms) // cdiv(m, plane_mma_tokens(m))
    return max(1, min(int(base * waves), k // (STEP * plane_mma_sub(k)), 32))


def plane_mma_tokens(m: int) -> int:
    """Tokens a program takes (the MMA's N): the fewest of 8 / 16 / 32 / 64 that hold M, 64 past that."""
    return next((t for t in TOKENS if m <= t), TOKENS[-1])


# ---- the Triton twin (the interpreter): the same launch on tl.dot


@triton.jit
def _plane_mma_twin_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm, stride_wn, stride_sn, M_TILES,
    ids_ptr, bexp_ptr, E, A_DIV, stride_we, stride_se,
    GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, TOK: tl.constexpr,
    FMT: tl.constexpr = 1, HAS_GLOBAL: tl.constexpr = False, GROUPED: tl.constexpr = False, TAIL: tl.constexpr = False,
):
    steps = tl.cdiv(K, 128)  # TAIL: the last step half past K, masked
    per = tl.cdiv(steps, SPLIT_K)
    s_start = tl.program_id(1) * per
    s_end = tl.minimum(s_start + per, steps)
    m_tile = tl.program_id(0) % M_TILES
    toks = tl.arange(0, TOK)
    if GROUPED:  # m_tile: a routing block of TOK (token, expert) pairs of one expert; M: the pairs
        expert = tl.load(bexp_ptr + m_tile)
        live = (tl.zeros([TOK], tl.int32) + expert) < E  # blocks past the routing's total: nothing to do
        expert = tl.minimum(expert, E - 1)
        w_ptr += expert.to(tl.int64) * stride_we
        s_ptr += expert.to(tl.int64) * stride_se
        z_ptr += expert.to(tl.int64) * stride_se
        gs_ptr += expert
        pair = tl.load(ids_ptr + m_tile * TOK + toks)
        tok_ok = (pair < M) & live
        x_rows = tl.where(tok_ok, pair // A_DIV, 0)
        o_rows = tl.where(tok_ok, pair, 0)
    else:
        x_ptr += (m_tile * TOK).to(tl.int64) * stride_xm
        out_ptr += (m_tile * TOK).to(tl.int64) * N
        ws_ptr += (m_tile * TOK).to(tl.int64) * N
        tok_ok = toks < tl.minimum(M - m_tile * TOK, TOK)
        x_rows = toks
        o_rows = toks
    rows = (tl.program_id(0) // M_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    kk = tl.arange(0, 128)
    total = tl.zeros((BLOCK_N, TOK), tl.float32)
    for s in range(s_start, s_end):
        if TAIL:
            k_ok = s * 128 + kk < K
        else:
            k_ok = kk >= 0
        words = tl.load(w_ptr + rows.to(tl.int64)[:, None] * stride_wn + s * 16 + (kk // 8)[None, :],
                        mask=n_mask[:, None] & k_ok[None, :], other=0)
        xt = tl.load(x_ptr + x_rows.to(tl.int64)[None, :] * stride_xm + s * 128 + kk[:, None],
                     mask=tok_ok[None, :] & k_ok[:, None], other=0.0).to(tl.float32)  # (128, TOK)
        c = (words >> (4 * (kk % 8))[None, :]) & 15
        if FMT == 1:
            total = twin_accumulate(total, c, xt, z_ptr, s_ptr, rows, n_mask, stride_sn, (s * 128) // GROUP, HAS_ZERO)
        else:  # e2m1 times its group's scale (exact in bf16, as the GPU's A fragments), then the dot
            sc_ptrs = s_ptr + tl.minimum(rows, N - 1)[:, None] * stride_sn + (s * 128 + kk[None, :]) // GROUP
            if FMT == 3:
                sc = tl.load(sc_ptrs, mask=k_ok[None, :], other=0.0)
            else:
                sc = tl.load(sc_ptrs, mask=k_ok[None, :], other=0)
            total += tl.dot(e2m1_to_f32(c) * decode_scale(sc, 2 if FMT == 2 else 1), xt)
    if HAS_GLOBAL:
        total = total * tl.load(gs_ptr)
    o_mask = n_mask[:, None] & tok_ok[None, :]
    offs = o_rows.to(tl.int64)[None, :] * N + rows[:, None]
    store_or_reduce(total, out_ptr + offs, ws_ptr + offs, o_mask, cnt_ptr + tl.program_id(0), SPLIT_K)


# ---- the GPU kernel (Gluon)

# $0..$3: bf16x2 registers of the element pairs (0, 1), (2, 3), (4, 5), (6, 7) of word $4: prmt puts byte i of the
# word (nibble 2i low) and of the word >> 4 (nibble 2i + 1 low) in the two halves, lop3 keeps those nibbles under
# the bf16 128 magic (symmetric codes: c ^ 8 = q + 8 folded in), one FMA with 1.0 adds $5 = -(128 + z) or -136
_PLANE_DECODE = """{{
.reg .b32 w4, one;
mov.b32 one, 0x3F803F80;
shr.b32 w4, $4, 4;
prmt.b32 $0, $4, w4, 0x0400;
prmt.b32 $1, $4, w4, 0x0501;
prmt.b32 $2, $4, w4, 0x0602;
prmt.b32 $3, $4, w4, 0x0703;
lop3.b32 $0, $0, 0x000F000F, {magic}, 0x6A;
lop3.b32 $1, $1, 0x000F000F, {magic}, 0x6A;
lop3.b32 $2, $2, 0x000F000F, {magic}, 0x6A;
lop3.b32 $3, $3, 0x000F000F, {magic}, 0x6A;
fma.rn.bf16x2 $0, $0, one, $5;
fma.rn.bf16x2 $1, $1, one, $5;
fma.rn.bf16x2 $2, $2, one, $5;
fma.rn.bf16x2 $3, $3, one, $5;
}}"""
# e2m1: the bf16 of each magnitude from two 8-byte tables (low bytes, high bytes) by ``prmt`` on four 3-bit indices
# at a time, the signs moved to bit 7 of the high bytes (a prmt of the word and the word << 4 puts sign 4j + 3 at bit
# 8j + 7), the bytes interleaved into the pairs (2i, 2i + 1), then times $5: the group scale as bf16x2 (exact)
# The four table words come in as operands ($6..$9, E2M1_LO_* / E2M1_HI_* held in per-lane registers by the kernel),
# not as movs inside the block, which ptxas re-materialized for every word (4 of 24 instructions).
PLANE_DECODE_E2M1 = gl.constexpr("""{
.reg .b32 m03, m47, lo03, hi03, lo47, hi47, w4, s03, s47;
and.b32 m03, $4, 0x7777;
shr.b32 m47, $4, 16;
and.b32 m47, m47, 0x7777;
prmt.b32 lo03, $6, $7, m03;
prmt.b32 hi03, $8, $9, m03;
prmt.b32 lo47, $6, $7, m47;
prmt.b32 hi47, $8, $9, m47;
shl.b32 w4, $4, 4;
prmt.b32 s03, $4, w4, 0x1504;
prmt.b32 s47, $4, w4, 0x3726;
lop3.b32 hi03, hi03, s03, 0x80808080, 0xF8;
lop3.b32 hi47, hi47, s47, 0x80808080, 0xF8;
prmt.b32 $0, lo03, hi03, 0x5140;
prmt.b32 $1, lo03, hi03, 0x7362;
prmt.b32 $2, lo47, hi47, 0x5140;
prmt.b32 $3, lo47, hi47, 0x7362;
mul.rn.bf16x2 $0, $0, $5;
mul.rn.bf16x2 $1, $1, $5;
mul.rn.bf16x2 $2, $2, $5;
mul.rn.bf16x2 $3, $3, $5;
}""")
# e2m1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 as bf16: their low bytes (codes 0-3, 4-7) and high bytes, as signed int32
E2M1_LO_A, E2M1_LO_B = gl.constexpr(0xC0800000 - 2**32), gl.constexpr(0xC0804000 - 2**32)
E2M1_HI_A, E2M1_HI_B = gl.constexpr(0x3F3F3F00), gl.constexpr(0x40404040)
PLANE_DECODE_SYM = gl.constexpr(_PLANE_DECODE.format(magic="0x43084308"))
PLANE_DECODE_ZERO = gl.constexpr(_PLANE_DECODE.format(magic="0x43004300"))
NEG_136_X2 = gl.constexpr(0xC308C308 - 2**32)  # bf16x2 (-136, -136) as a signed int32


@gluon.jit
def _decode(word, c, tables, HAS_ZERO: gl.constexpr, FMT: gl.constexpr):
    """(WARPS, 32) words -> their four bf16x2 element-pair registers (``PLANE_DECODE_*``; ``c``: the int4 FMA's
    addend, or fp4's group scale as bf16x2; ``tables``: e2m1's four table words in registers, E2M1_LO_* / _HI_*)."""
    if FMT >= 2:
        la, lb, ha, hb = tables
        return gl.inline_asm_elementwise(PLANE_DECODE_E2M1, "=r,=r,=r,=r,r,r,r,r,r,r", [word, c, la, lb, ha, hb],
                                         dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)
    if HAS_ZERO:
        return gl.inline_asm_elementwise(PLANE_DECODE_ZERO, "=r,=r,=r,=r,r,r", [word, c],
                                         dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)
    return gl.inline_asm_elementwise(PLANE_DECODE_SYM, "=r,=r,=r,=r,r,r", [word, c],
                                     dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)


@gluon.jit
def _a_tile(g_kh0, g_kh1, g8_kh0, g8_kh1, WARPS: gl.constexpr):
    """Four (WARPS, 32) bf16x2 registers (rows g / g + 8, columns 2t / 2t + 8) -> the (WARPS * 16, 16) A tile, each
    value at its fragment coordinate."""
    e = gl.join(gl.join(_bf16_halves(g_kh0), _bf16_halves(g_kh1)), gl.join(_bf16_halves(g8_kh0), _bf16_halves(g8_kh1)))
    e = gl.reshape(e, [WARPS, 8, 4, 2, 2, 2])  # (warp, g, t, h, kh, rh)
    e = gl.permute(e, [0, 5, 1, 4, 2, 3])  # (warp, rh, g, kh, t, h): row 16 w + 8 rh + g, column 8 kh + 2 t + h
    return gl.reshape(e, [WARPS * 16, 16])


@gluon.jit
def _load_or(ptrs, mask, other):
    """``gl.load`` of ``ptrs``, masked where ``mask`` is given (None: every lane reads)."""
    if mask is None:
        v = gl.load(ptrs)
    else:
        v = gl.load(ptrs, mask=mask, other=other)
    return v


@gluon.jit
def _e8m0_bf16x2(e):
    """e8m0 codes -> the bf16x2 (2**(e - 127), same) as int32: the code as the exponent field (code 0: 2**-127, a
    bf16 subnormal)."""
    e = e.to(gl.int32)
    return gl.where(e == 0, 0x40, e << 7) * 0x10001


@gluon.jit
def _fp4_scales(s_ptr, s_lo, s_hi, s, lane_t, mask, FMT: gl.constexpr):
    """fp4's scales of step ``s`` for the lane's rows g / g + 8 (``s_lo`` / ``s_hi``) and K 32 t .. 32 t + 31, as the
    decode's bf16x2 factors (c_lo, c_lo2, c_hi, c_hi2): mxfp4 one e8m0 group (both halves the same), nvfp4 its two
    e4m3 groups (words 0-1, 2-3). ``mask`` (or None): lanes past K read 1.0 / 0."""
    if FMT == 2:
        c_lo = _e8m0_bf16x2(_load_or(s_ptr + s_lo + s * 4 + lane_t, mask, 127))
        c_hi = _e8m0_bf16x2(_load_or(s_ptr + s_hi + s * 4 + lane_t, mask, 127))
        c_lo2 = c_lo
        c_hi2 = c_hi
    else:
        c_lo = _bf16x2_of(_load_or(s_ptr + s_lo + s * 8 + 2 * lane_t, mask, 0.0))
        c_lo2 = _bf16x2_of(_load_or(s_ptr + s_lo + s * 8 + 2 * lane_t + 1, mask, 0.0))
        c_hi = _bf16x2_of(_load_or(s_ptr + s_hi + s * 8 + 2 * lane_t, mask, 0.0))
        c_hi2 = _bf16x2_of(_load_or(s_ptr + s_hi + s * 8 + 2 * lane_t + 1, mask, 0.0))
    return c_lo, c_lo2, c_hi, c_hi2


@gluon.jit
def _bf16x2_of(v):
    """Values (e4m3 scales: exact in bf16) -> their bf16x2 (v, v) as int32."""
    return (v.to(gl.float32).to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF) * 0x10001


@gluon.jit
def _pick4(a, b, c, d, i: gl.constexpr):
    return a if i == 0 else (b if i == 1 else (c if i == 2 else d))


@gluon.jit
def _step(acc, lo, hi, xs, c_lo, c_lo2, c_hi, c_hi2, tables, HAS_ZERO: gl.constexpr, FMT: gl.constexpr,
          WARPS: gl.constexpr, W2: gl.constexpr, A_L: gl.constexpr, B_L: gl.constexpr, TOK: gl.constexpr):
    """The 8 MMAs of one 128-deep step (of each 16-row tile): ``lo`` / ``hi`` (WARPS, 32, 4) the lanes' words of rows
    g / g + 8 (WARPS: the program's 16-row tiles), ``xs``
    (TOK / 8, 8, 4, 32) its activation values (tokens 8 nh + g, K 32 t .. 32 t + 31 of the step); ``c_lo`` /
    ``c_hi`` the decode's constant for words 0-1 of rows g / g + 8, ``c_lo2`` / ``c_hi2`` for words 2-3 (nvfp4's
    second group)."""
    lo_ev, lo_od = gl.split(gl.reshape(lo, [WARPS, 32, 2, 2]))  # word v = 2 v1 + v0
    lo0, lo2 = gl.split(lo_ev)
    lo1, lo3 = gl.split(lo_od)
    hi_ev, hi_od = gl.split(gl.reshape(hi, [WARPS, 32, 2, 2]))
    hi0, hi2 = gl.split(hi_ev)
    hi1, hi3 = gl.split(hi_od)
    # K 32 t + 8 v + 4 j + 2 kh + h of the step: (nh, g, t, v1, v0, j, kh, h) -> (nh, g, t, kh, h, v1, v0, j)
    xs = gl.permute(gl.reshape(xs, [TOK // 8, 8, 4, 2, 2, 2, 2, 2]), [0, 1, 2, 6, 7, 3, 4, 5])
    x_j0, x_j1 = gl.split(xs)
    x00, x01 = gl.split(x_j0)  # (.., v1) of v0 = 0 / 1
    x10, x11 = gl.split(x_j1)
    x000, x002 = gl.split(x00)  # j = 0: v = 0, 2
    x001, x003 = gl.split(x01)  # j = 0: v = 1, 3
    x100, x102 = gl.split(x10)
    x101, x103 = gl.split(x11)
    for v in gl.static_range(4):
        r0, r1, r2, r3 = _decode(gl.convert_layout(_pick4(lo0, lo1, lo2, lo3, v), W2), c_lo if v < 2 else c_lo2,
                                 tables, HAS_ZERO, FMT)
        s0, s1, s2, s3 = _decode(gl.convert_layout(_pick4(hi0, hi1, hi2, hi3, v), W2), c_hi if v < 2 else c_hi2,
                                 tables, HAS_ZERO, FMT)
        for j in gl.static_range(2):
            if j == 0:
                a = _a_tile(r0, r1, s0, s1, WARPS)
                xj = _pick4(x000, x001, x002, x003, v)
            else:
                a = _a_tile(r2, r3, s2, s3, WARPS)
                xj = _pick4(x100, x101, x102, x103, v)
            # (nh, g, t, kh, h) -> (K 8 kh + 2 t + h, token 8 nh + g): the B fragment's coordinates
            b = gl.convert_layout(gl.reshape(gl.permute(xj, [3, 2, 4, 0, 1]), [16, TOK]), B_L)
            acc = mma_v2(gl.convert_layout(a, A_L), b, acc)
    return acc


@gluon.jit
def _plane_mma_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm, stride_wn, stride_sn, M_TILES,
    ids_ptr, bexp_ptr, E, A_DIV, stride_we, stride_se,
    GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, WARPS: gl.constexpr, SPLIT_K: gl.constexpr, TOK: gl.constexpr,
    SUB: gl.constexpr = 1, FMT: gl.constexpr = 1, HAS_GLOBAL: gl.constexpr = False, RT: gl.constexpr = 1,
    X_AHEAD: gl.constexpr = False, GROUPED: gl.constexpr = False, TAIL: gl.constexpr = False,
):
    """Grid (row tiles of WARPS x RT x 16 x token tiles of TOK, K slices): a warp takes RT 16-row tiles (WARPS x 16
    rows apart), their MMAs sharing the activation's B fragments; an iteration is SUB 128-deep steps (each with its
    group's scale), and the next iteration's words load while this one decodes and multiplies (X_AHEAD: its
    activations too). GROUPED (MoE): the token tile is a routing block of TOK (token, expert) pairs of one expert
    (``moe_routing.align_by_expert``): its expert's weights, activation rows pair // A_DIV, output rows the pairs
    (M of them)."""
    TILES: gl.constexpr = WARPS * RT
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_L: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    WL: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 32, 1], [WARPS, 1, 1], [2, 1, 0])
    W2: gl.constexpr = gl.SliceLayout(2, WL)
    iters = K // (128 * SUB)
    per = gl.cdiv(iters, SPLIT_K)
    s_start = gl.program_id(1) * per
    s_end = gl.minimum(s_start + per, iters)
    m_tile = gl.program_id(0) % M_TILES
    n_prog = gl.program_id(0) // M_TILES
    on = gl.arange(0, TOK, layout=gl.SliceLayout(0, MMA))
    if GROUPED:
        expert = gl.load(bexp_ptr + m_tile)
        live = expert < E  # blocks past the routing's total: no steps, nothing stored
        s_end = s_start + (s_end - s_start) * live.to(gl.int32)
        expert = gl.minimum(expert, E - 1).to(gl.int64)
        w_ptr += expert * stride_we
        s_ptr += expert * stride_se
        z_ptr += expert * stride_se
        gs_ptr += expert
        pair_o = gl.load(ids_ptr + m_tile * TOK + on)
        tok_ok = (pair_o < M) & live
        o_rows = gl.where(tok_ok, pair_o, 0).to(gl.int64)
    else:
        x_ptr += (m_tile * TOK).to(gl.int64) * stride_xm
        out_ptr += (m_tile * TOK).to(gl.int64) * N
        ws_ptr += (m_tile * TOK).to(gl.int64) * N
        M = gl.minimum(M - m_tile * TOK, TOK)
        tok_ok = on < M
        o_rows = on.to(gl.int64)
    tiles = n_prog * TILES + gl.arange(0, TILES, layout=gl.SliceLayout(1, W2))
    lanes = gl.arange(0, 32, layout=gl.SliceLayout(0, W2))
    vs = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, WL)))
    row_g = gl.expand_dims(tiles * 16, 1) + gl.expand_dims(lanes // 4, 0)  # (TILES, 32): the lane's rows g
    # loads go unmasked (rows past N read row N - 1, tokens past M the last token, a prefetch past the slice its
    # last iteration); stores are masked
    col = gl.expand_dims(gl.expand_dims(lanes % 4 * 4, 0), 2) + gl.expand_dims(gl.expand_dims(vs, 0), 1)
    w_lo = w_ptr + gl.expand_dims(gl.minimum(row_g, N - 1).to(gl.int64) * stride_wn, 2) + col
    w_hi = w_ptr + gl.expand_dims(gl.minimum(row_g + 8, N - 1).to(gl.int64) * stride_wn, 2) + col
    # the activation of a step as (token half nh, g, t, 32 K): lane 4 g + t holds tokens 8 nh + g, K 32 t ..
    # 32 t + 31 of the step, every warp the same
    x_tile = token_tile_ptrs(x_ptr, M, stride_xm, TOK, 32, WARPS, ids_ptr + m_tile * TOK, A_DIV, GROUPED)
    rows = n_prog * (TILES * 16) + gl.arange(0, TILES * 16, layout=gl.SliceLayout(1, MMA))
    c_lo = gl.full([TILES, 32], NEG_136_X2, gl.int32, W2)
    c_hi = c_lo
    # fp4's scale rows of the lane's rows g and g + 8 (past N: row N - 1) and its group column t
    s_lo = gl.minimum(row_g, N - 1).to(gl.int64) * stride_sn
    s_hi = gl.minimum(row_g + 8, N - 1).to(gl.int64) * stride_sn
    lane_t = gl.expand_dims(lanes % 4, 0)
    total = gl.zeros([TILES * 16, TOK], gl.float32, MMA)
    # e2m1's table words as per-lane registers: a select on a predicate that always holds (row_g < 2**30 | N) keeps
    # ptxas from treating them as uniform constants, which it copied into registers again for every word
    held = row_g < (N | 0x40000000)
    tables = (gl.where(held, E2M1_LO_A, 0), gl.where(held, E2M1_LO_B, 0), gl.where(held, E2M1_HI_A, 0),
              gl.where(held, E2M1_HI_B, 0))
    last = gl.maximum(s_end - 1, 0)
    first = gl.minimum(s_start, last) * SUB * 16
    lo_nxt = gl.load(w_lo + first, eviction_policy="evict_first")
    hi_nxt = gl.load(w_hi + first, eviction_policy="evict_first")
    lo_nxt2 = lo_nxt
    hi_nxt2 = hi_nxt
    if SUB == 2:
        lo_nxt2 = gl.load(w_lo + first + 16, eviction_policy="evict_first")
        hi_nxt2 = gl.load(w_hi + first + 16, eviction_policy="evict_first")
    xs_nxt = gl.load(x_tile + first * 8)  # (words -> elements: x 8)
    xs_nxt2 = xs_nxt
    if SUB == 2:
        xs_nxt2 = gl.load(x_tile + first * 8 + 128)
    for it in range(s_start, s_end):
        lo = lo_nxt
        hi = hi_nxt
        lo2 = lo_nxt2
        hi2 = hi_nxt2
        xs_a = xs_nxt
        xs_b = xs_nxt2
        nxt = gl.minimum(it + 1, last) * SUB * 16
        lo_nxt = gl.load(w_lo + nxt, eviction_policy="evict_first")
        hi_nxt = gl.load(w_hi + nxt, eviction_policy="evict_first")
        if SUB == 2:
            lo_nxt2 = gl.load(w_lo + nxt + 16, eviction_policy="evict_first")
            hi_nxt2 = gl.load(w_hi + nxt + 16, eviction_policy="evict_first")
        if X_AHEAD:
            xs_nxt = gl.load(x_tile + nxt * 8)
            if SUB == 2:
                xs_nxt2 = gl.load(x_tile + nxt * 8 + 128)
        for sub in gl.static_range(SUB):
            s = it * SUB + sub
            g = (s * 128) // GROUP
            if HAS_ZERO:  # -(128 + z) as bf16x2 for the lane's rows g and g + 8
                c_lo = zero_addend(z_ptr + row_g * stride_sn + g, row_g < N)
                c_hi = zero_addend(z_ptr + (row_g + 8) * stride_sn + g, row_g + 8 < N)
            c_lo2 = c_lo
            c_hi2 = c_hi
            if FMT >= 2:
                c_lo, c_lo2, c_hi, c_hi2 = _fp4_scales(s_ptr, s_lo, s_hi, s, lane_t, None, FMT)
            acc = gl.zeros([TILES * 16, TOK], gl.float32, MMA)
            if X_AHEAD:
                xs = xs_a if sub == 0 else xs_b
            else:
                xs = gl.load(x_tile + s * 128)  # four 16-byte loads a token a lane
            if sub == 0:
                acc = _step(acc, lo, hi, xs, c_lo, c_lo2, c_hi, c_hi2, tables, HAS_ZERO, FMT, TILES, W2, A_L, B_L, TOK)
            else:
                acc = _step(acc, lo2, hi2, xs, c_lo, c_lo2, c_hi, c_hi2, tables, HAS_ZERO, FMT, TILES, W2, A_L, B_L,
                            TOK)
            if FMT == 1:
                sc = gl.load(s_ptr + rows * stride_sn + g, mask=rows < N, other=0.0).to(gl.float32)
                total += acc * gl.expand_dims(sc, 1)
            else:  # fp4's scales are in the A fragments
                total += acc
    if TAIL:  # K ends in a half step (fp4, SUB 1): lanes t = 0, 1 hold it, t = 2, 3 zeros; the last K slice takes it
        if gl.program_id(1) == SPLIT_K - 1:
            s = iters
            in_k = col < 8  # the half step's 8 words a row
            lo = gl.load(w_lo + s * 16, mask=in_k, other=0, eviction_policy="evict_first")
            hi = gl.load(w_hi + s * 16, mask=in_k, other=0, eviction_policy="evict_first")
            xs = gl.load(x_tile + s * 128, mask=token_tile_k(TOK, 32, WARPS) < 64, other=0.0)
            c_lo, c_lo2, c_hi, c_hi2 = _fp4_scales(s_ptr, s_lo, s_hi, s, lane_t, lane_t < 2, FMT)
            acc = gl.zeros([TILES * 16, TOK], gl.float32, MMA)
            total += _step(acc, lo, hi, xs, c_lo, c_lo2, c_hi, c_hi2, tables, HAS_ZERO, FMT, TILES, W2, A_L, B_L, TOK)
    if HAS_GLOBAL:
        total = total * gl.load(gs_ptr)
    offs = gl.expand_dims(o_rows, 0) * N + gl.expand_dims(rows, 1)
    o_mask = gl.expand_dims(rows < N, 1) & gl.expand_dims(tok_ok, 0)
    store_or_reduce(total, out_ptr + offs, ws_ptr + offs, o_mask, cnt_ptr + gl.program_id(0), SPLIT_K)


def plane_mma_sub(k: int) -> int:
    """128-deep steps an iteration of the GPU kernel: 2 where 256 divides K (more bytes in flight), else 1."""
    return 2 if k % 256 == 0 else 1


def launch_plane_mma(x2: torch.Tensor, w: WoWeight, warps: int = 4, split_k: int = 1,
                     tokens: int | None = None, sub: int | None = None, row_tiles: int = 1,
                     x_ahead: bool = False) -> torch.Tensor:
    """bf16 (M, K) x a dense 4-bit ``WoWeight`` (N, K) -> bf16 (M, N): the Gluon kernel on a GPU, its Triton twin
    under the interpreter; ``warps`` x 16 weight rows and ``tokens`` (``plane_mma_tokens``) tokens a program, the
    token tiles of a row tile side by side (they share its words through L2); ``split_k`` K slices; ``sub`` 128-deep
    steps an iteration on the GPU (``plane_mma_sub``); ``row_tiles`` 16-row tiles a warp (sharing its B fragments);
    ``x_ahead``: the GPU kernel loads the next iteration's activations with its words (untimed)."""
    m, k = x2.shape
    if not plane_mma_ok(w) or k != w.k or x2.stride(1) != 1 or x2.dtype != torch.bfloat16:
        raise ValueError(f"the plane-layout MMA kernel takes one weight with K a multiple of 128 (int4 in groups of a "
                         f"multiple of 128, mxfp4 or nvfp4, these two also K a multiple of 64 from 128; words and "
                         f"scales with unit stride along K) and bf16 "
                         f"activation rows of K = {w.k} with unit stride; got format {w.fmt}, group {w.group}, weight "
                         f"data {tuple(w.data.shape)}, x {tuple(x2.shape)} {x2.dtype} with strides {tuple(x2.stride())}")
    n = w.n
    if m == 0:
        return torch.empty((0, n), dtype=torch.bfloat16, device=x2.device)
    tok = tokens or plane_mma_tokens(m)
    if tok not in TOKENS:
        raise ValueError(f"tokens a program: one of {TOKENS}, got {tok}")
    sub = sub or plane_mma_sub(k)
    if not ((sub == 1 and k % (STEP // 2) == 0) or (sub == 2 and k % (2 * STEP) == 0)):
        raise ValueError(f"128-deep steps an iteration: 1, or 2 where 256 divides K; got {sub} for K = {k}")
    if row_tiles not in (1, 2, 4):
        raise ValueError(f"16-row tiles a warp: 1, 2 or 4, got {row_tiles}")
    out = common.empty((m, n), torch.bfloat16, x2.device)
    return _launch(x2, w, out, cdiv(m, tok), tok, warps, max(1, min(split_k, k // (STEP * sub))), sub, row_tiles,
                   x_ahead)


def _launch(x2, w, out, m_tiles, tok, warps, split, sub, row_tiles=1, x_ahead=False, routing=None):
    """Both launchers' grid, split-K workspace and kernel: the Gluon kernel on a GPU, the twin under the interpreter.
    ``routing`` (the grouped launch): (sorted_ids, block_expert, a_div), ``m_tiles`` its routing blocks and ``w`` an
    (E, N, K) stack; else ``m_tiles`` token tiles of a dense (N, K) weight. ``out``: (rows, N), every row written."""
    n, k = w.n, w.k
    grid = (cdiv(n, warps * 16 * row_tiles) * m_tiles, split)
    ws, cnt = split_workspace(x2.device, out.numel(), grid[0]) if split > 1 else (out, out)
    zeros = w.zeros if w.zeros is not None else w.scale
    gs = w.global_scale if w.global_scale is not None else w.scale
    if routing is None:
        tail = (w.data.stride(0), w.scale.stride(0), m_tiles, out, out, 1, 1, 0, 0)
    else:
        sorted_ids, block_expert, a_div = routing
        tail = (w.data.stride(1), w.scale.stride(1), m_tiles, sorted_ids, block_expert, w.data.shape[0], a_div,
                w.data.stride(0), w.scale.stride(0))
    args = (x2, w.data, w.scale, zeros, gs, out, ws, cnt, out.shape[0], n, k, x2.stride(0), *tail)
    consts = dict(GROUP=w.group, HAS_ZERO=w.zeros is not None, SPLIT_K=split, TOK=tok,
                  FMT={INT4: 1, MXFP4: 2, NVFP4: 3}[w.fmt], HAS_GLOBAL=w.global_scale is not None,
                  GROUPED=routing is not None, TAIL=k % STEP != 0)
    if common.interpreted() or x2.device.type != "cuda":
        common.launch(_plane_mma_twin_kernel, grid, args, dict(consts, BLOCK_N=warps * 16 * row_tiles), warps, 1)
    else:
        common.launch(_plane_mma_kernel, grid, args,
                      dict(consts, WARPS=warps, SUB=sub, RT=row_tiles, X_AHEAD=x_ahead), warps, 1)
    return out


def plane_mma_stack_ok(w: WoWeight) -> bool:
    """``plane_mma_ok`` for an (E, N, K) stack of expert weights (zero points laid out as the scales)."""
    if w.data.dim() != 3 or w.zeros is not None and w.zeros.stride() != w.scale.stride():
        return False
    one = WoWeight(w.fmt, w.n, w.k, w.data[0], w.scale[0], w.sfmt, w.group, w.row_block)
    return plane_mma_ok(one)


def moe_tokens(num_pairs: int, num_experts: int) -> int:
    """The routing block (tokens a program) of the MoE launch: the fewest of 8 / 16 / 32 / 64 holding the pairs an
    expert gets on average."""
    return plane_mma_tokens(cdiv(num_pairs, max(1, min(num_experts, num_pairs))))


def launch_plane_mma_grouped(x2: torch.Tensor, w: WoWeight, sorted_ids: torch.Tensor, block_expert: torch.Tensor,
                             num_pairs: int, a_div: int, tokens: int, warps: int = 4, split_k: int | None = None,
                             sub: int | None = None) -> torch.Tensor:
    """MoE: bf16 ``x2`` (rows, K) through a 4-bit expert stack ``w`` (E, N, K) -> bf16 (num_pairs, N), row p =
    x2[p // a_div] times expert e's weight for the expert e routing gave pair p. ``sorted_ids`` / ``block_expert``:
    ``moe_routing.align_by_expert`` at block ``tokens`` (a program's token tile is one routing block). split_k: by
    default two waves of the grid's programs."""
    if not plane_mma_stack_ok(w) or x2.stride(1) != 1 or x2.dtype != torch.bfloat16 or x2.shape[1] != w.k:
        raise ValueError(f"the grouped plane-layout MMA kernel takes an (E, N, K) 4-bit stack (K a multiple of 128: "
                         f"int4 in groups of a multiple of 128, mxfp4 or nvfp4, these two also K a multiple of 64 "
                         f"from 128; zero points laid out as the scales) "
                         f"and bf16 activation rows of K = {w.k} with unit stride; got format {w.fmt}, group "
                         f"{w.group}, data {tuple(w.data.shape)}, x {tuple(x2.shape)} {x2.dtype}")
    if tokens not in TOKENS or sorted_ids.numel() % tokens or block_expert.numel() != sorted_ids.numel() // tokens:
        raise ValueError(f"routing blocks of {tokens} pairs (one of {TOKENS}) from align_by_expert at that block; got "
                         f"{sorted_ids.numel()} sorted ids and {block_expert.numel()} block experts")
    out = common.empty((num_pairs, w.n), torch.bfloat16, x2.device)
    if num_pairs == 0:
        return out
    sub = sub or plane_mma_sub(w.k)
    blocks = block_expert.numel()
    if split_k is None:
        from .wo_gemv import grid_sms

        split_k = cdiv(2 * grid_sms(x2.device), cdiv(w.n, warps * 16) * blocks)
    split = max(1, min(split_k, w.k // (STEP * sub), 32))
    return _launch(x2, w, out, blocks, tokens, warps, split, sub, routing=(sorted_ids, block_expert, a_div))
