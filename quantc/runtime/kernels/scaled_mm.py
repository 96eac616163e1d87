"""Dense scaled GEMMs (Triton): ``out = (A * sa) @ (B * sb).T`` in fp32, bf16 out.

A is the activation (M, K) row-major; B the weight (N, K) row-major, read as K-major tiles. One kernel,
specialised by constexpr modes, covers every dense 8-bit kernel id:

=========================  ==================  ==========================  =====================
kernel id                  A (elements/scale)  B (elements/scale)          scales applied
=========================  ==================  ==========================  =====================
fp8_scaled_gemm            e4m3 tensor|row     e4m3 tensor|channel         in the epilogue
fp8_block_gemm             e4m3 (M, K/128)     e4m3 (ceil(N/128), K/128)   per 128-wide K step
int8_gemm                  int8 row            int8 channel                epilogue (int32 acc)
mxfp8_gemm_emulated        e4m3 e8m0 (M, K/32) e4m3 e8m0 (N, K/32)         per 32-wide K step
fp8_weight_only_gemm       bf16                e4m3 tensor|channel|block   epilogue / per K step
int8_weight_only_gemm      bf16                int8 channel                epilogue
=========================  ==================  ==========================  =====================

On sm_90, fp8_block_gemm calls of 128 rows and more run ``block_mm_ws`` instead: a warp-specialized Gluon
kernel with the same per-step math (bit-identical), whose scaling overlaps the next step's MMA; pre-quantized
fp8_scaled_gemm / int8_gemm calls from 128 rows (``_rowwise_ws_policy``) run ``rowwise_mm_ws``, its
raw-sum counterpart (the same sums and epilogue, bit-identical).

Per-group scales are applied to each K step's partial product in fp32 (``acc += dot * sa * sb``), so
BLOCK_K must divide the group (block_k is capped at the group by the launcher). mxfp8 on sm_90 runs as
fp8 MMAs over 32-wide K steps with the e8m0 scales applied in fp32: Hopper has no block-scaled MMA.

For small M the activation quantizer is fused into the GEMM (QUANT_A): per-token / per-tensor scales
come from a prologue pass over the program's rows, group scales from each K tile; the quantized
values are bit-identical to ``act_quant``'s. The launcher takes its block sizes from the plan's
KernelConfig for the live M: no autotuning, no host sync, no allocation beyond the output (and the
split-K workspace below).

Split-K (``config.split_k > 1``, for decode, where N / BLOCK_N programs are too few to keep the GPU's
memory system busy): the grid gains a second axis of S slices; slice s owns the K tiles
``[s * ceil(T / S), min((s + 1) * ceil(T / S), T))`` of the T = ceil(K / BLOCK_K) tiles. Slices are
whole tiles, so they start on scale-group boundaries wherever a tile does (BLOCK_K divides the group,
see above) and the per-K-step scales (block, mx) are already in each partial. Each slice writes its
raw partial (fp32; int32 for int8, the exact integer sum) to a workspace ``ws[s, m, n]`` and counts
its arrival on the tile's counter (``common.tile_counters``, zero at rest); the slice that arrives last
sums the S partials in slice order (deterministic: the same sum whichever slice is last), applies the
epilogue once (per-tensor / per-row / per-channel scales, bias, bf16 cast; a fused quantizer's scale is
in every program's registers) and zeroes the counter. One launch, no reduction kernel after it (at
decode a launch costs as much as the GEMM's tail). The launcher clamps S to the number of K tiles and
drops slices that would be empty (S = ceil(T / ceil(T / S))). Workspace: ``S * M * N`` 32-bit words
from the caching allocator: fixed per (S, M, N), no host sync, capturable.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl

from .. import quantize as ref
from .act_quant import quantize_activation
from .common import (cc_major, cdiv, e8m0_to_f32, empty, env, floor_log2, grouped_tile, interpreted, k_slice, launch, next_pow2,
                     pow2, quant_e4m3, quant_int8, round_e4m3, sm_count, split_k_reduce, tile_counters)

# A modes / B modes
A_NONE, A_TENSOR, A_ROW, A_GROUP = 0, 1, 2, 3
B_TENSOR, B_CHANNEL, B_BLOCK, B_GROUP = 1, 2, 3, 4
# activation quantization inside the kernel: none, dynamic, static scale given
Q_NONE, Q_DYNAMIC, Q_STATIC = 0, 1, 2
# largest M at which the quantizer is fused by default. The fused path is exact (tested) but on H100
# (bench/results/dense_h100.json, module_fp8_row) it ran slower than a separate quantizer launch plus
# the GEMM at decode sizes, so it is off by default until it is tuned; ``fuse=True`` forces it.
FUSE_MAX_M = {A_TENSOR: 0, A_ROW: 0, A_GROUP: 0}
# smallest M at which pre-quantized W8A8 calls take the persistent TMA kernel (``scaled_mm_tma``) on
# sm_90+; QUANTC_TMA=0 / 1 turns it off / on at every M (benchmarks compare the two paths). H100
# (bench/results/tma_probe_h100.json, 7 shapes x M = 1024/4096/8192, best of 6 tiles each): int8
# 1.43x -> 1.60x bf16, fp8 rowwise 1.01x -> 1.05x _scaled_mm; the 128-block kernel ran 8% slower
# persistent (its per-K-step scaling, not the loads, bounds it), so block scales keep the tiled kernel.
TMA_MIN_M = 1024
# smallest M at which pre-quantized fp8 128-block calls take the warp-specialized Gluon kernel
# (``block_mm_ws``) on sm_90; QUANTC_BLOCK_WS=0 / 1 turns it off / on at every M. Below it the tiled
# kernel's 16-64-row tiles (many more programs) won (bench/results/block_ws_probe_h200.json).
BLOCK_WS_MIN_M = 128


def _block_ws_policy(m: int, device: torch.device) -> bool:
    """Whether an fp8 128-block call of M rows takes the Gluon kernel: Hopper only (the CPU interpreter
    cannot run Gluon; its wgmma and register reallocation are sm_90 features), by M unless forced."""
    if device.type != "cuda" or cc_major(device) != 9:
        return False
    forced = env("QUANTC_BLOCK_WS")
    return forced == "1" if forced is not None else m >= BLOCK_WS_MIN_M


# Pre-quantized W8A8 calls with scales after the K sum (fp8 / int8, per-tensor or per-row x per-tensor or
# per-channel) take the warp-specialized Gluon kernel (``rowwise_mm_ws``) on sm_90 from M = 128:
# - below TMA_MIN_M, where 128 x 128 tiles would fill at most half the SMs, 64 x 128 tiles with eight
#   stages (one consumer warpgroup, twice the programs: one wave at most);
# - 128 x 128 tiles with five stages past that: int8 at every M, fp8 below TMA_MIN_M and, from TMA_MIN_M,
#   where they make one wave at most (the TMA kernel's 128 x 256 tiles would leave half the SMs idle).
# H100, one run each, bit-identical outputs where the tiled kernel does not split K:
# rowwise_ws_probe_h100_*.json: int8 at M = 1024 1.24x the runtime's kernels (1.77x torch._int_mm), at
# M = 256 faster on the 5 shapes with that many tiles; fp8 at M = 256 faster on three of the four, at
# M = 1024 on (2048, 7168) (128 tiles: 23.2 against 26.5 us; GemLite 22.5). rowwise_ws_probe_h100_narrow.json
# (twelfth session, 7 shapes x M = 128 / 256): the 64-row tiles beat the runtime's kernels on all 16 rows
# of at most 64 128-row tiles, fp8 and int8 (e.g. (4096, 14336) at M = 256: 29.9 against 31.7 us; (6144,
# 4096) at M = 128: 9.5 against 22.6), and lose where the 128-row tiles are more than half the SMs.
# QUANTC_ROWWISE_WS=0 / 1 turns it off / on at every M (on: wherever it can run, by the same tile rule).
ROWWISE_WS_MIN_M = 128
ROWWISE_WS_TILE = (128, 128, 5, 8)  # block_m, block_n, stages, group_m
ROWWISE_WS_NARROW_TILE = (64, 128, 8, 8)


def rowwise_ws_tile(m: int, n: int, int8: bool, sms: int) -> tuple[int, int, int, int] | None:
    """The Gluon raw-sum kernel's tile for M x N on a GPU of ``sms`` SMs by the rule above, or None where
    the Triton kernels run."""
    if m < ROWWISE_WS_MIN_M:
        return None
    tiles = cdiv(m, ROWWISE_WS_TILE[0]) * cdiv(n, ROWWISE_WS_TILE[1])
    if tiles <= sms // 2:
        return ROWWISE_WS_NARROW_TILE if m < TMA_MIN_M else None
    return ROWWISE_WS_TILE if (int8 or m < TMA_MIN_M or tiles <= sms) else None


def _rowwise_ws_policy(m: int, n: int, int8: bool, device: torch.device) -> tuple[int, int, int, int] | None:
    """The Gluon kernel's tile for a raw-sum W8A8 call, or None: Hopper only (never a CPU tensor), by
    ``rowwise_ws_tile`` unless QUANTC_ROWWISE_WS forces it (on: the rule's tile, or 128 x 128)."""
    if device.type != "cuda" or cc_major(device) != 9:
        return None
    tile = rowwise_ws_tile(m, n, int8, sm_count(device))
    forced = env("QUANTC_ROWWISE_WS")
    if forced is not None:
        return (tile or ROWWISE_WS_TILE) if forced == "1" else None
    return tile


def _tma_policy(m: int, device: torch.device, b_mode: int) -> bool:
    forced = env("QUANTC_TMA")
    if forced is not None:
        return forced == "1"
    return (m >= TMA_MIN_M and b_mode in (B_TENSOR, B_CHANNEL) and device.type == "cuda"
            and cc_major(device) >= 9)


@triton.jit
def _quant_tile(a, scale, INT8: tl.constexpr):
    if INT8:
        return quant_int8(a, scale)
    else:
        return quant_e4m3(a, scale)


@triton.jit
def _epilogue(acc, sa, sa_ptr, sb_ptr, bias_ptr, offs_m, offs_n, mask_m, mask_n, stride_sam, stride_sbn,
              A_MODE: tl.constexpr, B_MODE: tl.constexpr, SA_LOADED: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Scales applied after the whole K sum (per tensor / row / channel), then bias; fp32 out. Works on
    2-D tiles (offs_m[:, None], offs_n[None, :]) and on flat element vectors alike (broadcast offsets)."""
    out = acc.to(tl.float32)
    if A_MODE == 1:
        if not SA_LOADED:
            sa = tl.load(sa_ptr)
        out = out * sa
    elif A_MODE == 2:
        if not SA_LOADED:
            sa = tl.load(sa_ptr + offs_m * stride_sam, mask=mask_m, other=0.0)
        out = out * sa
    if B_MODE == 1:
        out = out * tl.load(sb_ptr)
    elif B_MODE == 2:
        out = out * tl.load(sb_ptr + offs_n * stride_sbn, mask=mask_n, other=0.0)
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    return out


@triton.jit
def _add_scaled_partial(acc, part, sa_k, sb_ptr, pid_n, offs_n, mask_n, kg, stride_sbn, stride_sbk,
                        A_MODE: tl.constexpr, MX: tl.constexpr, GROUP_N: tl.constexpr, BLOCK_N: tl.constexpr):
    """``acc`` plus one K step's partial product under its per-step scales (128 x 128 blocks, mx groups):
    ``sa_k`` the activation's per-row scale of K group ``kg`` (A_MODE 3; unused otherwise), the weight's
    read here. The tiled and the persistent TMA kernel both call this, so their sums stay bit-identical."""
    if not MX and GROUP_N % BLOCK_N == 0:
        # the tile lies in one weight block row: its scale is one number per K step, so the partial
        # takes one FMA per element (the tensor cores wait for this scaling every step)
        sb_k = tl.load(sb_ptr + ((pid_n * BLOCK_N) // GROUP_N) * stride_sbn + kg * stride_sbk)
        if A_MODE == 3:
            acc += part * (sa_k * sb_k)[:, None]
        else:
            acc += part * sb_k
    else:
        sb_raw = tl.load(sb_ptr + (offs_n // GROUP_N) * stride_sbn + kg * stride_sbk, mask=mask_n, other=0)
        sb_k = e8m0_to_f32(sb_raw) if MX else sb_raw
        if A_MODE == 3:
            acc += part * sa_k[:, None] * sb_k[None, :]
        else:
            acc += part * sb_k[None, :]
    return acc


@triton.jit
def _scaled_mm_kernel(
    # tensors
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    ws_ptr, cnt_ptr,  # split-K: the (S, M, N) partials (fp32, int32 for int8) and one counter per tile
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    stride_sam, stride_sak, stride_sbn, stride_sbk,
    # what the operands are
    A_MODE: tl.constexpr, B_MODE: tl.constexpr, QUANT_A: tl.constexpr,
    INT8: tl.constexpr, MX: tl.constexpr, GROUP_K: tl.constexpr, GROUP_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    # tiling (from the plan's KernelConfig)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PRO_K: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN: tl.constexpr,  # M, N, K multiples of the tile: the main loop's loads need no mask
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    t_start, t_end = k_slice(K, pid_k, BLOCK_K, SPLIT_K)  # this program's K tiles
    offs_k = tl.arange(0, BLOCK_K)
    k_first = t_start * BLOCK_K + offs_k
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + k_first[None, :] * stride_ak
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + k_first[:, None] * stride_bk
    fmt_max = 127.0 if INT8 else 448.0
    offs_pk = tl.arange(0, PRO_K)  # the prologue reads wide tiles: few dependent loads per row

    # --- prologue: the activation scale of a fused dynamic per-tensor / per-row quantizer
    if QUANT_A == 2:
        sa = tl.load(sa_ptr)
    elif QUANT_A == 1 and A_MODE != 3:
        if A_MODE == 1:
            amax = tl.zeros((BLOCK_M, PRO_K), tl.float32)
            for m0 in range(0, M, BLOCK_M):
                rows = m0 + tl.arange(0, BLOCK_M)
                for k0 in range(0, K, PRO_K):
                    p = a_ptr + rows[:, None] * stride_am + (k0 + offs_pk)[None, :] * stride_ak
                    msk = (rows[:, None] < M) & ((k0 + offs_pk)[None, :] < K)
                    amax = tl.maximum(amax, tl.abs(tl.load(p, mask=msk, other=0.0).to(tl.float32)))
            sa = tl.math.div_rn(tl.maximum(tl.max(tl.max(amax, axis=1), axis=0), 1e-12), fmt_max)
        else:
            amax = tl.zeros((BLOCK_M, PRO_K), tl.float32)
            p_row = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_pk[None, :] * stride_ak
            for k0 in range(0, K, PRO_K):
                msk = mask_m[:, None] & ((k0 + offs_pk)[None, :] < K)
                amax = tl.maximum(amax, tl.abs(tl.load(p_row + k0 * stride_ak, mask=msk, other=0.0).to(tl.float32)))
            sa = tl.math.div_rn(tl.maximum(tl.max(amax, axis=1), 1e-12), fmt_max)

    acc_dtype = tl.int32 if INT8 else tl.float32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        mask_k = (k0 + offs_k) < K
        sa_k = 0.0  # the activation group's scales (A_MODE 3), set below
        if EVEN:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if A_MODE == 0:
            if DOT_F32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            else:
                b = b.to(tl.bfloat16)  # weight-only: e4m3 and int8 are exact in bf16
        if QUANT_A != 0:
            a = a.to(tl.float32)
            if A_MODE == 3:  # group scale from this K tile (BLOCK_K == GROUP_K)
                g_amax = tl.maximum(tl.max(tl.abs(a), axis=1), 1e-12)
                if MX:
                    e = floor_log2(g_amax) - 8
                    sa_k = pow2(e)
                    a = round_e4m3(a * pow2(-e)[:, None]).to(tl.float8e4nv)
                else:
                    sa_k = tl.math.div_rn(g_amax, fmt_max)
                    a = quant_e4m3(a, sa_k[:, None])
            elif A_MODE == 1:
                a = _quant_tile(a, sa, INT8)
            else:
                a = _quant_tile(a, sa[:, None], INT8)
        elif A_MODE == 3:
            sa_raw = tl.load(sa_ptr + offs_m * stride_sam + (k0 // GROUP_K) * stride_sak, mask=mask_m, other=0)
            sa_k = e8m0_to_f32(sa_raw) if MX else sa_raw
        if B_MODE >= 3:
            acc = _add_scaled_partial(acc, tl.dot(a, b), sa_k, sb_ptr, pid_n, offs_n, mask_n, k0 // GROUP_K,
                                      stride_sbn, stride_sbk, A_MODE, MX, GROUP_N, BLOCK_N)
        else:
            acc = tl.dot(a, b, acc, out_dtype=acc_dtype)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # --- epilogue: per-tensor / row / channel scales, bias, bf16 store. Split-K: each slice stores its raw
    # partial; the slice that arrives last for this tile sums them in slice order and runs the epilogue
    sa_col = 0.0  # placeholder: the epilogue loads the scale itself when the kernel did not compute it
    if QUANT_A != 0 and A_MODE != 3:
        if A_MODE == 2:
            sa_col = sa[:, None]
        else:
            sa_col = sa
    o_mask = mask_m[:, None] & mask_n[None, :]
    last = True  # the program that finishes the tile: without split-K, every one
    if SPLIT_K > 1:
        ws_tile = ws_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        acc, last = split_k_reduce(acc, ws_tile, o_mask, cnt_ptr + pid, pid_k, M * N, SPLIT_K)
    if last:
        out = _epilogue(acc, sa_col, sa_ptr, sb_ptr, bias_ptr, offs_m[:, None], offs_n[None, :],
                        mask_m[:, None], mask_n[None, :], stride_sam, stride_sbn,
                        A_MODE, B_MODE, QUANT_A != 0, HAS_BIAS)
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=o_mask)


# ---------------------------------------------------------------------------- modes per key


ACT_MODE = {
    "none": A_NONE,
    "fp8_dynamic_per_token": A_ROW,
    "fp8_dynamic_per_tensor": A_TENSOR,
    "fp8_static_per_tensor": A_TENSOR,
    "fp8_dynamic_group_128": A_GROUP,
    "int8_dynamic_per_token": A_ROW,
    "mxfp8": A_GROUP,
}
# weight key -> (B mode, name of its scale tensor, group along K, rows per scale along N)
WEIGHT_MODE = {
    "fp8_per_tensor": (B_TENSOR, "weight_scale", 1, 1),
    "fp8_per_channel": (B_CHANNEL, "weight_scale", 1, 1),
    "fp8_block_128x128": (B_BLOCK, "weight_scale_inv", 128, 128),
    "mxfp8": (B_GROUP, "weight_scale", 32, 1),
    "int8_per_channel": (B_CHANNEL, "weight_scale", 1, 1),
}


def scaled_mm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, weight_key: str,
              act_key: str, config, input_scale: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, fuse: bool | None = None,
              x_scale: torch.Tensor | None = None, tma: bool | None = None) -> torch.Tensor:
    """bf16 x (M, K) times a quantized weight (N, K) -> bf16 (M, N).

    With ``x_scale``, x is taken as already quantized for ``act_key`` (elements and their scales).
    ``config`` is the KernelConfig for this M (block_m, block_n, block_k, group_m, num_warps,
    num_stages, split_k). ``fuse`` forces the fused quantizer on or off (default: by M, see FUSE_MAX_M);
    ``tma`` the persistent TMA kernel for pre-quantized W8A8 calls (default: by M and GPU, ``_tma_policy``).
    A config of ``block_m`` = 1 runs the CUDA-core GEMV (``scaled_gemv``) where it applies (not mx, not
    fused); elsewhere, and for any other block_m under 16, 16-row tiles."""
    m, k = x.shape
    n = weight.shape[0]
    a_mode = ACT_MODE[act_key]
    b_mode, _, group_k, group_n = WEIGHT_MODE[weight_key]
    mx = act_key == "mxfp8"
    int8 = weight.dtype == torch.int8 and a_mode != A_NONE
    if a_mode == A_GROUP:
        group_k = 32 if mx else 128
    block_k = config.block_k if group_k == 1 else min(config.block_k, group_k)
    if fuse is None:
        fuse = a_mode != A_NONE and m <= FUSE_MAX_M[a_mode]
    if fuse and x_scale is None and a_mode == A_GROUP:
        block_k = group_k  # the tile must hold whole groups to find their scale
    quant = Q_NONE
    a, sa = x, weight_scale  # sa is a placeholder pointer when unused
    if a_mode != A_NONE and x_scale is not None:  # already quantized (benchmarks, tests)
        fuse, sa = False, x_scale
    elif a_mode != A_NONE:
        if fuse:
            quant = Q_STATIC if act_key == "fp8_static_per_tensor" else Q_DYNAMIC
            if quant == Q_STATIC:
                sa = input_scale.float().reshape(())
        else:
            a, sa = quantize_activation(x, act_key, input_scale)
    sa2 = sa if sa.dim() == 2 else sa.reshape(-1, 1)
    sb2 = weight_scale if weight_scale.dim() == 2 else weight_scale.reshape(-1, 1)
    out = empty((m, n), torch.bfloat16, x.device)
    if (quant == Q_NONE and a_mode == A_GROUP and b_mode == B_BLOCK and not mx and group_n == 128
            and _block_ws_policy(m, x.device)):
        ws_out = _block_ws(a, weight, sa, weight_scale, bias, out)
        if ws_out is not None:
            return ws_out
    ws_tile = (_rowwise_ws_policy(m, n, int8, x.device)
               if quant == Q_NONE and a_mode in (A_TENSOR, A_ROW) and b_mode in (B_TENSOR, B_CHANNEL) else None)
    if ws_tile is not None:
        ws_out = _rowwise_ws(a, weight, sa, weight_scale, bias, a_mode, b_mode, out, ws_tile)
        if ws_out is not None:
            return ws_out
    if quant == Q_NONE and a_mode != A_NONE:
        from . import scaled_mm_tma

        if (tma if tma is not None else _tma_policy(m, x.device, b_mode)) and scaled_mm_tma.supported(
                a_mode, b_mode, mx, n, k, config) and a.is_contiguous() and weight.is_contiguous():
            cfg = config if config.block_k == block_k else dataclasses.replace(config, block_k=block_k)
            return scaled_mm_tma.launch(a, weight, sa, weight_scale, bias, a_mode, b_mode, int8, group_k, group_n,
                                        cfg, out)
    split = split_slices(k, block_k, config.split_k)
    if config.block_m < 16:
        from . import scaled_gemv

        if scaled_gemv.runs(config, mx, quant != Q_NONE, weight):
            return scaled_gemv.launch(a, weight, sa, weight_scale, bias, a_mode, b_mode, int8, group_k, group_n,
                                      block_k, config, split, out)
        config = dataclasses.replace(config, block_m=16)  # a tensor-core tile holds at least 16 rows
    grid = (cdiv(m, config.block_m) * cdiv(n, config.block_n), split)
    ws = cnt = out  # placeholders without split-K
    if split > 1:
        # int8 partials stay int32 (same bytes): their sum is then exactly the unsplit accumulator
        ws = empty(split * m * n, torch.int32 if int8 else torch.float32, x.device)
        cnt = tile_counters(x.device, grid[0])
    launch(_scaled_mm_kernel, grid, (
        a, weight, out, sa, weight_scale, bias if bias is not None else out, ws, cnt,
        m, n, k,
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        sa2.stride(0), sa2.stride(1), sb2.stride(0), sb2.stride(1),
    ), dict(
        A_MODE=a_mode, B_MODE=b_mode, QUANT_A=quant, INT8=int8, MX=mx,
        # Triton's CPU interpreter multiplies bf16 dot operands as their raw int16 bits (triton 3.9): there,
        # bf16 x bf16 dots run in fp32 (bf16 products are exact in fp32, the accumulation is the same)
        GROUP_K=group_k, GROUP_N=group_n, HAS_BIAS=bias is not None, DOT_F32=interpreted(),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=block_k, GROUP_M=config.group_m,
        PRO_K=min(512, next_pow2(k)), SPLIT_K=split,
        EVEN=EVEN_TILES and m % config.block_m == 0 and n % config.block_n == 0 and k % block_k == 0,
    ), config.num_warps, config.num_stages)
    return out


def _block_ws(a, weight, sa, weight_scale, bias, out):
    """The fp8 128-block GEMM through the warp-specialized Gluon kernel, or None where it does not apply
    (a triton without Gluon, operands TMA cannot address): the caller then runs the tiled kernel."""
    try:
        from . import block_mm_ws
    except ImportError:
        return None
    m, k = a.shape
    n = weight.shape[0]
    sms = sm_count(a.device)
    bm, bn, stages, split, group_m = block_mm_ws.tile_for(m, n, k, sms)
    if not (block_mm_ws.supports(m, n, k, bn) and a.is_contiguous() and weight.is_contiguous()
            and all(t.data_ptr() % 16 == 0 for t in (a, weight, out))):  # TMA: 16-byte aligned bases
        return None
    return block_mm_ws.block_mm_ws(a, weight, sa, weight_scale, bias, bm, bn, stages, group_m, out=out,
                                   split=split, programs=sms)


def _rowwise_ws(a, weight, sa, weight_scale, bias, a_mode, b_mode, out, tile):
    """A raw-sum W8A8 GEMM through the warp-specialized Gluon kernel, or None where it does not apply (a
    triton without Gluon, operands TMA cannot address): the caller then runs the Triton kernels."""
    try:
        from . import rowwise_mm_ws
    except ImportError:
        return None
    m, k = a.shape
    n = weight.shape[0]
    if not (rowwise_mm_ws.supports(m, n, k) and a.is_contiguous() and weight.is_contiguous()
            and all(t.data_ptr() % 16 == 0 for t in (a, weight, out))):
        return None
    bm, bn, stages, group_m = tile
    return rowwise_mm_ws.rowwise_mm_ws(a, weight, sa, weight_scale, bias, a_mode, b_mode, bn, stages, group_m,
                                       out=out, programs=sm_count(a.device), block_m=bm)


# unmasked main-loop loads where the tiles divide the problem (QUANTC_EVEN_TILES=0: always masked;
# benchmarks compare the two)
EVEN_TILES = os.environ.get("QUANTC_EVEN_TILES", "1") != "0"


def split_slices(k: int, block_k: int, split_k: int) -> int:
    """The number of K slices actually launched: at most one per K tile, and never an empty slice
    (with T tiles, ceil(T / S) tiles a slice need only ceil(T / ceil(T / S)) slices)."""
    tiles = cdiv(k, block_k)
    split = max(1, min(split_k, tiles))
    return cdiv(tiles, cdiv(tiles, split))


def fake_quant_activation(x: torch.Tensor, act_key: str, input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 values of ``x`` (M, K) after the reference quantizer of ``act_key`` ("none": x itself)."""
    if act_key == "none":
        return x.float()
    if act_key == "fp8_static_per_tensor":
        q, s = ref.quant_fp8_per_tensor(x, input_scale)
    else:
        q, s = ref.ACTIVATION_QUANTIZERS[act_key](x)
    if act_key == "mxfp8":
        return q.float() * ref.e8m0_to_float(s).repeat_interleave(32, 1)
    if act_key == "fp8_dynamic_group_128":
        return q.float() * s.repeat_interleave(128, 1)
    return q.float() * s


def reference(x: torch.Tensor, tensors: dict, weight_key: str, act_key: str,
              input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 reference: the activation quantized by the reference quantizer, both operands dequantized,
    one fp32 matmul."""
    w = ref.dequantize_weight(tensors, weight_key)
    out = fake_quant_activation(x, act_key, input_scale) @ w.T
    return out + bias.float() if bias is not None else out
