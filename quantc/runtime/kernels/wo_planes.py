"""Nibble-plane tensor-core GEMM for 4-bit weights (int4 sym/asym, mxfp4, nvfp4) x bf16 activations.

Same math, layouts and launcher contract as ``wo_mma4``; the difference is how a K tile of packed words
reaches the tensor cores. A (BLOCK_N, BLOCK_K/8) tile of int32 words is decoded into eight *planes*:
plane j holds nibble j of every word, i.e. the elements k = 8c + j. Each plane is multiplied by the
matching strided slice of x (x[:, 8c + j]) on the tensor cores, eight MMAs per tile, and the sums add
up to the tile's dot product (a permutation of K inside the tile changes nothing). Nothing is joined
or reshaped, so the decoded planes keep the layout of the loaded words, the MMA operand layout (two
consecutive words per thread), and never pass through shared memory (``wo_mma4``'s int4 tile does:
Triton cannot carry the operand layout back through its join/reshape). One PTX block decodes a pair
of words into eight bf16x2 registers, one per plane, exactly the registers the MMA takes: a ``prmt``
puts byte i of each word into a 16-bit lane, then int4 is one ``lop3`` (bf16 128 + c, with the sign
flip of symmetric codes folded in) and one bf16x2 FMA (minus 136 or 128); e2m1 is shift and masks
under the exponent, times 2**126.

ONE_ROW (M = 1): x is loaded once and broadcast to the MMA's 16 rows instead of moving 16 rows (15 of
them zeros) through shared memory. FOLD (nvfp4): the 2**126 goes into the e4m3 scales (x 2**62) and
the fp32 sums (x 2**64), exact; e8m0 scales cannot take it in bf16 for every code, so mxfp4 keeps the
multiply. K must be a multiple of 128 (16-deep planes): ``wo_gemm.uses_planes`` sends other K to
``wo_mma4``. Measured on the H100 and H200: bench/results/wo_h100.json, wo_h200.json.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .nibble_decode import _nibble_value
from .wo_format import INT4, S_E8M0, e8m0_bits_to_f32, group_scales_bf16, group_zeros, repeat_groups
from .wo_mma4 import kernel_launch, store_or_reduce, tile_coords, tile_k

# Two words $8 (column c) and $9 (column c + 1) -> eight bf16x2 registers $0..$7, register j holding
# nibble j of word c (low lane) and of word c + 1 (high lane). prmt selector 0x4400 + 0x1111 * i fills
# lane 0 with byte i of a (twice) and lane 1 with byte i of b (twice); masks keep the nibble wanted.
_PLANES_INT4 = """
{{
.reg .b32 a, b, a4, b4, r, one, off;
{consts}mov.b32 a, $8;
mov.b32 b, $9;
shr.b32 a4, a, 4;
shr.b32 b4, b, 4;
""" + "".join(f"""prmt.b32 r, a, b, {0x4400 + 0x1111 * i:#06x};
lop3.b32 $@{2 * i}, r, 0x000F000F, {{base}}, 0x6A;
prmt.b32 r, a4, b4, {0x4400 + 0x1111 * i:#06x};
lop3.b32 $@{2 * i + 1}, r, 0x000F000F, {{base}}, 0x6A;
""" for i in range(4)).replace("$@", "$") + "{unbias}}}\n"
_UNBIAS = "".join(f"fma.rn.bf16x2 ${j}, ${j}, one, off;\n" for j in range(8))
_CONSTS = "mov.b32 one, 0x3F803F80;\nmov.b32 off, {off};\n"
# lop3 0x6A = (r & mask) ^ base: base 0x4308 ORs in the bf16 128.0 and flips bit 3 (c ^ 8 = q + 8 for a
# symmetric code q) in one instruction; the fma then removes 136 (q) or 128 (the code, for zero points).
PLANES_INT4_SYM = tl.constexpr(_PLANES_INT4.format(consts=_CONSTS.format(off="0xC308C308"), unbias=_UNBIAS,
                                                   base="0x43084308"))
PLANES_INT4_CODE = tl.constexpr(_PLANES_INT4.format(consts=_CONSTS.format(off="0xC300C300"), unbias=_UNBIAS,
                                                    base="0x43004300"))
# BIASED: the lop3 results as they are, 128 + c for codes with zero points, exact in bf16; a decode tile
# (M = 1) in one scale group takes the bias off its fp32 sums with the zero point instead (``planes_step``):
# 8 bf16x2 FMAs and two constant moves less per two words (bench/kernel_sass.py, 64 rows a tile: 3.70 ->
# 2.89 instructions an element).
PLANES_INT4_CODE_BIASED = tl.constexpr(_PLANES_INT4.format(consts="", unbias="", base="0x43004300"))
INT4_BIAS_CODE = tl.constexpr(128.0)


# e2m1: put the nibble in bits 12-15 of each lane (byte i in the high byte; the low nibble of that byte
# first moved up by a << 4), keep the sign at bit 15 and move the three exponent-mantissa bits from
# 12-14 to 6-8 (>> 6): that is the bf16 v * 2**-126 (0.5 becomes a bf16 subnormal, exactly), times
# 2**126 with one bf16x2 multiply as in ``nibble_decode``, or left for the scales to absorb (FOLD).
def _planes_e2m1(prescaled: bool) -> str:
    lines = ["{", ".reg .b32 a, b, a4, b4, r, t, big, nz;", "mov.b32 big, 0x7E807E80;", "mov.b32 nz, 0x80008000;",
             "mov.b32 a, $8;", "mov.b32 b, $9;", "shl.b32 a4, a, 4;", "shl.b32 b4, b, 4;"]
    for i in range(4):
        for j, src in ((2 * i, "a4, b4"), (2 * i + 1, "a, b")):
            lines += [f"prmt.b32 r, {src}, {0x4400 + 0x1111 * i:#06x};", "shr.b32 t, r, 6;", "and.b32 t, t, 0x01C001C0;"]
            if prescaled:
                lines.append(f"lop3.b32 ${j}, r, 0x80008000, t, 0xEA;")
            else:
                lines += ["lop3.b32 t, r, 0x80008000, t, 0xEA;", f"fma.rn.bf16x2 ${j}, t, big, nz;"]
    return "\n".join(lines + ["}", ""])


PLANES_E2M1 = tl.constexpr(_planes_e2m1(False))
# prescaled: the shifted value v * 2**-126 as it is (the 2**126 goes into the scales: FOLD)
PLANES_E2M1_SHIFTED = tl.constexpr(_planes_e2m1(True))


@triton.jit
def decode_planes(words, FMT: tl.constexpr, SIGNED: tl.constexpr, FOLD: tl.constexpr, ASM: tl.constexpr,
                  BIASED: tl.constexpr = False):
    """int32 (R, C) words -> eight (R, C) planes, plane j = the value of nibble j of each word: int4 the
    signed value (SIGNED) or the code (plus INT4_BIAS_CODE with BIASED); e2m1 its value, or with FOLD its
    value * 2**-126."""
    if ASM:
        if FMT == 1:
            if SIGNED:
                asm: tl.constexpr = PLANES_INT4_SYM
            elif BIASED:
                asm: tl.constexpr = PLANES_INT4_CODE_BIASED
            else:
                asm: tl.constexpr = PLANES_INT4_CODE
        elif FOLD:
            asm: tl.constexpr = PLANES_E2M1_SHIFTED
        else:
            asm: tl.constexpr = PLANES_E2M1
        return tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [words], dtype=(tl.bfloat16,) * 8,
                                         is_pure=True, pack=2)
    else:
        v0 = _nibble_value(words & 15, FMT, SIGNED)
        v1 = _nibble_value((words >> 4) & 15, FMT, SIGNED)
        v2 = _nibble_value((words >> 8) & 15, FMT, SIGNED)
        v3 = _nibble_value((words >> 12) & 15, FMT, SIGNED)
        v4 = _nibble_value((words >> 16) & 15, FMT, SIGNED)
        v5 = _nibble_value((words >> 20) & 15, FMT, SIGNED)
        v6 = _nibble_value((words >> 24) & 15, FMT, SIGNED)
        v7 = _nibble_value((words >> 28) & 15, FMT, SIGNED)
        if FOLD:  # fp32 (the interpreter computes in fp32): 0.5 * 2**-126 is an fp32 subnormal, exact
            f = 1.1754943508222875e-38  # 2**-126
            return (v0.to(tl.float32) * f, v1.to(tl.float32) * f, v2.to(tl.float32) * f, v3.to(tl.float32) * f,
                    v4.to(tl.float32) * f, v5.to(tl.float32) * f, v6.to(tl.float32) * f, v7.to(tl.float32) * f)
        if BIASED:  # what the PTX leaves: 128 + the code, exact in bf16
            b = INT4_BIAS_CODE
            return ((v0.to(tl.float32) + b).to(tl.bfloat16), (v1.to(tl.float32) + b).to(tl.bfloat16),
                    (v2.to(tl.float32) + b).to(tl.bfloat16), (v3.to(tl.float32) + b).to(tl.bfloat16),
                    (v4.to(tl.float32) + b).to(tl.bfloat16), (v5.to(tl.float32) + b).to(tl.bfloat16),
                    (v6.to(tl.float32) + b).to(tl.bfloat16), (v7.to(tl.float32) + b).to(tl.bfloat16))
        return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _plane_dot(acc, xpair, va, vb, s, SCALE_EACH: tl.constexpr, UPCAST: tl.constexpr):
    """acc + the products of planes va, vb with the x pair (.., 2): xpair[..., 0] goes with va."""
    xa, xb = tl.split(xpair)
    if UPCAST:  # the interpreter has no bf16 arithmetic
        va = va.to(tl.float32)
        vb = vb.to(tl.float32)
        xa = xa.to(tl.float32)
        xb = xb.to(tl.float32)
    if SCALE_EACH:
        va = (va * s).to(xa.dtype)
        vb = (vb * s).to(xa.dtype)
    return tl.dot(xb, tl.trans(vb), tl.dot(xa, tl.trans(va), acc))


@triton.jit
def _word_scales(s_ptr, s_rows, n_mask, k0, SFMT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                 BKW: tl.constexpr, FOLD: tl.constexpr):
    """bf16 (BLOCK_N, BKW) scale of each word of a tile (a group spans whole words): the tile's groups
    loaded once, contiguous (so the pipeliner prefetches them), then repeated over their words. FOLD
    (float scales only, see ``fold_ok``): the scale times 2**62, exact."""
    NG: tl.constexpr = BKW * 8 // GROUP
    return repeat_groups(group_scales_bf16(s_ptr, s_rows, n_mask, k0, SFMT, GROUP, NG, FOLD), BLOCK_N, NG, GROUP // 8)


@triton.jit
def _word_zeros(z_ptr, s_rows, n_mask, k0, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BKW: tl.constexpr):
    NG: tl.constexpr = BKW * 8 // GROUP
    return repeat_groups(group_zeros(z_ptr, s_rows, n_mask, k0, GROUP, NG), BLOCK_N, NG, GROUP // 8)


@triton.jit
def planes_step(acc, x_ptr, x_tile, w_rows, s_ptr, z_ptr, s_rows, n_mask, m_mask, k0,
                 FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FOLD: tl.constexpr,
                 ONE_ROW: tl.constexpr, ASM: tl.constexpr, UPCAST: tl.constexpr, BIAS_FOLD: tl.constexpr = True):
    """acc + the products of one K tile (elements k0 .. k0 + BLOCK_K) of the weight rows ``w_rows``
    (words at k0 // 8 on; ``n_mask`` masks rows, and tiles, that do not exist)."""
    PER_TILE: tl.constexpr = GROUP % BLOCK_K == 0
    BKW: tl.constexpr = BLOCK_K // 8
    SIGNED: tl.constexpr = not HAS_ZERO and FMT == 1
    # int4 codes with zero points at M = 1, one scale group a tile: the tile already takes zero * sum(x)
    # off its sums, so (zero + 128) * sum(x) removes the decode's bias too and the per-element bias FMAs
    # go (H100: 3-7% faster on 6 of 7 shapes, bench/results/wo_probe_h100_biasfold.json). Not at 16 rows,
    # where it measured no better (-7% .. +1%, wo_probe_h100_biasfold_m16.json), nor for symmetric codes,
    # which would need the sum for the bias alone: it cost more than the FMAs (3-8% slower).
    BIASED: tl.constexpr = FMT == 1 and PER_TILE and ONE_ROW and HAS_ZERO and BIAS_FOLD
    words = tl.load(w_rows + k0 // 8, mask=n_mask[:, None], other=0)
    v = decode_planes(words, FMT, SIGNED, FOLD, ASM, BIASED)
    if PER_TILE:
        s2 = 0.0
    else:  # one scale per word, the same for all eight planes
        s2 = _word_scales(s_ptr, s_rows, n_mask, k0, SFMT, GROUP, BLOCK_N, BKW, FOLD)
        if HAS_ZERO:  # exact codes minus the zero point, then scaled (as the reference's bf16 operand)
            z2 = _word_zeros(z_ptr, s_rows, n_mask, k0, GROUP, BLOCK_N, BKW).to(tl.float32 if UPCAST else tl.bfloat16)
            v = (v[0].to(z2.dtype) - z2, v[1].to(z2.dtype) - z2, v[2].to(z2.dtype) - z2, v[3].to(z2.dtype) - z2,
                 v[4].to(z2.dtype) - z2, v[5].to(z2.dtype) - z2, v[6].to(z2.dtype) - z2, v[7].to(z2.dtype) - z2)
        if UPCAST:
            s2 = s2.to(tl.float32)
    if ONE_ROW:  # M = 1: load the row once; the MMA's other 15 rows repeat it and are never stored
        xrow = tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K))
        xt = tl.broadcast_to(xrow[None, :], (BLOCK_M, BLOCK_K))
        xsum = tl.sum(xrow.to(tl.float32), axis=0)  # for zero points: the row's sum, not the 16 copies' sums
    else:
        xt = tl.load(x_tile + k0, mask=m_mask[:, None], other=0.0)
    # x columns k = 8c + j, j = 4 j2 + 2 j1 + j0: split off j0, then j1; the pairs left run over j2
    xe, xo = tl.split(tl.reshape(xt, (BLOCK_M, BLOCK_K // 8, 2, 2, 2)))
    xe0, xe1 = tl.split(xe)
    xo0, xo1 = tl.split(xo)
    part = _plane_dot(tl.zeros((BLOCK_M, BLOCK_N), tl.float32), xe0, v[0], v[4], s2, not PER_TILE, UPCAST)
    part = _plane_dot(part, xo0, v[1], v[5], s2, not PER_TILE, UPCAST)
    part = _plane_dot(part, xe1, v[2], v[6], s2, not PER_TILE, UPCAST)
    part = _plane_dot(part, xo1, v[3], v[7], s2, not PER_TILE, UPCAST)
    if PER_TILE:  # int4 with G >= BLOCK_K: one scale (and zero) per row for the tile
        s = tl.load(s_ptr + s_rows + k0 // GROUP, mask=n_mask, other=0.0)
        if SFMT == 2:
            s = e8m0_bits_to_f32(s)
        else:
            s = s.to(tl.float32)
        if HAS_ZERO:  # the codes went through the MMA: remove (bias +) zero * sum(x)
            z = tl.load(z_ptr + s_rows + k0 // GROUP, mask=n_mask, other=0).to(tl.float32)
            if BIASED:
                z = z + INT4_BIAS_CODE
            if ONE_ROW:
                part = part - xsum * z[None, :]
            else:
                part = part - tl.sum(xt.to(tl.float32), axis=1)[:, None] * z[None, :]
        return acc + part * s[None, :]
    return acc + part


@triton.jit
def _planes_finish(acc, gs_ptr, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, m_mask, n_mask, N, stride_om,
                   SPLIT_K: tl.constexpr, FOLD: tl.constexpr, HAS_GLOBAL: tl.constexpr):
    """Scale the tile's sums and store them (or add them up across K slices: ``store_or_reduce``)."""
    if FOLD:
        acc = acc * 18446744073709551616.0  # 2**64
    if HAS_GLOBAL:
        acc = acc * tl.load(gs_ptr)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    ws_ptrs = ws_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    store_or_reduce(acc, out_ptrs, ws_ptrs, m_mask[:, None] & n_mask[None, :], cnt_ptr, SPLIT_K)


@triton.jit
def _wo_planes_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_sn, stride_om,
    FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
    HAS_GLOBAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    FOLD: tl.constexpr, ONE_ROW: tl.constexpr, ASM: tl.constexpr, UPCAST: tl.constexpr, BIAS_FOLD: tl.constexpr,
):
    """Grid (N tiles, M tiles, K slices): one output tile and one K slice per program."""
    offs_n, offs_m, n_mask, m_mask, t_start, t_end = tile_coords(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + tl.arange(0, BLOCK_K // 8)[None, :]
    s_rows = offs_n.to(tl.int64) * stride_sn
    x_tile = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for t in range(t_start, t_end):
        acc = planes_step(acc, x_ptr, x_tile, w_rows, s_ptr, z_ptr, s_rows, n_mask, m_mask, t * BLOCK_K,
                           FMT, SFMT, GROUP, HAS_ZERO, BLOCK_M, BLOCK_N, BLOCK_K, FOLD, ONE_ROW, ASM, UPCAST,
                           BIAS_FOLD)
    _planes_finish(acc, gs_ptr, out_ptr, ws_ptr, cnt_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0),
                   offs_m, offs_n, m_mask, n_mask, N, stride_om, SPLIT_K, FOLD, HAS_GLOBAL)


@triton.jit
def _wo_planes_persistent_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_sn, stride_om,
    FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
    HAS_GLOBAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    FOLD: tl.constexpr, ONE_ROW: tl.constexpr, ASM: tl.constexpr, UPCAST: tl.constexpr, BIAS_FOLD: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Decode (M <= BLOCK_M): a fixed grid of programs walks the work items (an N tile and a K slice
    each) with a stride of the grid, in one loop nest the pipeliner flattens, so the weight stream
    does not drain between items. Same step and epilogue as ``_wo_planes_kernel``."""
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    x_tile = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + tl.arange(0, BLOCK_K)[None, :]
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    items = tl.cdiv(N, BLOCK_N) * SPLIT_K
    for item in tl.range(tl.program_id(0), items, tl.num_programs(0), num_stages=NUM_STAGES, flatten=True):
        tile_n = item // SPLIT_K
        t_start = (item % SPLIT_K) * per_split
        offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + tl.arange(0, BLOCK_K // 8)[None, :]
        s_rows = offs_n.to(tl.int64) * stride_sn
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for kk in range(per_split):  # a constant trip count (flattenable); the last slice's extra tiles mask out
            t = t_start + kk
            live = n_mask & (tl.zeros_like(offs_n) + t < k_tiles)
            acc = planes_step(acc, x_ptr, x_tile, w_rows, s_ptr, z_ptr, s_rows, live, m_mask,
                               tl.minimum(t, k_tiles - 1) * BLOCK_K, FMT, SFMT, GROUP, HAS_ZERO,
                               BLOCK_M, BLOCK_N, BLOCK_K, FOLD, ONE_ROW, ASM, UPCAST, BIAS_FOLD)
        _planes_finish(acc, gs_ptr, out_ptr, ws_ptr, cnt_ptr + tile_n, offs_m, offs_n, m_mask, n_mask, N, stride_om,
                       SPLIT_K, FOLD, HAS_GLOBAL)


def fold_ok(w) -> bool:
    """FOLD (the decode's 2**126 moved into the scales, the sums times 2**64 at the end) is exact for
    nvfp4: e4m3 scales (2**-9 .. 448) times 2**62 stay normal in bf16, and so do the products. e8m0
    scales span 2**-127 .. 2**127, beyond what bf16 can carry shifted, so mxfp4 keeps the multiply."""
    return w.fmt != INT4 and w.sfmt != S_E8M0


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, so the item loop wraps
    return common.sm_count(device)


def persistent_compiles(version: str | None = None) -> bool:
    """Whether this Triton compiles ``_wo_planes_persistent_kernel`` for a GPU (3.9 does; 3.6 does not)."""
    major, minor = (int(v) for v in (version or triton.__version__).split(".")[:2])
    return (major, minor) >= (3, 9)


def launch_planes(x2: torch.Tensor, w, cfg, fold: bool | None = None, persistent: bool = False,
                  bias_fold: bool = True) -> torch.Tensor:
    """bf16 (M, K) x 4-bit WoWeight (N, K) -> bf16 (M, N). K a multiple of 128: every plane of a tile
    is at least 16 deep, the MMA's K (``wo_gemm.uses_planes`` sends other K to wo_mma4). ``persistent``
    (M <= 16): a grid of about 8 warps per SM walking the (N tile, K slice) items instead of one
    program per item (an experiment for bench/wo_probe.py; not used by ``wo_gemm`` until timed).
    ``bias_fold`` False keeps the per-element bias subtraction of int4 codes with zero points at M = 1
    (``planes_step``; benchmarks compare)."""
    m, k = x2.shape
    if k % 128:
        raise ValueError(f"the planes kernel needs K a multiple of 128, got K = {k}")
    if persistent and m > 16:
        raise ValueError(f"the persistent planes kernel runs M <= 16 rows, got M = {m}")
    if persistent and not common.interpreted() and not persistent_compiles():
        raise RuntimeError(f"the persistent planes kernel needs triton >= 3.9 on a GPU: triton {triton.__version__} "
                           "rejects its flattened loop (an scf.if region mismatch in make_ttgir, H100, 2026-11-26)")
    bk = tile_k(k, max(128, cfg.block_k))
    bm = 16 if m <= 16 else max(16, cfg.block_m)
    bn = max(16, cfg.block_n)
    split = max(1, min(cfg.split_k, k // bk))
    out, grid, args, meta = kernel_launch(x2, w, cfg, bm, bn, bk, split)
    meta.update(FOLD=fold_ok(w) if fold is None else fold, ONE_ROW=m == 1, BIAS_FOLD=bias_fold)
    if persistent:
        items = grid[0] * split
        programs = min(items, _sm_count(x2.device) * max(1, 8 // cfg.num_warps))
        _wo_planes_persistent_kernel[(programs,)](*args, NUM_STAGES=cfg.num_stages, **meta, num_warps=cfg.num_warps,
                                                  num_stages=cfg.num_stages)
    else:
        common.launch(_wo_planes_kernel, grid, args, meta, cfg.num_warps, cfg.num_stages)
    return out
