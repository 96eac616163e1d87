"""Grouped GEMM over experts, with the gate/up activation fused. Kernel ids ``moe_bf16``, ``moe_fp8``,
``moe_fp8_block``, ``moe_int8``, ``moe_weight_only``, ``moe_mxfp4_mxfp8_emulated``, ``moe_mxfp8_emulated``.

Rows come from ``moe_routing.align_by_expert``: a program owns one block of BLOCK_M sorted
(token, slot) pairs, all routed to one expert, and BLOCK_N output columns:

    out[p, n] = act( sum_k a[row(p), k] * deq(W[e])[n, k] (+ bias[e, n]) ) (* topk_weight[p])

with row(p) = p // top_k for gate_up (the token) and p for down (the pair). Fused activations read the
gate from weight rows [0, I) and up from rows [I, 2I) (gpt-oss's interleaved rows are split at load):

- ``silu``:    silu(g) * u
- ``gpt_oss``: g = min(g, limit); u = clamp(u, -limit, limit); (u + 1) * g * sigmoid(alpha * g)

Weights: any ``wo_format`` layout with a leading expert dim. Activations: bf16 (weights dequantized in
registers; MX pairs first round the activations to mxfp8 and run this path, see ``wo_mx``), or
quantized per row / per 1x128 group (fp8, int8) with raw fp8 x fp8 or int8 x int8 dots and both scales
applied per K tile.

4-bit weights (int4 sym/asym, mxfp4, nvfp4) with bf16 activations take the byte path of ``wo_mma4``:
the packed words are read as (N, K/2) bytes, ``nibble_decode.decode_pairs`` gives exact bf16 values,
and scales go on the fp32 partials when a K tile lies in one group (zero points as ``z * sum(a)``),
else on the bf16 tile per element. K need not be a multiple of BLOCK_K: the full tiles run unmasked
along K, one masked tail tile takes the rest (gpt-oss's K = 2880 under BLOCK_K = 128).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from . import nibble_decode
from .common import cc_major, cdiv, env, grouped_tile, launch
from .nibble_decode import decode_pairs
from .wo_format import BF16, FP8, INT4, INT8, S_NONE, UPCAST_DOT, WoWeight, decode_scale, dequant_tile, dequantize, load_tile_scales
from .wo_planes import planes_step

ACTIVATIONS = {"none": 0, "silu": 1, "gpt_oss": 2}
GPT_OSS_ALPHA, GPT_OSS_LIMIT = 1.702, 7.0


@triton.jit
def _expert_tile(
    a_rows, a_mask, w_e, s_e, z_e, as_rows, rows, n_mask, t, K,
    stride_wn, stride_sn,
    FMT: tl.constexpr, SFMT: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
    HAS_ZERO: tl.constexpr, A_QUANT: tl.constexpr, A_GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
):
    """Partial product of one K tile for weight rows ``rows``: (BLOCK_M, BLOCK_N) fp32, all scales applied."""
    BKW: tl.constexpr = BLOCK_K // PACK
    PER_TILE: tl.constexpr = GROUP % BLOCK_K == 0
    kw = t * BKW + tl.arange(0, BKW)
    k_mask = kw < K // PACK
    words = tl.load(w_e + rows.to(tl.int64)[:, None] * stride_wn + kw[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0.0)
    s_rows = (rows // ROW_BLOCK).to(tl.int64) * stride_sn
    s, z = load_tile_scales(s_e, z_e, s_rows, n_mask, kw, k_mask, t, SFMT, PACK, GROUP, HAS_ZERO, BLOCK_K)
    ak = t * BLOCK_K + tl.arange(0, BLOCK_K)
    a = tl.load(a_rows + ak[None, :], mask=a_mask[:, None] & (ak < K)[None, :], other=0.0)
    if A_QUANT == 0:
        w = dequant_tile(words, s, not PER_TILE)
        if UPCAST:
            part = tl.dot(a.to(tl.float32), tl.trans(w))
        else:
            part = tl.dot(a, tl.trans(w.to(tl.bfloat16)))
    else:  # raw fp8 x fp8 or int8 x int8
        part = tl.dot(a, tl.trans(words)).to(tl.float32)
    if PER_TILE:
        part = part * s[None, :]
    if A_QUANT != 0:
        sa = tl.load(as_rows + (t * BLOCK_K) // A_GROUP, mask=a_mask, other=0.0)
        part = part * sa[:, None]
    return part


@triton.jit
def _raw_dot(acc, a, w_e, rows, n_mask, ak, K, stride_wn, A_QUANT: tl.constexpr, UPCAST: tl.constexpr,
             EVEN_K: tl.constexpr):
    """acc + a @ W[rows, ak].T with no scale: the weights' and activations' scales are constant over K
    (``RAW``), so the MMA chain accumulates and ``_raw_scaled`` applies them once. EVEN_K: BLOCK_K divides
    K, so only the row mask is needed."""
    w_ptrs = w_e + rows.to(tl.int64)[:, None] * stride_wn + ak[None, :]
    if EVEN_K:
        w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
    else:
        w = tl.load(w_ptrs, mask=n_mask[:, None] & (ak < K)[None, :], other=0.0)
    # one return: Triton compiles the code after a constexpr branch's early return too
    if A_QUANT == 2:  # int8 x int8, exact int32 sums
        out = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
    elif A_QUANT == 1:  # fp8 x fp8
        out = tl.dot(a, tl.trans(w), acc)
    elif UPCAST:  # the interpreter: bf16 operands as fp32 (their products are exact in fp32)
        out = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc)
    else:
        out = tl.dot(a, tl.trans(w.to(tl.bfloat16)), acc)  # e4m3 and int8 weights are exact in bf16
    return out


@triton.jit
def _raw_scaled(acc, s_e, rows, n_mask, as_rows, p_mask, stride_sn, SFMT: tl.constexpr, A_QUANT: tl.constexpr):
    """The raw sums times the per-row weight scale and the per-token (or per-tensor) activation scale."""
    out = acc.to(tl.float32)
    if SFMT != 0:
        out = out * decode_scale(tl.load(s_e + rows.to(tl.int64) * stride_sn, mask=n_mask, other=0.0), SFMT)[None, :]
    if A_QUANT != 0:
        out = out * tl.load(as_rows, mask=p_mask, other=0.0)[:, None]
    return out


@triton.jit
def _group_values(base, s_rows, n_mask, k0, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, MASK_K: tl.constexpr):
    """Per-group values (scales or zero points) of the K tile at k0: (BLOCK_N,) when the tile lies in one
    group, else (BLOCK_N, BLOCK_K // GROUP). MASK_K: the tail tile, whose last groups may lie past K."""
    if GROUP % BLOCK_K == 0:
        v = tl.load(base + s_rows + k0 // GROUP, mask=n_mask, other=0.0)
    else:  # (a plain early return would still compile the code after it for every GROUP)
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        m = n_mask[:, None]
        if MASK_K:
            m = m & (g < tl.cdiv(K, GROUP))[None, :]
        v = tl.load(base + s_rows[:, None] + g[None, :], mask=m, other=0.0)
    return v


@triton.jit
def _spread(v, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N, BLOCK_K // GROUP) -> (BLOCK_N, BLOCK_K): each group's value over its GROUP columns."""
    return tl.reshape(tl.broadcast_to(v[:, :, None], (v.shape[0], BLOCK_K // GROUP, GROUP)),
                      (v.shape[0], BLOCK_K))


@triton.jit
def _nibble_tile(
    a, w_e, s_e, z_e, rows, n_mask, k0, K,
    stride_wn, stride_sn,
    FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, HAS_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MASK_K: tl.constexpr, ASM: tl.constexpr, UPCAST: tl.constexpr,
):
    """4-bit weights x bf16 ``a`` (BLOCK_M, BLOCK_K) for the K tile at k0 and weight rows ``rows``, read
    as bytes from ``w_e`` (N, K/2): (BLOCK_M, BLOCK_N) fp32, scales and zero points applied."""
    PER_TILE: tl.constexpr = GROUP % BLOCK_K == 0
    kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    w_ptrs = w_e + rows.to(tl.int64)[:, None] * stride_wn + kb[None, :]
    if MASK_K:
        b = tl.load(w_ptrs, mask=n_mask[:, None] & (kb < K // 2)[None, :], other=0)
    else:
        b = tl.load(w_ptrs, mask=n_mask[:, None], other=0)
    lo, hi = decode_pairs(b, FMT, not HAS_ZERO and FMT == 1, ASM)
    w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    s_rows = (rows // ROW_BLOCK).to(tl.int64) * stride_sn
    s = decode_scale(_group_values(s_e, s_rows, n_mask, k0, K, GROUP, BLOCK_K, MASK_K), SFMT)
    if not PER_TILE:
        v = w.to(tl.float32)
        if HAS_ZERO:
            v = v - _spread(_group_values(z_e, s_rows, n_mask, k0, K, GROUP, BLOCK_K, MASK_K).to(tl.float32),
                            GROUP, BLOCK_K)
        w = (v * _spread(s, GROUP, BLOCK_K)).to(tl.bfloat16)
    if UPCAST:
        part = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)))
    else:
        part = tl.dot(a, tl.trans(w))
    if PER_TILE:
        if HAS_ZERO:
            z = _group_values(z_e, s_rows, n_mask, k0, K, GROUP, BLOCK_K, MASK_K).to(tl.float32)
            part = part - tl.sum(a.to(tl.float32), axis=1)[:, None] * z[None, :]
        part = part * s[None, :]
    return part


@triton.jit
def _nibble_step(
    acc, acc_up, a_rows, p_mask, w_e, s_e, z_e, offs_n, n_mask, k0, N, K,
    stride_wn, stride_sn,
    FMT: tl.constexpr, SFMT: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, HAS_ZERO: tl.constexpr,
    ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MASK_K: tl.constexpr, ASM: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One K tile of the byte path: the activation tile is loaded once for the gate and the up rows."""
    ak = k0 + tl.arange(0, BLOCK_K)
    if MASK_K:
        a = tl.load(a_rows + ak[None, :], mask=p_mask[:, None] & (ak < K)[None, :], other=0.0)
    else:
        a = tl.load(a_rows + ak[None, :], mask=p_mask[:, None], other=0.0)
    acc += _nibble_tile(a, w_e, s_e, z_e, offs_n, n_mask, k0, K, stride_wn, stride_sn, FMT, SFMT, GROUP,
                        ROW_BLOCK, HAS_ZERO, BLOCK_N, BLOCK_K, MASK_K, ASM, UPCAST)
    if ACT != 0:
        acc_up += _nibble_tile(a, w_e, s_e, z_e, offs_n + N, n_mask, k0, K, stride_wn, stride_sn, FMT, SFMT, GROUP,
                               ROW_BLOCK, HAS_ZERO, BLOCK_N, BLOCK_K, MASK_K, ASM, UPCAST)
    return acc, acc_up


@triton.jit
def _bias_act(acc, acc_up, bias_e, offs_n, n_mask, N, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
              ALPHA: tl.constexpr, LIMIT: tl.constexpr):
    """fp32 (rows, BLOCK_N) gate sums (``acc``; ``acc_up`` the up rows' when ACT != 0) -> the expert's bias (row
    ``bias_e``: gate columns, then up columns from N) added, then the fused activation."""
    if HAS_BIAS:
        acc += tl.load(bias_e + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if ACT != 0:
            acc_up += tl.load(bias_e + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = acc * tl.sigmoid(acc) * acc_up
    elif ACT == 2:
        gate = tl.minimum(acc, LIMIT)
        up = tl.minimum(tl.maximum(acc_up, -LIMIT), LIMIT)
        acc = (up + 1.0) * gate * tl.sigmoid(ALPHA * gate)
    return acc


@triton.jit
def _pair_rows_kernel(h_ptr, bias_ptr, ids_ptr, topw_ptr, out_ptr, N, stride_h, stride_be,
                      ACT: tl.constexpr, HAS_BIAS: tl.constexpr, MUL_TOPW: tl.constexpr,
                      ALPHA: tl.constexpr, LIMIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (token, expert) pair's row of a GEMM output that had no epilogue (the MoE GEMV's): the grouped GEMM's
    bias, activation and routing weight, bf16 out (N columns: I for a fused activation)."""
    pair = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    row = h_ptr + pair.to(tl.int64) * stride_h
    acc = tl.load(row + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    acc_up = acc
    if ACT != 0:
        acc_up = tl.load(row + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    e = tl.load(ids_ptr + pair).to(tl.int64)
    acc = _bias_act(acc, acc_up, bias_ptr + e * stride_be, offs_n, n_mask, N, HAS_BIAS, ACT, ALPHA, LIMIT)
    if MUL_TOPW:
        acc = acc * tl.load(topw_ptr + pair).to(tl.float32)
    tl.store(out_ptr + pair.to(tl.int64) * N + offs_n[None, :], acc.to(tl.bfloat16), mask=n_mask[None, :])


def pair_rows(h: torch.Tensor, ids: torch.Tensor, act: str, bias: torch.Tensor | None = None,
              topk_weights: torch.Tensor | None = None) -> torch.Tensor:
    """bf16 (P, N or 2I) GEMM rows of (token, expert) pairs (expert ``ids[p]``) -> bf16 (P, N or I) with the
    grouped GEMM's epilogue: the expert's ``bias`` row, the activation ``act``, times ``topk_weights[p]``."""
    fused = ACTIVATIONS[act]
    n = h.shape[1] // 2 if fused else h.shape[1]
    out = torch.empty((h.shape[0], n), dtype=torch.bfloat16, device=h.device)
    block = min(1024, triton.next_power_of_2(n))
    launch(_pair_rows_kernel, (h.shape[0], cdiv(n, block)),
           (h, bias if bias is not None else h, ids, topk_weights if topk_weights is not None else h, out, n,
            h.stride(0), bias.stride(0) if bias is not None else 0),
           dict(ACT=fused, HAS_BIAS=bias is not None, MUL_TOPW=topk_weights is not None, ALPHA=GPT_OSS_ALPHA,
                LIMIT=GPT_OSS_LIMIT, BLOCK_N=block), 4, 1)
    return out


@triton.jit
def _moe_gemm_kernel(
    a_ptr, as_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, topw_ptr, out_ptr,
    sorted_ids_ptr, block_expert_ptr, total_ptr,
    N, K, num_pairs,
    stride_am, stride_asm, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_om,
    A_DIV: tl.constexpr,                      # top_k for gate_up (row = token), 1 for down (row = pair)
    FMT: tl.constexpr, SFMT: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_GLOBAL: tl.constexpr,
    A_QUANT: tl.constexpr, A_GROUP: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, MUL_TOPW: tl.constexpr,
    ALPHA: tl.constexpr, LIMIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    NIBBLES: tl.constexpr, ASM: tl.constexpr,  # 4-bit weights x bf16: the byte path (``_nibble_tile``)
    GROUP_M: tl.constexpr,
    PLANES: tl.constexpr, PLANE_FMT: tl.constexpr,  # ... or the dense decode's nibble planes (int32 words)
    RAW: tl.constexpr,  # scales constant over K: raw MMA accumulation, scaled once at the end
    EVEN_K: tl.constexpr,  # RAW with BLOCK_K dividing K: the K loop's loads keep their row masks only
):
    # GROUP_M consecutive row blocks (mostly one expert's: blocks are sorted by expert) take each N tile
    # in turn, so an expert's weight tile is read from DRAM once per GROUP_M blocks rather than once per
    # block: with one block after another sweeping every N tile, an expert whose weights pass the L2
    # (Mixtral: 235 MB of gate_up) was streamed again for each of its row blocks
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    blk, nt = grouped_tile(pid, tl.num_programs(0) // n_tiles, n_tiles, GROUP_M)
    if blk * BLOCK_M >= tl.load(total_ptr):
        return
    e = tl.load(block_expert_ptr + blk).to(tl.int64)
    pairs = tl.load(sorted_ids_ptr + blk * BLOCK_M + tl.arange(0, BLOCK_M))
    p_mask = pairs < num_pairs
    a_rows = a_ptr + (pairs // A_DIV).to(tl.int64)[:, None] * stride_am
    as_rows = as_ptr + (pairs // A_DIV).to(tl.int64) * stride_asm
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_e = w_ptr + e * stride_we
    s_e = s_ptr + e * stride_se
    z_e = z_ptr + e * stride_se
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if PLANES:
        w_rows = w_e + offs_n.to(tl.int64)[:, None] * stride_wn + tl.arange(0, BLOCK_K // 8)[None, :]
        x_tile = a_rows + tl.arange(0, BLOCK_K)[None, :]
        s_rows = offs_n.to(tl.int64) * stride_sn
        for t in range(0, K // BLOCK_K):
            acc = planes_step(acc, a_ptr, x_tile, w_rows, s_e, z_e, s_rows, n_mask, p_mask, t * BLOCK_K,
                               PLANE_FMT, SFMT, GROUP, HAS_ZERO, BLOCK_M, BLOCK_N, BLOCK_K, False, False, ASM, UPCAST)
            if ACT != 0:
                acc_up = planes_step(acc_up, a_ptr, x_tile, w_rows + N * stride_wn, s_e, z_e, s_rows + N * stride_sn,
                                      n_mask, p_mask, t * BLOCK_K, PLANE_FMT, SFMT, GROUP, HAS_ZERO, BLOCK_M, BLOCK_N,
                                      BLOCK_K, False, False, ASM, UPCAST)
    elif RAW:
        raw_dtype = tl.int32 if A_QUANT == 2 else tl.float32
        raw = tl.zeros((BLOCK_M, BLOCK_N), raw_dtype)
        raw_up = tl.zeros((BLOCK_M, BLOCK_N), raw_dtype)
        for t in range(0, tl.cdiv(K, BLOCK_K)):
            ak = t * BLOCK_K + tl.arange(0, BLOCK_K)
            if EVEN_K:
                a = tl.load(a_rows + ak[None, :], mask=p_mask[:, None], other=0.0)
            else:
                a = tl.load(a_rows + ak[None, :], mask=p_mask[:, None] & (ak < K)[None, :], other=0.0)
            raw = _raw_dot(raw, a, w_e, offs_n, n_mask, ak, K, stride_wn, A_QUANT, UPCAST, EVEN_K)
            if ACT != 0:
                raw_up = _raw_dot(raw_up, a, w_e, offs_n + N, n_mask, ak, K, stride_wn, A_QUANT, UPCAST, EVEN_K)
        acc = _raw_scaled(raw, s_e, offs_n, n_mask, as_rows, p_mask, stride_sn, SFMT, A_QUANT)
        if ACT != 0:
            acc_up = _raw_scaled(raw_up, s_e, offs_n + N, n_mask, as_rows, p_mask, stride_sn, SFMT, A_QUANT)
    elif NIBBLES:
        full = K // BLOCK_K
        for t in range(0, full):
            acc, acc_up = _nibble_step(acc, acc_up, a_rows, p_mask, w_e, s_e, z_e, offs_n, n_mask, t * BLOCK_K, N, K,
                                       stride_wn, stride_sn, FMT, SFMT, GROUP, ROW_BLOCK, HAS_ZERO, ACT,
                                       BLOCK_N, BLOCK_K, False, ASM, UPCAST)
        if full * BLOCK_K < K:
            acc, acc_up = _nibble_step(acc, acc_up, a_rows, p_mask, w_e, s_e, z_e, offs_n, n_mask, full * BLOCK_K,
                                       N, K, stride_wn, stride_sn, FMT, SFMT, GROUP, ROW_BLOCK, HAS_ZERO, ACT,
                                       BLOCK_N, BLOCK_K, True, ASM, UPCAST)
    else:
        for t in range(0, tl.cdiv(K, BLOCK_K)):
            acc += _expert_tile(a_rows, p_mask, w_e, s_e, z_e, as_rows, offs_n, n_mask, t, K, stride_wn, stride_sn,
                                FMT, SFMT, PACK, GROUP, ROW_BLOCK, HAS_ZERO, A_QUANT, A_GROUP,
                                BLOCK_M, BLOCK_N, BLOCK_K, UPCAST)
            if ACT != 0:
                acc_up += _expert_tile(a_rows, p_mask, w_e, s_e, z_e, as_rows, offs_n + N, n_mask, t, K, stride_wn,
                                       stride_sn, FMT, SFMT, PACK, GROUP, ROW_BLOCK, HAS_ZERO, A_QUANT, A_GROUP,
                                       BLOCK_M, BLOCK_N, BLOCK_K, UPCAST)
    if HAS_GLOBAL:
        g = tl.load(gs_ptr + e)
        acc = acc * g
        acc_up = acc_up * g
    acc = _bias_act(acc, acc_up, bias_ptr + e * stride_be, offs_n, n_mask, N, HAS_BIAS, ACT, ALPHA, LIMIT)
    if MUL_TOPW:
        acc = acc * tl.load(topw_ptr + pairs, mask=p_mask, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(tl.bfloat16), mask=p_mask[:, None] & n_mask[None, :])


# bf16 weights, and per-channel / per-tensor weight scales with per-token / per-tensor activation scales, are
# constant over K: the K loop then accumulates raw MMA sums (int32 for int8, one MMA chain) and the scales
# multiply once after it, as the dense kernel's epilogue does. False: scale every K tile's partial (tests
# compare the two)
RAW_SUMS = True


def scales_constant_over_k(pack: int, row_block: int, sfmt: int, group: int, k: int, a_quant: int,
                           a_group: int) -> bool:
    """Whether the weight and activation scales are constant along K (none, or one a weight row and one an
    activation row or tensor), so a K loop may sum raw products and scale once after it. ``a_group``: the
    activation scales' group along K, 0 or >= k for whole rows."""
    return (pack == 1 and row_block == 1 and (sfmt == S_NONE or group >= k)
            and (a_quant == 0 or not a_group or a_group >= k))


def even_k_loads(k: int, block_k: int) -> bool:
    """Whether the raw-sum K loop drops the K term of its load masks (BLOCK_K divides K; the row masks
    stay, so padding rows are still loads not made). On by default since the H100 run of
    bench/results/moe_h100_s13_evenk.json (fp8 gate_up at 4096 tokens 1.04-1.11x faster, the same from
    16 to 256 tokens); QUANTC_MOE_EVEN_K=0 restores the masked loop. Dropping every mask, padding rows
    reading row 0, ran 8% slower (bench/results/moe_even_probe_h100.json)."""
    return env("QUANTC_MOE_EVEN_K") != "0" and k % block_k == 0


_WS_OPERANDS = {0: BF16, 1: FP8, 2: INT8}  # A_QUANT code -> the weight format with the same operand type


# From this many (token, expert) pairs an expert on average, the gate_up takes the Gluon kernel by default
# (the down GEMM keeps the Triton one): on the H100, Mixtral-8x7B at 4096 tokens (1024 rows an expert) ran the
# expert layer 10% faster so (fp8 3458 -> 3113 us, int8 3351 -> 3003, bf16 5618 -> 5525), Mixtral at 256
# tokens (64 rows) tied (fp8 -2%, int8 +0.5%), gpt-oss-120b lost at 256 / 4096 tokens (2 / 128 rows: +9%,
# +1%) (bench/results/moe_h100_s17_wsup.json).
WS_UP_MIN_ROWS = 512


def _ws_mode(num_experts: int, num_pairs: int) -> str:
    """QUANTC_MOE_WS's mode, or the rule's where it is unset: "up" from WS_UP_MIN_ROWS pairs an expert."""
    mode = env("QUANTC_MOE_WS")
    if mode is None:
        return "up" if num_pairs >= WS_UP_MIN_ROWS * max(1, num_experts) else "0"
    return mode


def ws_block_m(device: torch.device, weights, a_quant: int, a_group: int, num_experts: int, num_pairs: int) -> int:
    """(``weights``: the layer's WoWeights, any iterable, read only where the switch is on; ``a_group``: the
    activation scales' group along K, 0 for whole rows.) The routing block (128 or 64
    rows) when the grouped GEMMs of a MoE call take the warp-specialized Gluon kernel (``moe_mm_ws``), 0 when
    they stay on the Triton kernel. By default the gate_up alone (``up``) from WS_UP_MIN_ROWS pairs an expert;
    QUANTC_MOE_WS overrides the rule: =0 never, =1 (128-row blocks; both GEMMs), =64 (64-row blocks; the down
    GEMM only, the gate_up keeps the Triton kernel), =128, =up (128-row blocks; the gate_up only, the down GEMM
    keeps the Triton kernel at those blocks: ``ws_down``) at every size; where it fits: a Hopper GPU, raw-sum
    operands of one type (bf16 x bf16, fp8 x fp8 per-token / per-tensor x per-channel, int8 x int8), 16-byte
    rows, not under torch.compile (the Gluon launcher is no custom op).

    Why both GEMMs stay off at most sizes: against the expert layer on the shipped table's tiles (what apply()
    runs), the Gluon path for both GEMMs (its sorted copies of the rows included) ran 0.79-0.96x at the four
    bench_moe sizes x 16 / 256 / 4096 tokens, except Mixtral at 4096 tokens (int8 1.07x, bf16 1.01x) and
    int8 Mixtral at 16 / 256 tokens (1.00-1.05x) (bench/results/moe_h100_s13_ws_tables.json). The 1.05-1.44x
    of the earlier runs (``moe_h100_s13_ws_layers*.json``) were against the bench's fixed tile, not the
    table's. The gate_up alone on it beats the table's tile where experts get many rows (WS_UP_MIN_ROWS)."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return 0
    mode = _ws_mode(num_experts, num_pairs)
    if mode not in ("1", "128", "64", "up") or cc_major(device) != 9:
        return 0
    fmt = _WS_OPERANDS.get(a_quant)
    for w in weights:
        raw = scales_constant_over_k(w.pack, w.row_block, w.sfmt, w.group, w.k, a_quant, a_group)
        if not raw or w.fmt != fmt or (w.k * (2 if fmt == BF16 else 1)) % 16:
            return 0
    return 64 if mode == "64" else 128


def ws_down(rows: int) -> bool:
    """Whether the down GEMM of a MoE call that ``ws_block_m`` routed to ``rows``-row blocks takes the Gluon
    kernel too: only where QUANTC_MOE_WS opts both GEMMs in (=1 / 128 / 64); the default rule and =up route
    the gate_up alone."""
    return rows > 0 and env("QUANTC_MOE_WS") in ("1", "128", "64")


DEQUANT_MAX_BYTES = 2 << 30  # the largest transient bf16 copy of a layer's experts the dequant path makes


# (token, expert) pairs an expert, on average, from which 4-bit experts with bf16 activations are
# dequantized to bf16 first on a GPU (``dequant_experts``). H100, bench_moe (moe_h100_s14_dequant.json): the
# dequantized Mixtral layer at 4096 tokens (1024 pairs an expert) 9.7 against 12.5 ms for the byte path;
# at 256 pairs (Qwen3, 4096 tokens) 2.10 against 1.92 ms and at 64 (Mixtral, 256 tokens) 2.94 against 1.37:
# slower, the dequantization pass costs more than the K loop's decode saves.
DEQUANT_MIN_PAIRS = 1024


def dequant_experts(weights, a_quant: int, num_experts: int, num_pairs: int) -> bool:
    """Whether a MoE call with 4-bit experts and bf16 activations dequantizes its experts to bf16 first
    (``wo_dequant.dequantize_bf16``, one pass over each stack) and runs the bf16 grouped GEMM, as the dense
    launcher does from M = 256: at thousands of pairs an expert the byte path's decode in the K loop makes
    the 4-bit layer compute-bound. From DEQUANT_MIN_PAIRS (token, expert) pairs an expert on average on a GPU
    (the interpreter keeps the byte path, which the CPU tests cover); QUANTC_MOE_DEQUANT_MIN_PAIRS=N from N
    (0: always, the interpreter included). Never where a stack's bf16 copy would pass DEQUANT_MAX_BYTES
    (DeepSeek-V3's gate_up would take 15 GB, gpt-oss-120b's 4.2 GB)."""
    if a_quant != 0:
        return False
    forced = env("QUANTC_MOE_DEQUANT_MIN_PAIRS")
    if num_pairs < (int(forced) if forced is not None else DEQUANT_MIN_PAIRS) * num_experts:
        return False
    return all(w.pack == 8 and w.num_experts * w.n * w.k * 2 <= DEQUANT_MAX_BYTES
               and (forced is not None or w.data.device.type == "cuda") for w in weights)


def uses_moe_planes(pack: int, a_quant: int, k: int, row_block: int) -> bool:
    """4-bit weights x bf16 through the nibble planes of the dense decode kernel (``wo_planes``): opt-in
    (QUANTC_MOE_PLANES=1) until bench/bench_moe.py has timed it against the byte path; needs K a multiple
    of 128 (16-deep planes) and one scale row per weight row."""
    return (env("QUANTC_MOE_PLANES") == "1" and pack == 8 and a_quant == 0 and k % 128 == 0
            and row_block == 1)


def _moe_gemm(
    a: torch.Tensor, a_scale: torch.Tensor | None, data: torch.Tensor, scale: torch.Tensor | None,
    zeros: torch.Tensor | None, gscale: torch.Tensor | None, bias: torch.Tensor | None,
    topk_weights: torch.Tensor | None, sorted_ids: torch.Tensor, block_expert: torch.Tensor, total: torch.Tensor,
    num_pairs: int, a_div: int, n_out: int, fmt: int, sfmt: int, pack: int, group: int, row_block: int,
    a_quant: int, a_group: int, act: int, block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int,
    group_m: int,
) -> torch.Tensor:
    k = a.shape[1]
    planes = uses_moe_planes(pack, a_quant, k, row_block)
    nibbles = pack == 8 and a_quant == 0 and not planes
    if planes:  # whole 128-wide K tiles of int32 words (16-deep planes)
        block_k = 256 if block_k >= 256 and k % 256 == 0 else 128
    if nibbles:  # the same bytes as (E, N, K/2) uint8; strides below are in bytes
        data = data.view(torch.uint8)
    out = torch.empty((num_pairs, n_out), dtype=torch.bfloat16, device=a.device)
    n_blocks = sorted_ids.numel() // block_m
    scale_t = scale if scale is not None else data
    raw = RAW_SUMS and scales_constant_over_k(pack, row_block, sfmt, group, k, a_quant, a_group)
    grid = (n_blocks * cdiv(n_out, block_n),)
    launch(_moe_gemm_kernel, grid, (
        a, a_scale if a_scale is not None else a, data, scale_t, zeros if zeros is not None else scale_t,
        gscale if gscale is not None else data, bias if bias is not None else data,
        topk_weights if topk_weights is not None else data, out, sorted_ids, block_expert, total,
        n_out, k, num_pairs,
        a.stride(0), a_scale.stride(0) if a_scale is not None else 0, data.stride(0), data.stride(1),
        scale.stride(0) if scale is not None else 0, scale.stride(1) if scale is not None else 0,
        bias.stride(0) if bias is not None else 0, out.stride(0),
    ), dict(
        A_DIV=a_div, FMT=fmt, SFMT=sfmt, PACK=pack, GROUP=group, ROW_BLOCK=row_block,
        HAS_ZERO=zeros is not None, HAS_GLOBAL=gscale is not None, A_QUANT=a_quant, A_GROUP=a_group,
        ACT=act, HAS_BIAS=bias is not None, MUL_TOPW=topk_weights is not None,
        ALPHA=GPT_OSS_ALPHA, LIMIT=GPT_OSS_LIMIT,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=UPCAST_DOT and a_quant == 0,
        NIBBLES=nibbles, ASM=nibble_decode.USE_ASM, GROUP_M=max(1, group_m),
        PLANES=planes, PLANE_FMT=1 if fmt == INT4 else 2,
        RAW=raw, EVEN_K=raw and even_k_loads(k, block_k),
    ), num_warps, num_stages)
    return out


# the custom op torch.compile sees; eager calls go to ``_moe_gemm`` directly (the op's dispatch costs
# ~30 us of host time a call, see quantc/runtime/modules.py)
_moe_gemm_op = torch.library.custom_op("quantc::moe_gemm", _moe_gemm, mutates_args=())


@_moe_gemm_op.register_fake
def _(a, a_scale, data, scale, zeros, gscale, bias, topk_weights, sorted_ids, block_expert, total, num_pairs,
      a_div, n_out, *rest):
    return a.new_empty((num_pairs, n_out), dtype=torch.bfloat16)


# activation keys of the W8A8 paths: key -> (A_QUANT code, group along K or 0 = whole row)
A_QUANT = {"none": (0, 0), "fp8_dynamic_per_token": (1, 0), "fp8_dynamic_per_tensor": (1, 0),
           "fp8_static_per_tensor": (1, 0), "fp8_dynamic_group_128": (1, 128), "int8_dynamic_per_token": (2, 0)}


def group_fits(group: int, k: int, bk: int, whole_row_ok: bool = True) -> bool:
    """Whether BLOCK_K suits a scale group along K: one it divides, or (``whole_row_ok``: the raw-sum
    path, scaled after the K loop) a group spanning the row."""
    return (whole_row_ok and group >= k) or group % bk == 0


def grouped_gemm(a: torch.Tensor, a_scale: torch.Tensor | None, w: WoWeight, routing, *, a_div: int, act: str,
                 a_quant: int, a_group: int, cfg, bias: torch.Tensor | None = None,
                 topk_weights: torch.Tensor | None = None, ws: bool = False,
                 dequant: bool = False) -> torch.Tensor:
    """One grouped GEMM: ``a`` (rows, K) bf16, or fp8/int8 with ``a_scale`` (rows, K/a_group or 1);
    ``routing`` = (sorted_ids, block_expert, total, num_pairs) from align_by_expert with cfg.block_m.
    Returns bf16 (num_pairs, N) (N = I for a fused activation). ``ws``: the Gluon kernel (``ws_block_m`` has
    said yes; the routing is aligned to its 128- or 64-row blocks) on a sorted copy of the rows. ``dequant``:
    4-bit ``w`` to bf16 first (``dequant_experts``), then the bf16 path."""
    if dequant:
        from .wo_dequant import dequantize_bf16

        w = WoWeight(BF16, w.n, w.k, dequantize_bf16(w))
    sorted_ids, block_expert, total, num_pairs = routing
    fused = ACTIVATIONS[act]
    n_out = w.n // 2 if fused else w.n
    if ws:
        from .moe_mm_ws import gather_sorted, moe_mm_ws

        a_sorted = gather_sorted(a, sorted_ids, total, num_pairs, a_div)
        return moe_mm_ws(a_sorted, a_scale, w.data, w.scale, bias, topk_weights, sorted_ids, block_expert, total,
                         num_pairs, a_div, n_out, fused, 2 if a_quant else 0)
    bk = cfg.block_k
    if a_quant:
        # both scales must be constant over a K tile: halve BLOCK_K until it divides the groups. Scales
        # over the whole row (per channel / per token) multiply once after the K loop (RAW), so any tile
        # works, the masked last one included (gpt-oss's K = 2880 is a multiple of 64, not of 128: it
        # keeps 128-wide K steps); the per-tile path scales each partial and needs whole groups
        raw = RAW_SUMS and w.row_block == 1

        def fits(b):
            return group_fits(w.group, w.k, b, raw) and group_fits(a_group or w.k, w.k, b, raw)

        while bk > 32 and not fits(bk):
            bk //= 2
        if w.fmt not in (FP8, INT8) or not fits(bk):
            raise ValueError(f"W8A8 grouped GEMM needs raw fp8/int8 weights and scale groups (weight {w.group}, "
                             f"activation {a_group or w.k}) that are multiples of 32")
    elif w.pack == 8:
        bk = max(bk, 32)  # byte path: 16 bytes a row (one 16-deep MMA step, 4-byte decode packs)
    else:
        bk = max(bk, 16)
    gemm = torch.ops.quantc.moe_gemm if torch.compiler.is_compiling() else _moe_gemm
    return gemm(
        a, a_scale, w.data, w.scale, w.zeros, w.global_scale, bias, topk_weights, sorted_ids, block_expert, total,
        num_pairs, a_div, n_out, w.fmt, w.sfmt, w.pack, w.group, w.row_block, a_quant, a_group or w.k, fused,
        cfg.block_m, cfg.block_n, bk, cfg.num_warps, cfg.num_stages, cfg.group_m,
    )


def reference_activation(h: torch.Tensor, act: str) -> torch.Tensor:
    """The fused activation in plain torch: (.., 2I) gate_up output (gate half first) -> (.., I)."""
    g, u = h.chunk(2, dim=-1)
    if act == "silu":
        return torch.nn.functional.silu(g) * u
    g = g.clamp(max=GPT_OSS_LIMIT)
    u = u.clamp(-GPT_OSS_LIMIT, GPT_OSS_LIMIT)
    return (u + 1) * g * torch.sigmoid(GPT_OSS_ALPHA * g)


def reference_expert_loop(x: torch.Tensor, w13: WoWeight, w2: WoWeight, topk_weights, topk_ids, act: str,
                          b13=None, b2=None, act_dq=None) -> torch.Tensor:
    """Plain torch MoE: for every expert, its (token, slot) pairs through gate_up, the activation and
    down; then the weighted sum per token. ``act_dq`` (optional) rounds a GEMM input the way the
    kernel's activation quantization does (applied to the whole input, as the kernel does)."""
    q = act_dq or (lambda t: t)
    d13, d2 = dequantize(w13), dequantize(w2)
    t, k = topk_ids.shape
    experts = topk_ids.reshape(-1).long()
    xq = q(x.float())
    inter = torch.zeros(t * k, w13.n // 2, device=x.device)
    for e in range(d13.shape[0]):
        pairs = torch.nonzero(experts == e).flatten()
        h = xq[pairs // k] @ d13[e].T + (b13[e].float() if b13 is not None else 0.0)
        inter[pairs] = reference_activation(h, act)
    inter = q(inter.bfloat16().float())
    y = torch.zeros(t * k, w2.n, device=x.device)
    for e in range(d2.shape[0]):
        pairs = torch.nonzero(experts == e).flatten()
        y[pairs] = inter[pairs] @ d2[e].T + (b2[e].float() if b2 is not None else 0.0)
    return (y * topk_weights.reshape(-1, 1).float()).view(t, k, -1).sum(1)
