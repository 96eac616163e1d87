"""int4 weights in tensor-core fragment order, the GEMM that reads them, and their bf16 dequantization (opt-in).

The plane kernel (``wo_planes``) spends ~3 instructions an int4 element at M = 16 meeting the MMA operand layout
Triton chose. Marlin's answer, taken here: repack the weights once, at load, so that each lane's 32-bit word holds
exactly the eight nibbles of its m16n8k16 A fragment. One PTX block then turns the word into the four bf16x2
registers the MMA reads, and Gluon hands them to ``mma_v2`` through a layout conversion the compiler resolves to
nothing (``_frag_a``: the values reach their fragment coordinates by join / reshape / permute).

Layout (``frag_pack``): a dense int4 weight (N, K), N % 16 == 0, K % 64 == 0, becomes int32 words
(N / 16, K / 64, 32, 4). Word (T, s, l, v) serves lane l = 4 g + t of the MMA over rows 16 T .. 16 T + 15 in the
v-th 16-deep MMA of the 64-deep step s. Its nibble p + 4 h (p = rh + 2 kh; rh, kh, h in {0, 1}) sits at the
fragment's row g + 8 rh and column 8 kh + 2 t + h, and holds the code of

    row 16 T + g + 8 rh,  K index 64 s + 16 t + 4 v + 2 kh + h

so the word's nibble pairs (p, p + 4) are the half2 registers a0a1 (p = 0), a2a3 (1), a4a5 (2), a6a7 (3) of the
PTX fragment. The K order inside a step is permuted (a dot product does not care, so long as the activation
takes the same order). Under that order a lane's activation values for a step, over the 4 MMAs, are 16
consecutive elements of each of its two tokens (K 64 s + 16 t ..): two 16-byte loads a token, where the natural
order needs eight 4-byte ones. A lane's four words for a step are one 16-byte load.

The kernel (``_frag_kernel``, Gluon): a program owns WARPS x 16 weight rows and a K slice. A warp decodes its
16 x 16 tiles into exact bf16 integers, q = c - z or the symmetric code: ``lop3`` under the bf16 128 magic, then
one bf16x2 FMA. The 4 MMAs of a step then run against the activation's (16 tokens) fragments, while the next
step's words load. The step's fp32
sum takes its rows' group scales, so groups must be multiples of 64. Split-K is ``wo_mma4``'s.

Under the interpreter the Triton twin (``_frag_twin_kernel``) reads the same words by index arithmetic and
checks the layout, the scales, zero points, masks and split-K. The Gluon kernel is compile-checked for sm_90
(tests/runtime/test_wo_frag.py) and checked against the reference on the H100 (bench/wo_probe.py's correctness
pass).

Timed at M = 16 on the H100 against the plane kernel's best config in the same call
(bench/results/wo_probe_h100_s20_frag_m16.json): int4 g128 (28672, 4096) 34.3 -> 31.9 us, (24576, 7168)
53.0 -> 43.4, (4096, 14336) 20.3 -> 18.8; with zero points 46.1 -> 37.4, 59.7 -> 44.0, 22.8 -> 19.0; the
four small shapes within 3% either way (symmetric) or 10-20% faster (zero points). 64 rows a program (4 warps)
at twice ``wo_gemm._split`` was the best or within 4% of it at every shape.

Opt-in at load (``wo_launch.prepare``): QUANTC_WO_FRAG=both keeps these words beside the plane layout (a second
copy) for 2-16 rows; QUANTC_WO_FRAG=1 keeps only them, and every M runs from them: one row on
``wo_frag_gemv``, up to 255 rows here in programs of 16 / 32 / 64 tokens (``frag_tokens``), more through
``frag_dequant_bf16`` and cuBLAS (bench/results/frag_only_probe_h100_s21.json: ahead of the plane layout at 2-32
rows, 0.55-0.93x at one row, behind from 64). ``wo_plane_mma`` took its MMA to the natural order, the default at
2-8 rows, so this layout stays opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from .. import quantize as qz
from . import common
from .common import cdiv, round_bf16
from .wo_format import INT4, WoWeight
from .wo_mma4 import split_workspace, store_or_reduce

STEP = 64  # K a 16-byte load of a lane covers: four 16-deep MMA tiles
TOKENS = 16  # the fewest activation rows a program takes (the MMA's N: two n8 halves; ``frag_tokens``)


@dataclass(frozen=True, eq=False)
class FragWeight:
    """An int4 weight in fragment order: ``data`` int32 (N / 16, K / 64, 32, 4), ``scale`` bf16 (N, K / group),
    ``zeros`` uint8 (N, K / group) or None (symmetric two's-complement codes)."""

    n: int
    k: int
    data: torch.Tensor
    scale: torch.Tensor
    group: int
    zeros: torch.Tensor | None = None


# the codes of an (N, K) weight as axes (T, rh, g, s, t, v, kh, h): row 16 T + 8 rh + g, K 64 s + 16 t + 4 v + 2 kh + h;
# a word (T, s, lane 4 g + t, v) holds nibble 4 h + 2 kh + rh, so the words are the axes in the order below
_AXES = (0, 3, 2, 4, 5, 7, 6, 1)  # (T, s, g, t, v, h, kh, rh)


def frag_ok(w: WoWeight) -> bool:
    """Whether a weight can be repacked: one dense int4 weight, N % 16, K % 64, groups of whole 64-deep steps."""
    return (w.fmt == INT4 and w.data.dim() == 2 and w.row_block == 1 and w.n % 16 == 0 and w.k % STEP == 0
            and w.group % STEP == 0)


def frag_pack(w: WoWeight) -> FragWeight:
    """A dense int4 ``WoWeight`` in fragment order (once, at load)."""
    if not frag_ok(w):
        raise ValueError(f"fragment order takes one int4 weight with N a multiple of 16, K of 64 and groups of a "
                         f"multiple of 64; got format {w.fmt}, shape ({w.n}, {w.k}), group {w.group}")
    codes = qz.unpack_nibbles(w.data.contiguous().view(torch.uint8))  # (N, K) uint8
    nib = codes.reshape(w.n // 16, 2, 8, w.k // STEP, 4, 4, 2, 2).permute(_AXES).reshape(w.n // 16, w.k // STEP, 32, 4, 8)
    words = torch.zeros(nib.shape[:-1], dtype=torch.int64, device=w.data.device)
    for i in range(8):  # a nibble at a time: no 8-wide int64 copy of the codes
        words |= nib[..., i].to(torch.int64) << (4 * i)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return FragWeight(w.n, w.k, words.contiguous(), w.scale, w.group, w.zeros)


def frag_codes(fw: FragWeight) -> torch.Tensor:
    """The (N, K) uint8 codes back from the packed words (the inverse of ``frag_pack``, for tests)."""
    nib = ((fw.data.to(torch.int64)[..., None] >> (4 * torch.arange(8, device=fw.data.device))) & 15).to(torch.uint8)
    inverse = tuple(_AXES.index(i) for i in range(len(_AXES)))
    return nib.reshape(fw.n // 16, fw.k // STEP, 8, 4, 4, 2, 2, 2).permute(inverse).reshape(fw.n, fw.k)


# ---- the Triton twin (the interpreter): the same words, gathered by index arithmetic


@triton.jit
def twin_accumulate(total, c, xt, z_ptr, s_ptr, rows, n_mask, stride_sn, g, HAS_ZERO: tl.constexpr):
    """``total`` plus one K step of the twins (this one's and ``wo_plane_mma``'s): codes ``c`` (rows, K) to exact
    q = c - z (or the symmetric code), times the activation ``xt`` (K, tokens) in fp32, times the rows' scales."""
    if HAS_ZERO:
        q = c.to(tl.float32) - tl.load(z_ptr + rows * stride_sn + g, mask=n_mask, other=0).to(tl.float32)[:, None]
    else:
        q = ((c ^ 8) - 8).to(tl.float32)
    part = tl.dot(q, xt)  # exact integers x bf16 values, fp32 sums
    return total + part * tl.load(s_ptr + rows * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _frag_twin_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm, stride_sn, M_TILES,
    GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
    TOK: tl.constexpr = 16,
):
    steps = K // 64
    per = tl.cdiv(steps, SPLIT_K)
    s_start = tl.program_id(1) * per
    s_end = tl.minimum(s_start + per, steps)
    # program (row tile, 16-token tile), the token tiles of a row tile side by side (they share its words in L2)
    m_tile = tl.program_id(0) % M_TILES
    x_ptr += (m_tile * TOK).to(tl.int64) * stride_xm
    out_ptr += (m_tile * TOK).to(tl.int64) * N
    ws_ptr += (m_tile * TOK).to(tl.int64) * N
    M = tl.minimum(M - m_tile * TOK, TOK)
    rows = (tl.program_id(0) // M_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    kk = tl.arange(0, 64)
    toks = tl.arange(0, TOK)
    # the nibble of element (row, k = 64 s + kk): word (row // 16, s, lane 4 (row % 8) + kk // 16, (kk % 16) // 4),
    # nibble p + 4 h with p = (row % 16) // 8 + 2 ((kk % 4) // 2), h = kk % 2
    lane = 4 * (rows % 8)[:, None] + (kk // 16)[None, :]
    word_off = ((rows // 16).to(tl.int64)[:, None] * steps * 128 + lane * 4 + ((kk % 16) // 4)[None, :])
    shift = 4 * (((rows % 16) // 8)[:, None] + 2 * ((kk % 4) // 2)[None, :] + 4 * (kk % 2)[None, :])
    total = tl.zeros((BLOCK_N, TOK), tl.float32)
    for s in range(s_start, s_end):
        words = tl.load(w_ptr + word_off + s * 128, mask=n_mask[:, None], other=0)
        xt = tl.load(x_ptr + toks[None, :] * stride_xm + s * 64 + kk[:, None], mask=(toks < M)[None, :],
                     other=0.0).to(tl.float32)  # (64, TOK)
        total = twin_accumulate(total, (words >> shift) & 15, xt, z_ptr, s_ptr, rows, n_mask, stride_sn,
                                (s * 64) // GROUP, HAS_ZERO)
    o_mask = n_mask[:, None] & (toks < M)[None, :]
    offs = toks[None, :] * N + rows[:, None]
    store_or_reduce(total, out_ptr + offs, ws_ptr + offs, o_mask, cnt_ptr + tl.program_id(0), SPLIT_K)


# ---- the GPU kernel (Gluon)

# $0..$3: the bf16x2 registers of nibble pairs (0, 4), (1, 5), (2, 6), (3, 7) of word $4; lop3 puts bf16 128 + c
# under the magic (symmetric codes: c ^ 8 = q + 8 folded in), one FMA with 1.0 adds $5 (rows g: pairs 0 and 2) or
# $6 (rows g + 8: pairs 1 and 3) = -(128 + z) or -136, exactly
_FRAG_DECODE = """{{
.reg .b32 w4, w8, w12, one;
mov.b32 one, 0x3F803F80;
shr.b32 w4, $4, 4;
shr.b32 w8, $4, 8;
shr.b32 w12, $4, 12;
lop3.b32 $0, $4, 0x000F000F, {magic}, 0x6A;
lop3.b32 $1, w4, 0x000F000F, {magic}, 0x6A;
lop3.b32 $2, w8, 0x000F000F, {magic}, 0x6A;
lop3.b32 $3, w12, 0x000F000F, {magic}, 0x6A;
fma.rn.bf16x2 $0, $0, one, $5;
fma.rn.bf16x2 $1, $1, one, $6;
fma.rn.bf16x2 $2, $2, one, $5;
fma.rn.bf16x2 $3, $3, one, $6;
}}"""
FRAG_DECODE_SYM = gl.constexpr(_FRAG_DECODE.format(magic="0x43084308"))
FRAG_DECODE_ZERO = gl.constexpr(_FRAG_DECODE.format(magic="0x43004300"))
NEG_136_X2 = gl.constexpr(0xC308C308 - 2**32)  # bf16x2 (-136, -136) as a signed int32


@gluon.jit
def token_tile_ptrs(x_ptr, M, stride_xm, TOK: gl.constexpr, KL: gl.constexpr, WARPS: gl.constexpr, ids_ptr=None,
                    a_div=1, GATHER: gl.constexpr = False):
    """The activation pointers of a step as (token half nh, g, t, KL K): lane 4 g + t reads tokens 8 nh + g (past
    M: the last token), K KL t .. KL t + KL - 1 of the step, every warp the same (this kernel's KL = 16,
    ``wo_plane_mma``'s 32). GATHER (a MoE routing block): token j is pair ``ids_ptr[j]``, its row pair // a_div
    (pairs past M, the padding: row 0)."""
    XL: gl.constexpr = _token_tile_layout(TOK, KL, WARPS)
    NG: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, XL))  # (nh, g)
    x_nh = gl.arange(0, TOK // 8, layout=gl.SliceLayout(1, NG))
    x_g = gl.arange(0, 8, layout=gl.SliceLayout(0, NG))
    tok = gl.expand_dims(x_nh * 8, 1) + gl.expand_dims(x_g, 0)
    if GATHER:
        pair = gl.load(ids_ptr + tok)
        row = gl.where(pair < M, pair // a_div, 0).to(gl.int64)
    else:
        row = gl.minimum(tok, M - 1)
    k4 = token_tile_k(TOK, KL, WARPS)
    return x_ptr + gl.expand_dims(gl.expand_dims(row * stride_xm, 2), 3) + k4  # (TOK / 8, 8, 4, KL)


@gluon.constexpr_function
def _token_tile_layout(TOK, KL, WARPS):
    """The (token half nh, g, t, KL K) activation tile's layout of ``token_tile_ptrs`` / ``token_tile_k``."""
    return gl.BlockedLayout([TOK // 8, 1, 1, KL], [1, 8, 4, 1], [1, 1, 1, WARPS], [3, 2, 1, 0])


@gluon.jit
def token_tile_k(TOK: gl.constexpr, KL: gl.constexpr, WARPS: gl.constexpr):
    """The K offsets within a step of ``token_tile_ptrs``'s tile, (1, 1, 4, KL) in its layout (a mask's operand)."""
    XL: gl.constexpr = _token_tile_layout(TOK, KL, WARPS)
    TK: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(0, XL))  # (t, K)
    x_t = gl.arange(0, 4, layout=gl.SliceLayout(1, TK))
    x_k = gl.arange(0, KL, layout=gl.SliceLayout(0, TK))
    return gl.expand_dims(gl.expand_dims(gl.expand_dims(x_t * KL, 1) + gl.expand_dims(x_k, 0), 0), 0)


@gluon.jit
def zero_addend(z_ptrs, mask):
    """The bf16x2 (-(128 + z), -(128 + z)) of the zero points at ``z_ptrs`` as int32: the decode FMA's addend."""
    z = gl.load(z_ptrs, mask=mask, other=0).to(gl.float32)
    return ((-(z + 128.0)).to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF) * 0x10001


@gluon.jit
def _bf16_halves(v):
    lo = (v & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = ((v >> 16) & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def _frag_a(word, c_lo, c_hi, HAS_ZERO: gl.constexpr, WARPS: gl.constexpr):
    """(WARPS, 32) words -> the (WARPS * 16, 16) bf16 A tile, each value at its fragment coordinate."""
    if HAS_ZERO:
        r0, r1, r2, r3 = gl.inline_asm_elementwise(FRAG_DECODE_ZERO, "=r,=r,=r,=r,r,r,r", [word, c_lo, c_hi],
                                                   dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True,
                                                   pack=1)
    else:
        r0, r1, r2, r3 = gl.inline_asm_elementwise(FRAG_DECODE_SYM, "=r,=r,=r,=r,r,r,r", [word, c_lo, c_hi],
                                                   dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True,
                                                   pack=1)
    # (rh, kh) of register p: (0, 0), (1, 0), (0, 1), (1, 1)
    e = gl.join(gl.join(_bf16_halves(r0), _bf16_halves(r2)), gl.join(_bf16_halves(r1), _bf16_halves(r3)))
    e = gl.reshape(e, [WARPS, 8, 4, 2, 2, 2])  # (warp, g, t, h, kh, rh)
    e = gl.permute(e, [0, 5, 1, 4, 2, 3])  # (warp, rh, g, kh, t, h): row 16 w + 8 rh + g, column 8 kh + 2 t + h
    return gl.reshape(e, [WARPS * 16, 16])


@gluon.jit
def _frag_substep(acc, words, xs, c_lo, c_hi, HAS_ZERO: gl.constexpr, WARPS: gl.constexpr, W2: gl.constexpr,
                  A_L: gl.constexpr, B_L: gl.constexpr, TOK: gl.constexpr = 16):
    """The 4 MMAs of one 64-deep sub-step: ``words`` (WARPS, 32, 4) a lane's A words, ``xs`` (2, 8, 4, 16) its
    activation values (tokens g / 8 + g, K 16 t .. 16 t + 15 of the sub-step's permuted order)."""
    ev, od = gl.split(gl.reshape(words, [WARPS, 32, 2, 2]))  # word v = 2 v1 + v0
    w0, w2 = gl.split(ev)
    w1, w3 = gl.split(od)
    # K 16 t + 4 j + 2 kh + h of the sub-step: split j = 2 j1 + j0 off, leaving (nh, g, t, kh, h) per MMA
    xs = gl.permute(gl.reshape(xs, [TOK // 8, 8, 4, 2, 2, 2, 2]), [0, 1, 2, 5, 6, 3, 4])  # (nh, g, t, kh, h, j1, j0)
    x_j0, x_j1 = gl.split(xs)
    x0, x2 = gl.split(x_j0)
    x1, x3 = gl.split(x_j1)
    for j in gl.static_range(4):
        word = w0 if j == 0 else (w1 if j == 1 else (w2 if j == 2 else w3))
        xj = x0 if j == 0 else (x1 if j == 1 else (x2 if j == 2 else x3))
        a = gl.convert_layout(_frag_a(gl.convert_layout(word, W2), c_lo, c_hi, HAS_ZERO, WARPS), A_L)
        # (nh, g, t, kh, h) -> (K 8 kh + 2 t + h, token 8 nh + g): the B fragment's coordinates
        b = gl.convert_layout(gl.reshape(gl.permute(xj, [3, 2, 4, 0, 1]), [16, TOK]), B_L)
        acc = mma_v2(a, b, acc)
    return acc


@gluon.jit
def _frag_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm, stride_sn, M_TILES,
    GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, WARPS: gl.constexpr, SPLIT_K: gl.constexpr, SUB: gl.constexpr,
    TOK: gl.constexpr = 16,
):
    """Grid (row tiles of WARPS x 16, K slices); a step is SUB 64-deep sub-steps (SUB x 64 divides the groups): the
    group scales and the loop's fixed costs once a step."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_L: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    WL: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 32, 1], [WARPS, 1, 1], [2, 1, 0])
    W2: gl.constexpr = gl.SliceLayout(2, WL)
    subs = K // 64
    steps = subs // SUB
    per = gl.cdiv(steps, SPLIT_K)
    s_start = gl.program_id(1) * per
    s_end = gl.minimum(s_start + per, steps)
    # program (row tile, 16-token tile), the token tiles of a row tile side by side (they share its words in L2)
    m_tile = gl.program_id(0) % M_TILES
    n_prog = gl.program_id(0) // M_TILES
    x_ptr += (m_tile * TOK).to(gl.int64) * stride_xm
    out_ptr += (m_tile * TOK).to(gl.int64) * N
    ws_ptr += (m_tile * TOK).to(gl.int64) * N
    M = gl.minimum(M - m_tile * TOK, TOK)
    tiles = n_prog * WARPS + gl.arange(0, WARPS, layout=gl.SliceLayout(1, W2))
    lanes = gl.arange(0, 32, layout=gl.SliceLayout(0, W2))
    vs = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, WL)))
    # loads go unmasked (a masked load zero-fills its registers first, ~20 instructions a step): tiles past N read
    # the last tile, tokens past M the last token, a prefetch past the slice its last step; stores are masked
    w_tiles = gl.minimum(tiles, N // 16 - 1)
    w_base = w_ptr + (gl.expand_dims(gl.expand_dims(w_tiles.to(gl.int64) * subs * 128, 1), 2)
                      + gl.expand_dims(gl.expand_dims(lanes * 4, 0), 2) + gl.expand_dims(gl.expand_dims(vs, 0), 1))
    row_g = gl.expand_dims(tiles * 16, 1) + gl.expand_dims(lanes // 4, 0)  # (WARPS, 32): the lane's rows g
    row_mask = row_g < N
    # the activation of a step as (token half nh, g, t, 16 K): lane 4 g + t holds tokens g and 8 + g, K 16 t ..
    # 16 t + 15 of the step (the permuted order), every warp the same
    x_tile = token_tile_ptrs(x_ptr, M, stride_xm, TOK, 16, WARPS)
    rows = n_prog * (WARPS * 16) + gl.arange(0, WARPS * 16, layout=gl.SliceLayout(1, MMA))
    c_lo = gl.full([WARPS, 32], NEG_136_X2, gl.int32, W2)
    c_hi = c_lo
    total = gl.zeros([WARPS * 16, TOK], gl.float32, MMA)
    # the next step's words load while this step decodes and multiplies (one 16-byte load a lane a sub-step)
    last = gl.maximum(s_end - 1, 0)
    w_nxt = gl.load(w_base + gl.minimum(s_start, last) * SUB * 128, eviction_policy="evict_first")
    w_nxt2 = w_nxt
    if SUB == 2:
        w_nxt2 = gl.load(w_base + (gl.minimum(s_start, last) * SUB + 1) * 128, eviction_policy="evict_first")
    for s in range(s_start, s_end):
        words = w_nxt
        words2 = w_nxt2
        nxt = gl.minimum(s + 1, last)
        w_nxt = gl.load(w_base + nxt * SUB * 128, eviction_policy="evict_first")
        if SUB == 2:
            w_nxt2 = gl.load(w_base + (nxt * SUB + 1) * 128, eviction_policy="evict_first")
        g = (s * SUB * 64) // GROUP
        if HAS_ZERO:  # -(128 + z) as bf16x2 for the lane's rows g and g + 8
            c_lo = zero_addend(z_ptr + row_g * stride_sn + g, row_mask)
            c_hi = zero_addend(z_ptr + (row_g + 8) * stride_sn + g, row_mask)
        acc = gl.zeros([WARPS * 16, TOK], gl.float32, MMA)
        xs = gl.load(x_tile + s * SUB * 64)  # two 16-byte loads a token a lane
        acc = _frag_substep(acc, words, xs, c_lo, c_hi, HAS_ZERO, WARPS, W2, A_L, B_L, TOK)
        if SUB == 2:
            xs2 = gl.load(x_tile + (s * SUB + 1) * 64)
            acc = _frag_substep(acc, words2, xs2, c_lo, c_hi, HAS_ZERO, WARPS, W2, A_L, B_L, TOK)
        sc = gl.load(s_ptr + rows * stride_sn + g, mask=rows < N, other=0.0).to(gl.float32)
        total += acc * gl.expand_dims(sc, 1)
    on = gl.arange(0, TOK, layout=gl.SliceLayout(0, MMA))
    offs = gl.expand_dims(on, 0) * N + gl.expand_dims(rows, 1)
    o_mask = gl.expand_dims(rows < N, 1) & gl.expand_dims(on < M, 0)
    store_or_reduce(total, out_ptr + offs, ws_ptr + offs, o_mask, cnt_ptr + gl.program_id(0), SPLIT_K)


@triton.jit
def _frag_dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_sn,
                         GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr):
    """bf16 (N, K) in the natural order from the fragment-order words, a program BT row tiles x BS steps: the
    words load as they lie (contiguous), their nibbles take the axes (T, s, g, t, v, h, kh, rh) and a permute
    puts them back in (row, K) order, so the stores are whole rows too; the math of
    ``wo_dequant._dequant_kernel``. (A first version gathered each element's nibble: 0.5x the plane layout's
    dequant-then-matmul at 512 rows, bench/results/frag_only_probe_h100_s20.json.)"""
    steps = K // 64
    tt = tl.program_id(0) * BT + tl.arange(0, BT)
    ss = tl.program_id(1) * BS + tl.arange(0, BS)
    off = ((tt.to(tl.int64)[:, None, None] * steps + ss[None, :, None]) * 128
           + tl.arange(0, 128)[None, None, :])  # (BT, BS, 128): a step's 32 lanes x 4 words
    words = tl.load(w_ptr + off, mask=(tt < N // 16)[:, None, None] & (ss < steps)[None, :, None], other=0)
    nib = (words[:, :, :, None] >> (4 * tl.arange(0, 8))[None, None, None, :]) & 15  # nibble 4 h + 2 kh + rh
    nib = tl.reshape(nib, (BT, BS, 8, 4, 4, 2, 2, 2))  # (T, s, g, t, v, h, kh, rh)
    codes = tl.reshape(tl.permute(nib, (0, 7, 2, 1, 3, 4, 6, 5)), (BT * 16, BS * 64))  # (T, rh, g | s, t, v, kh, h)
    rows = tl.program_id(0) * (BT * 16) + tl.arange(0, BT * 16)
    ks = tl.program_id(1) * (BS * 64) + tl.arange(0, BS * 64)
    mask = (rows < N)[:, None] & (ks < K)[None, :]
    s_off = rows.to(tl.int64)[:, None] * stride_sn + (ks // GROUP)[None, :]
    sc = tl.load(s_ptr + s_off, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        w = (codes.to(tl.float32) - tl.load(z_ptr + s_off, mask=mask, other=0).to(tl.float32)) * sc
    else:
        w = ((codes ^ 8) - 8).to(tl.float32) * sc
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + ks[None, :], round_bf16(w).to(tl.bfloat16), mask=mask)


def frag_dequant_bf16(fw: FragWeight) -> torch.Tensor:
    """The weight as bf16 (N, K), natural order (the prefill path of a layer kept in fragment order only)."""
    out = common.empty((fw.n, fw.k), torch.bfloat16, fw.data.device)
    zeros = fw.zeros if fw.zeros is not None else fw.scale
    common.launch(_frag_dequant_kernel, (cdiv(fw.n // 16, 2), cdiv(fw.k // STEP, 2)),
                  (fw.data, fw.scale, zeros, out, fw.n, fw.k, fw.scale.stride(0)),
                  dict(GROUP=fw.group, HAS_ZERO=fw.zeros is not None, BT=2, BS=2), 4, 1)
    return out


def frag_sub(k: int, group: int) -> int:
    """64-deep sub-steps a step of the GPU kernel: 2 where 128 divides K and the groups, else 1."""
    return 2 if k % 128 == 0 and group % 128 == 0 else 1


def frag_tokens(m: int) -> int:
    """Tokens a program takes (the MMA's N): 16 up to 16 rows, 32 up to 32, else 64 (a tile of 64 each)."""
    return 16 if m <= 16 else (32 if m <= 32 else 64)


def launch_frag(x2: torch.Tensor, fw: FragWeight, warps: int = 4, split_k: int = 1,
                tokens: int | None = None) -> torch.Tensor:
    """bf16 (M, K) x an int4 ``FragWeight`` (N, K) -> bf16 (M, N): the Gluon kernel on a GPU, its Triton twin under
    the interpreter; ``warps`` x 16 weight rows and ``tokens`` (``frag_tokens``) tokens a program, the token tiles
    of a row tile side by side (each decodes the row tile's words for its tokens); ``split_k`` K slices."""
    m, k = x2.shape
    if k != fw.k or x2.stride(1) != 1:
        raise ValueError(f"the fragment-order GEMM takes activation rows of K = {fw.k} with unit stride; got "
                         f"{tuple(x2.shape)} with strides {tuple(x2.stride())}")
    n = fw.n
    if m == 0:
        return torch.empty((0, n), dtype=torch.bfloat16, device=x2.device)
    bn = warps * 16
    tok = tokens or frag_tokens(m)
    m_tiles = cdiv(m, tok)
    split = max(1, min(split_k, k // (STEP * frag_sub(k, fw.group))))
    out = common.empty((m, n), torch.bfloat16, x2.device)
    grid = (cdiv(n, bn) * m_tiles, split)
    ws, cnt = split_workspace(x2.device, m * n, grid[0]) if split > 1 else (out, out)
    zeros = fw.zeros if fw.zeros is not None else fw.scale
    args = (x2, fw.data, fw.scale, zeros, out, ws, cnt, m, n, k, x2.stride(0), fw.scale.stride(0), m_tiles)
    consts = dict(GROUP=fw.group, HAS_ZERO=fw.zeros is not None, SPLIT_K=split, TOK=tok)
    if common.interpreted() or x2.device.type != "cuda":
        common.launch(_frag_twin_kernel, grid, args, dict(consts, BLOCK_N=bn), warps, 1)
    else:
        common.launch(_frag_kernel, grid, args, dict(consts, WARPS=warps, SUB=frag_sub(fw.k, fw.group)), warps, 1)
    return out
