"""The one-row GEMV over int4 weights kept in fragment order (``wo_frag``'s layout: QUANTC_WO_FRAG=1).

``wo_gemv`` reads the plane layout; a layer kept in fragment order only ran its single rows on the tensor-core
kernel, padded to 16 tokens: 0.86-1.0x the plane GEMV (bench/results/frag_only_probe_h100_s20.json). This kernel
reads the fragment-order words with the GEMV's arithmetic (``wo_gemv``'s module doc: the lop3 / half2 decode, the
activation scaled by a power of two a chunk so that half2 products cannot overflow).

A lane's 16-byte chunk of a 64-deep step (T, s, lane 4 g + t) is four words v, each the eight nibbles of rows
g and g + 8 of row tile T at K = 64 s + 16 t + 4 v + (0 .. 3). ``half2_ptx``'s decode (DECODE_*) turns a word into
four half2 values: t0 (row g, K + 0, + 1), t1 (row g + 8, the same K), t2 (row g, K + 2, + 3), t3 (row g + 8).
So one chunk is two rows x 16 consecutive K, and its activations (16 values, two 8-byte loads) serve both rows:
DOT_FRAG4 sums the chunk's 16 half2 products a row into two fp32 values (8 fp16 products a half at most, each
|q x r| < 15 x 256: no overflow). Each thread holds RT row tiles x RS steps of chunks (16-byte loads, a warp's
512 contiguous bytes a (T, s)); WARPS_T warps along the row tiles, WARPS_S along the steps; after the K loop the
four lanes of a row and the WARPS_S warps add up (shuffles, then shared memory). Split-K as ``wo_mma4``.

The GPU kernel is Gluon (``_frag_gemv_kernel``); its Triton twin (``_frag_gemv_twin``) takes the same chunks
under the interpreter (the PTX as plain Triton: fp32 products of the fp16-rounded packs), so CI checks the
indexing, scales, zero points and split-K; the PTX is emulated in numpy in tests/runtime/test_wo_frag_gemv.py.
Compiled for sm_90; not yet run on a GPU (bench/frag_only_probe.py times it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from . import common
from .common import cdiv
from .half2_ptx import X_EXP_INT4, gl_bf16_pair, gl_decode, gl_pack, half_of, pack_half2
from .wo_gemv import grid_sms
from .wo_mma4 import split_workspace

# $0 row g, $1 row g + 8 (fp32): the decoded half2 values t_vj at $(2 + 4 v + j), the packs
# (x[K], x[K + 1]) at $(18 + 2 v) and (x[K + 2], x[K + 3]) at $(19 + 2 v), K = 16 t + 4 v
DOT_FRAG4 = tl.constexpr("{\n.reg .b32 ag, ah;\n.reg .b16 lo, hi;\n.reg .f32 flo, fhi;\n"
                         "mul.rn.f16x2 ag, $2, $18;\nfma.rn.f16x2 ag, $4, $19, ag;\n"
                         "mul.rn.f16x2 ah, $3, $18;\nfma.rn.f16x2 ah, $5, $19, ah;\n"
                         + "".join(f"fma.rn.f16x2 ag, ${2 + 4 * v}, ${18 + 2 * v}, ag;\n"
                                   f"fma.rn.f16x2 ag, ${4 + 4 * v}, ${19 + 2 * v}, ag;\n"
                                   f"fma.rn.f16x2 ah, ${3 + 4 * v}, ${18 + 2 * v}, ah;\n"
                                   f"fma.rn.f16x2 ah, ${5 + 4 * v}, ${19 + 2 * v}, ah;\n" for v in range(1, 4))
                         + "mov.b32 {lo, hi}, ag;\ncvt.f32.f16 flo, lo;\ncvt.f32.f16 fhi, hi;\nadd.f32 $0, flo, fhi;\n"
                         "mov.b32 {lo, hi}, ah;\ncvt.f32.f16 flo, lo;\ncvt.f32.f16 fhi, hi;\nadd.f32 $1, flo, fhi;\n}")


# ---- the Triton twin (the interpreter): the same chunks and sums, the PTX as plain Triton

@triton.jit
def _frag_gemv_twin(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr, N, K, stride_sn,
    GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr, SPLIT_K: tl.constexpr,
):
    steps = K // 64
    blocks = steps // BS
    per = tl.cdiv(blocks, SPLIT_K)
    b_start = tl.program_id(1) * per
    b_end = tl.minimum(b_start + per, blocks)
    n_tiles = N // 16
    tt = tl.program_id(0) * BT + tl.arange(0, BT)
    tw = tl.minimum(tt, n_tiles - 1)  # loads clamped, stores masked
    ss = tl.arange(0, BS)
    lane = tl.arange(0, 32)
    v = tl.arange(0, 4)
    w_off = ((tw.to(tl.int64)[:, None, None, None] * steps + ss[None, :, None, None]) * 128
             + lane[None, None, :, None] * 4 + v[None, None, None, :])  # (BT, BS, 32, 4)
    x_off = ss[:, None, None] * 64 + (lane % 4)[None, :, None] * 16 + v[None, None, :] * 4  # (BS, 32, 4)
    row_g = tw[:, None, None] * 16 + (lane // 4)[None, None, :]  # (BT, 1, 32)
    acc_g = tl.zeros((BT, BS, 32), tl.float32)
    acc_h = tl.zeros((BT, BS, 32), tl.float32)
    for b in range(b_start, b_end):
        words = tl.load(w_ptr + w_off + b * BS * 128)
        x0 = tl.load(x_ptr + x_off + b * BS * 64).to(tl.float32)
        x1 = tl.load(x_ptr + x_off + b * BS * 64 + 1).to(tl.float32)
        x2 = tl.load(x_ptr + x_off + b * BS * 64 + 2).to(tl.float32)
        x3 = tl.load(x_ptr + x_off + b * BS * 64 + 3).to(tl.float32)
        amax = tl.max(tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)), tl.maximum(tl.abs(x2), tl.abs(x3))), axis=2)
        e = tl.minimum(tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, X_EXP_INT4 + 1), 254)
        r = ((-e + (254 + X_EXP_INT4)) << 23).to(tl.float32, bitcast=True)[:, :, None]  # (BS, 32, 1)
        r_inv = ((e - X_EXP_INT4) << 23).to(tl.float32, bitcast=True)  # (BS, 32)
        pa = pack_half2(x0 * r, x1 * r)[None]  # (1, BS, 32, 4)
        pb = pack_half2(x2 * r, x3 * r)[None]
        g = ((b * BS + ss) * 64) // GROUP  # (BS,)
        s_g = row_g.to(tl.int64) * stride_sn + g[None, :, None]  # (BT, BS, 32)
        z_g = 0.0
        z_h = 0.0
        if HAS_ZERO:
            z_g = tl.load(z_ptr + s_g).to(tl.float32)[:, :, :, None]
            z_h = tl.load(z_ptr + s_g + 8 * stride_sn).to(tl.float32)[:, :, :, None]
        # nibble j + 4 h of a word: j = rh + 2 kh (rows g, g + 8), h the half (K + 2 kh + h)
        dot_g = 0.0
        dot_h = 0.0
        for j in tl.static_range(4):
            for h in tl.static_range(2):
                c = (words >> (4 * j + 16 * h)) & 15
                p = pa if j < 2 else pb
                if j % 2 == 0:
                    q = c.to(tl.float32) - z_g if HAS_ZERO else ((c ^ 8) - 8).to(tl.float32)
                    dot_g += q * half_of(p, h == 1)
                else:
                    q = c.to(tl.float32) - z_h if HAS_ZERO else ((c ^ 8) - 8).to(tl.float32)
                    dot_h += q * half_of(p, h == 1)
        sc_g = tl.load(s_ptr + s_g).to(tl.float32)
        sc_h = tl.load(s_ptr + s_g + 8 * stride_sn).to(tl.float32)
        acc_g += tl.sum(dot_g, axis=3) * sc_g * r_inv[None]
        acc_h += tl.sum(dot_h, axis=3) * sc_h * r_inv[None]
    # rows 16 T + g (the 4 lanes t of a g, every step) and 16 T + 8 + g
    tot_g = tl.sum(tl.reshape(tl.sum(acc_g, axis=1), (BT, 8, 4)), axis=2)  # (BT, 8): rows 16 T + g
    tot_h = tl.sum(tl.reshape(tl.sum(acc_h, axis=1), (BT, 8, 4)), axis=2)  # rows 16 T + 8 + g
    rows_g = (tl.program_id(0) * BT + tl.arange(0, BT))[:, None] * 16 + tl.arange(0, 8)[None, :]
    _store_or_reduce2(tot_g, tot_h, out_ptr, ws_ptr, rows_g, N, cnt_ptr + tl.program_id(0), SPLIT_K)


@triton.jit
def _store_or_reduce2(tot_g, tot_h, out_ptr, ws_ptr, rows_g, N, cnt_ptr, SPLIT_K: tl.constexpr):
    """``wo_mma4.store_or_reduce`` for the two halves of the row tiles (rows g and g + 8) under one arrival count."""
    mask = rows_g < N
    if SPLIT_K > 1:
        tl.atomic_add(ws_ptr + rows_g, tot_g, mask=mask, sem="relaxed")
        tl.atomic_add(ws_ptr + rows_g + 8, tot_h, mask=mask, sem="relaxed")
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            g = tl.load(ws_ptr + rows_g, mask=mask, other=0.0, cache_modifier=".cg")
            h = tl.load(ws_ptr + rows_g + 8, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + rows_g, g.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(out_ptr + rows_g + 8, h.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(ws_ptr + rows_g, 0.0, mask=mask)
            tl.store(ws_ptr + rows_g + 8, 0.0, mask=mask)
            tl.atomic_xchg(cnt_ptr, 0)
    else:
        tl.store(out_ptr + rows_g, tot_g.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + rows_g + 8, tot_h.to(out_ptr.dtype.element_ty), mask=mask)


# ---- the GPU kernel

@gluon.jit
def _frag_gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr, N, K, stride_sn,
    GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, RT: gl.constexpr, RS: gl.constexpr, WARPS_T: gl.constexpr,
    WARPS_S: gl.constexpr, SPLIT_K: gl.constexpr,
):
    """The twin's steps with the layout spelled out: a thread holds RT row tiles x RS steps of one lane's chunks."""
    BT: gl.constexpr = RT * WARPS_T
    BS: gl.constexpr = RS * WARPS_S
    WL: gl.constexpr = gl.BlockedLayout([RT, RS, 1, 4], [1, 1, 32, 1], [WARPS_T, WARPS_S, 1, 1], [3, 2, 1, 0])
    L3: gl.constexpr = gl.SliceLayout(3, WL)  # (T, s, lane): a chunk
    XL: gl.constexpr = gl.SliceLayout(0, WL)  # (s, lane, v): the activations, every row tile the same
    X2: gl.constexpr = gl.SliceLayout(2, XL)  # (s, lane)
    steps = K // 64
    blocks = steps // BS
    per = gl.cdiv(blocks, SPLIT_K)
    b_start = gl.program_id(1) * per
    b_end = gl.minimum(b_start + per, blocks)
    n_tiles = N // 16
    tt = gl.minimum(gl.program_id(0) * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3))),
                    n_tiles - 1)  # loads clamped, stores masked
    ss = gl.arange(0, BS, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    ll = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    tt3 = gl.expand_dims(gl.expand_dims(tt, 1), 2)
    ss3 = gl.expand_dims(gl.expand_dims(ss, 0), 2)
    ll3 = gl.expand_dims(gl.expand_dims(ll, 0), 1)
    chunk3 = (tt3.to(gl.int64) * steps + ss3) * 128 + ll3 * 4  # (BT, BS, 32): a chunk's first word
    vv = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, WL))))
    w_tile = w_ptr + (gl.expand_dims(chunk3, 3) + gl.expand_dims(gl.expand_dims(gl.expand_dims(vv, 0), 1), 2))
    row_g3 = tt3 * 16 + ll3 // 4  # (BT, 1, 32)
    # the activations as (BS, 32, 4) int64 words (four bf16: K 64 s + 16 t + 4 v ..), x 8-byte aligned
    xs = gl.arange(0, BS, layout=gl.SliceLayout(1, X2))
    xl = gl.arange(0, 32, layout=gl.SliceLayout(0, X2))
    xv = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, XL)))
    x_off = (gl.expand_dims(gl.expand_dims(xs * 16, 1) + gl.expand_dims((xl % 4) * 4, 0), 2)
             + gl.expand_dims(gl.expand_dims(xv, 0), 1))
    xq = x_ptr.to(gl.pointer_type(gl.int64), bitcast=True) + x_off
    acc_g = gl.zeros([BT, BS, 32], gl.float32, L3)
    acc_h = gl.zeros([BT, BS, 32], gl.float32, L3)
    # the next block's words and activations load while this one computes; unmasked, a prefetch past the slice
    # reads its last block (a masked load zero-fills its registers first)
    last = gl.maximum(gl.minimum(b_end, blocks) - 1, 0)
    w_nxt = gl.load(w_tile + gl.minimum(b_start, last) * BS * 128, eviction_policy="evict_first")
    x_nxt = gl.load(xq + gl.minimum(b_start, last) * BS * 16)
    for b in range(b_start, b_end):
        words = w_nxt
        xa = x_nxt
        nxt = gl.minimum(b + 1, last)
        w_nxt = gl.load(w_tile + nxt * BS * 128, eviction_policy="evict_first")
        x_nxt = gl.load(xq + nxt * BS * 16)
        x0, x1 = gl_bf16_pair(xa.to(gl.int32))
        x2, x3 = gl_bf16_pair((xa >> 32).to(gl.int32))
        amax = gl.max(gl.maximum(gl.maximum(gl.abs(x0), gl.abs(x1)), gl.maximum(gl.abs(x2), gl.abs(x3))), axis=2)
        e = gl.minimum(gl.maximum((amax.to(gl.int32, bitcast=True) >> 23) & 0xFF, X_EXP_INT4 + 1), 254)
        r = gl.expand_dims(((-e + (254 + X_EXP_INT4)) << 23).to(gl.float32, bitcast=True), 2)
        r_inv = gl.expand_dims(gl.convert_layout(((e - X_EXP_INT4) << 23).to(gl.float32, bitcast=True),
                                                 gl.SliceLayout(0, L3)), 0)  # (1, BS, 32)
        pa = gl_pack(x0 * r, x1 * r)  # (BS, 32, 4)
        pb = gl_pack(x2 * r, x3 * r)
        pa_e, pa_o = gl.split(gl.reshape(pa, [BS, 32, 2, 2]))  # v = 2 v1 + v0
        pa0, pa2 = gl.split(pa_e)
        pa1, pa3 = gl.split(pa_o)
        pb_e, pb_o = gl.split(gl.reshape(pb, [BS, 32, 2, 2]))
        pb0, pb2 = gl.split(pb_e)
        pb1, pb3 = gl.split(pb_o)
        w_e, w_o = gl.split(gl.reshape(words, [BT, BS, 32, 2, 2]))
        w0, w2 = gl.split(w_e)
        w1, w3 = gl.split(w_o)
        g = ((b * BS + ss3) * 64) // GROUP  # (1, BS, 1)
        s_g = row_g3.to(gl.int64) * stride_sn + g  # (BT, BS, 32)
        c0 = s_g.to(gl.int32)
        c1 = c0
        if HAS_ZERO:  # -(1024 + z) and -(64 + z) half2 constants for rows g (t0, t2) and g + 8 (t1, t3)
            c0 = (0x6400 + gl.load(z_ptr + s_g).to(gl.int32)) * 0x10001
            c1 = (0xD400 + 16 * gl.load(z_ptr + s_g + 8 * stride_sn).to(gl.int32)) * 0x10001
        t00, t01, t02, t03 = gl_decode(gl.convert_layout(w0, L3), c0, c1, HAS_ZERO, 1)
        t10, t11, t12, t13 = gl_decode(gl.convert_layout(w1, L3), c0, c1, HAS_ZERO, 1)
        t20, t21, t22, t23 = gl_decode(gl.convert_layout(w2, L3), c0, c1, HAS_ZERO, 1)
        t30, t31, t32, t33 = gl_decode(gl.convert_layout(w3, L3), c0, c1, HAS_ZERO, 1)
        PL: gl.constexpr = gl.SliceLayout(0, L3)
        dot_g, dot_h = gl.inline_asm_elementwise(
            DOT_FRAG4, "=r,=r" + ",r" * 24,
            [t00, t01, t02, t03, t10, t11, t12, t13, t20, t21, t22, t23, t30, t31, t32, t33,
             gl.expand_dims(gl.convert_layout(pa0, PL), 0), gl.expand_dims(gl.convert_layout(pb0, PL), 0),
             gl.expand_dims(gl.convert_layout(pa1, PL), 0), gl.expand_dims(gl.convert_layout(pb1, PL), 0),
             gl.expand_dims(gl.convert_layout(pa2, PL), 0), gl.expand_dims(gl.convert_layout(pb2, PL), 0),
             gl.expand_dims(gl.convert_layout(pa3, PL), 0), gl.expand_dims(gl.convert_layout(pb3, PL), 0)],
            dtype=[gl.float32, gl.float32], is_pure=True, pack=1)
        sc_g = gl.load(s_ptr + s_g).to(gl.float32)
        sc_h = gl.load(s_ptr + s_g + 8 * stride_sn).to(gl.float32)
        acc_g += dot_g * sc_g * r_inv
        acc_h += dot_h * sc_h * r_inv
    tot_g = gl.sum(gl.reshape(gl.sum(acc_g, axis=1), [BT, 8, 4]), axis=2)  # (BT, 8): rows 16 T + g
    tot_h = gl.sum(gl.reshape(gl.sum(acc_h, axis=1), [BT, 8, 4]), axis=2)  # rows 16 T + 8 + g
    # the rows through the same reductions, so that they take the sums' layout (the unclamped row tiles)
    t_out = gl.program_id(0) * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    row3 = gl.expand_dims(gl.expand_dims(t_out, 1), 2) * 16 + ll3 // 4 + ss3 * 0  # (BT, BS, 32)
    rows_g = gl.max(gl.reshape(gl.max(row3, axis=1), [BT, 8, 4]), axis=2)
    _store_or_reduce2(tot_g, tot_h, out_ptr, ws_ptr, rows_g, N, cnt_ptr + gl.program_id(0), SPLIT_K)


def frag_gemv_ok(x2: torch.Tensor, fw) -> bool:
    """Whether this kernel takes the call: one row, 8-byte aligned, K in whole blocks of its steps."""
    return x2.shape[0] == 1 and x2.stride(1) == 1 and x2.data_ptr() % 8 == 0 and fw.k % 128 == 0


def frag_gemv_config(n: int, k: int, sms: int) -> tuple[int, int, int, int, int]:
    """(RT, RS, WARPS_T, WARPS_S, split): 4 row tiles x 1 step of chunks a thread (64 bytes of words in flight, the
    activations' packs shared by 8 rows), the 4 warps along K (a program 64 rows, 256 deep a block): 2.89 SASS
    instructions an element in the K loop against 3.98 for the plane GEMV's 16-row tile and 4.48 for one row tile
    a thread (``bench/kernel_sass.py --kernel fgemv / gemv``, triton 3.6); split-K to about three programs an SM
    where the programs are fewer than the SMs (``wo_gemv.gemv_config``'s rule). Untimed."""
    programs = cdiv(n // 16, 4)
    split = 1 if programs >= sms else max(1, min(cdiv(3 * sms, programs), k // 256))
    return 4, 1, 1, 4, split


def launch_frag_gemv(x2: torch.Tensor, fw, config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """bf16 (1, K) x an int4 ``wo_frag.FragWeight`` (N, K) -> bf16 (1, N): the Gluon kernel on a GPU, its Triton
    twin under the interpreter."""
    if not frag_gemv_ok(x2, fw):
        raise ValueError(f"the fragment-order GEMV takes one 8-byte aligned row of unit stride and K a multiple of "
                         f"128; got {tuple(x2.shape)}, strides {tuple(x2.stride())}, K = {fw.k}")
    n, k = fw.n, fw.k
    rt, rs, warps_t, warps_s, split = config or frag_gemv_config(n, k, grid_sms(x2.device))
    bt, bs = rt * warps_t, rs * warps_s
    while (k // 64) % bs:  # K in whole blocks of steps
        bs //= 2
        rs = max(1, bs // warps_s)
        warps_s = bs // rs
    split = max(1, min(split, (k // 64) // bs))
    out = common.empty((1, n), torch.bfloat16, x2.device)
    grid = (cdiv(n // 16, bt), split)
    ws, cnt = split_workspace(x2.device, n, grid[0]) if split > 1 else (out, out)
    zeros = fw.zeros if fw.zeros is not None else fw.scale
    args = (x2, fw.data, fw.scale, zeros, out, ws, cnt, n, k, fw.scale.stride(0))
    consts = dict(GROUP=fw.group, HAS_ZERO=fw.zeros is not None, SPLIT_K=split)
    if common.interpreted() or x2.device.type != "cuda":
        common.launch(_frag_gemv_twin, grid, args, dict(consts, BT=bt, BS=bs), 4, 1)
    else:
        common.launch(_frag_gemv_kernel, grid, args,
                      dict(consts, RT=rt, RS=rs, WARPS_T=warps_t, WARPS_S=warps_s), warps_t * warps_s, 1)
    return out
