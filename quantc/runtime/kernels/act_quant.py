"""Activation quantizers (Triton), bit-exact against ``quantc.runtime.quantize``.

Every activation key works on groups of GROUP columns of a row (GROUP = K for per-token and per-tensor
scales, 128 for fp8 groups, 32 for mxfp8): a group's scale, then its quantized elements. Where a row's
groups fit in registers (``ONE_PASS_MAX`` elements a program) ``_quant_tile_kernel`` reads each element
once: a program holds GROUPS whole groups of one row as a (GROUPS, GROUP) tile. Longer per-token rows take
``_quant_rows_kernel``, which reads the row twice (amax, then quantize) in BLOCK-wide chunks. On the GPU
the division by a dynamic scale goes through its reciprocal (``common.div_rn_fma``: the same correctly
rounded quotient in five FMA-pipe operations, where div.rn takes ~10 and a branch).

=======================  ==========================  ===========================
key                      elements                    scales
=======================  ==========================  ===========================
fp8_dynamic_per_token    e4m3 (M, K)                 fp32 (M, 1)
fp8_dynamic_per_tensor   e4m3 (M, K)                 fp32 () (see ``quantize_activation``)
fp8_static_per_tensor    e4m3 (M, K)                 the given fp32 ()
fp8_dynamic_group_128    e4m3 (M, K)                 fp32 (M, K/128)
int8_dynamic_per_token   int8 (M, K)                 fp32 (M, 1)
mxfp8                    e4m3 (M, K)                 e8m0 uint8 (M, K/32)
=======================  ==========================  ===========================
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import quantize as ref
from .common import (cdiv, div_rn_by, empty, env, floor_log2, fma_div, hw_cast, interpreted, launch, next_pow2,
                     pow2, sm_count, tile_counters, to_e4m3, to_int8, workspace)

# scale sources
_FROM_GROUP, _FROM_AMAX, _STATIC = 0, 1, 2


# The dynamic per-tensor amax pass: at most AMAX_PROGRAMS programs stride over the input in AMAX_BLOCK
# chunks (all of them moving front to back together, so the input's tail is what stays in L2), each
# writes its maximum, and the program that arrives last on a counter reduces those into the amax: no
# zeroed buffer (a memset launch) and no atomic max on one address.
AMAX_BLOCK = 4096
AMAX_PROGRAMS = 1024


@triton.jit
def _amax_kernel(x_ptr, part_ptr, cnt_ptr, amax_ptr, numel, steps, BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    stride = n_programs.to(tl.int64) * BLOCK
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), tl.float32)
    for _ in range(steps):
        amax = tl.maximum(amax, tl.abs(tl.load(x_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)))
        offs += stride
    tl.store(part_ptr + pid, tl.max(amax, axis=0))
    tl.debug_barrier()  # the partial is written before the arrival is counted
    if tl.atomic_add(cnt_ptr, 1, sem="acq_rel") == n_programs - 1:
        offs_p = tl.arange(0, PROGRAMS)
        parts = tl.load(part_ptr + offs_p, mask=offs_p < n_programs, other=0.0, cache_modifier=".cg")
        tl.store(amax_ptr, tl.max(parts, axis=0))
        tl.atomic_xchg(cnt_ptr, 0)  # zero at rest for the next launch (and graph replay)


@triton.jit
def _scale_of(amax, s_ptr, s_ptrs, s_mask, first, fmt_max, SRC: tl.constexpr, MX: tl.constexpr):
    """The scale (and, for mxfp8, its exponent) of groups with this amax, stored where they go: e8m0
    bytes or fp32 per group; one fp32 for a dynamic per-tensor scale (by the ``first`` program)."""
    amax = tl.maximum(amax, 1e-12)
    e = 0
    if MX:
        e = floor_log2(amax) - 8
        scale = pow2(e)
        tl.store(s_ptrs, (e + 127).to(tl.uint8), mask=s_mask)
    else:
        scale = tl.math.div_rn(amax, fmt_max)
        if SRC == 1:
            if first:
                tl.store(s_ptr, scale)
        else:
            tl.store(s_ptrs, scale, mask=s_mask)
    return scale, e


@triton.jit
def _quantized(x, scale, inv, e, INT8: tl.constexpr, MX: tl.constexpr, HW: tl.constexpr, FMA: tl.constexpr):
    """fp32 values -> their codes for ``scale`` (mxfp8: the power of two ``e``; int8; else e4m3). FMA:
    x / scale from ``inv`` = RN(1 / scale) (``common.div_rn_fma``), the same quotient."""
    if MX:
        q = to_e4m3(x * pow2(-e), HW)  # power-of-two scale: exact multiply
    else:
        v = div_rn_by(x, scale, inv, FMA)
        if INT8:
            q = to_int8(v)
        else:
            q = to_e4m3(v, HW)
    return q


@triton.jit
def _row(SRC: tl.constexpr):
    """The row of this program: after the per-tensor amax pass (SRC 1) the last rows first, since the
    amax pass read them last and they are the part of the input still in L2."""
    if SRC == 1:
        return (tl.num_programs(0) - 1 - tl.program_id(0)).to(tl.int64)
    return tl.program_id(0).to(tl.int64)


@triton.jit
def _inverse(scale, FMA: tl.constexpr):
    """RN(1 / scale) for ``_quantized``'s FMA division (one division a group, not an element)."""
    if FMA:
        return tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    return scale


@triton.jit
def _quant_tile_kernel(
    x_ptr, q_ptr, s_ptr, src_ptr,          # input, quantized out, scale out, amax/static scale in
    K, stride_xm, stride_qm, stride_sm,
    GROUP: tl.constexpr, GROUPS: tl.constexpr, GBLOCK: tl.constexpr,  # GBLOCK: GROUP rounded up to 2**n
    SRC: tl.constexpr, INT8: tl.constexpr, MX: tl.constexpr, HW: tl.constexpr, FMA: tl.constexpr,
):
    row = _row(SRC)
    offs_g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    offs_e = tl.arange(0, GBLOCK)
    cols = offs_g[:, None] * GROUP + offs_e[None, :]
    m = (offs_e[None, :] < GROUP) & (cols < K)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=m, other=0.0).to(tl.float32)
    fmt_max = 127.0 if INT8 else 448.0
    g_mask = offs_g * GROUP < K
    e = 0  # the mxfp8 exponent; static scales are not mxfp8
    if SRC == 2:
        scale = tl.load(src_ptr)
    else:
        if SRC == 1:
            amax = tl.load(src_ptr)
        else:
            amax = tl.max(tl.abs(x), axis=1)
        scale, e = _scale_of(amax, s_ptr, s_ptr + row * stride_sm + offs_g, g_mask,
                             (row == 0) & (tl.program_id(1) == 0), fmt_max, SRC, MX)
    inv = _inverse(scale, FMA)
    if SRC == 0:  # one scale per group: a column against the tile's rows of groups
        if MX:
            e = e[:, None]
        q = _quantized(x, scale[:, None], inv[:, None], e, INT8, MX, HW, FMA)
    else:
        q = _quantized(x, scale, inv, e, INT8, MX, HW, FMA)
    if SRC == 1:  # the output streams past L2, which keeps more of the input (0.552 -> 0.564 of bandwidth)
        tl.store(q_ptr + row * stride_qm + cols, q, mask=m, eviction_policy="evict_first")
    else:
        tl.store(q_ptr + row * stride_qm + cols, q, mask=m)


# A program holds at most ONE_PASS_MAX elements in registers (longer rows take two passes): a warp for
# each ROW_ELEMS_PER_WARP of a whole row (per-token, per-tensor: 32 a thread), for each ELEMS_PER_WARP
# of a tile of small groups (GROUP_TILE elements of 1x128 / 1x32 groups) and of any row at decode sizes
# (M <= DECODE_MAX_M, latency-bound: more warps), up to MAX_WARPS. bench/quant_probe.py sweeps them on a
# GPU (bench/results/quant_probe_h100_fma.json: per-token fp8 0.90 -> 0.96 of bandwidth on geomean
# against one pass up to 8192 at 512 a warp, 8 warps at most)
ONE_PASS_MAX = 16384
ROW_ELEMS_PER_WARP = 1024
ELEMS_PER_WARP = 512
MAX_WARPS = 16
GROUP_TILE = 2048
DECODE_MAX_M = 64


@triton.jit
def _quant_rows_kernel(
    x_ptr, q_ptr, s_ptr, src_ptr,          # input, quantized out, scale out, amax/static scale in
    K, stride_xm, stride_qm, stride_sm,
    GROUP: tl.constexpr, BLOCK: tl.constexpr,
    SRC: tl.constexpr,                      # 0 group amax, 1 amax in src_ptr, 2 static scale in src_ptr
    INT8: tl.constexpr, MX: tl.constexpr,   # element format: int8, e4m3 with e8m0 scale, else e4m3
    HW: tl.constexpr,                        # the hardware e4m3 cast (common.to_e4m3)
    FMA: tl.constexpr,                       # division through the reciprocal (common.div_rn_fma)
):
    row = _row(SRC)
    g = tl.program_id(1)
    x_row = x_ptr + row * stride_xm + g * GROUP
    q_row = q_ptr + row * stride_qm + g * GROUP
    fmt_max = 127.0 if INT8 else 448.0
    e = 0  # the mxfp8 exponent; static scales are not mxfp8
    if SRC == 2:
        scale = tl.load(src_ptr)
    else:
        if SRC == 1:
            amax = tl.load(src_ptr)
        else:
            amax = tl.zeros((BLOCK,), tl.float32)
            for c in range(0, GROUP, BLOCK):
                offs = c + tl.arange(0, BLOCK)
                m = (offs < GROUP) & (g * GROUP + offs < K)
                amax = tl.maximum(amax, tl.abs(tl.load(x_row + offs, mask=m, other=0.0).to(tl.float32)))
            amax = tl.max(amax, axis=0)
        scale, e = _scale_of(amax, s_ptr, s_ptr + row * stride_sm + g, True, (row == 0) & (g == 0), fmt_max, SRC, MX)
    inv = _inverse(scale, FMA)
    for c in range(0, GROUP, BLOCK):
        offs = c + tl.arange(0, BLOCK)
        m = (offs < GROUP) & (g * GROUP + offs < K)
        x = tl.load(x_row + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(q_row + offs, _quantized(x, scale, inv, e, INT8, MX, HW, FMA), mask=m)


def _amax_parts(device: torch.device, n: int) -> torch.Tensor:
    """The fp32 workspace of the amax pass (the programs' maxima, then the amax) of this device and stream
    (``common.workspace``), at least ``n`` long."""
    return workspace("amax_parts", device, n, torch.float32, zeroed=False, reserve=AMAX_PROGRAMS + 1)


def _amax(x: torch.Tensor) -> torch.Tensor:
    """fp32 () amax of |x| over the whole (contiguous) tensor, by ``_amax_kernel`` (a view into the
    device's workspace, valid until the next amax pass on that device)."""
    numel = x.numel()
    programs = max(1, min(AMAX_PROGRAMS, cdiv(numel, AMAX_BLOCK)))
    parts = _amax_parts(x.device, programs + 1)  # slot ``programs``: the amax
    launch(_amax_kernel, (programs,), (x, parts, tile_counters(x.device, 1), parts[programs:], numel,
                                       cdiv(numel, programs * AMAX_BLOCK)),
           dict(BLOCK=AMAX_BLOCK, PROGRAMS=next_pow2(AMAX_PROGRAMS)), 4)
    return parts[programs]


# Dynamic per-tensor in one read (a cooperative launch: every program resident at once, so they can wait
# for each other). Each program reads its first HELD chunks of COOP_BLOCK elements into registers, then
# streams the rest of its chunks (strided over the programs, as the amax pass) for their maximum only,
# adds its maximum into the amax slot and arrives on a counter; once all have arrived, each reads the
# amax, quantizes the chunks it holds and re-reads the rest last first (the ones most likely in L2).
# The two-kernel path reads the whole input twice (5 bytes an element moved where 3 are counted); this
# one re-reads only what neither registers (HELD x COOP_BLOCK x 2 bytes a program) nor L2 kept.
# COOP_PER_SM programs an SM, their registers capped (``maxnreg``) so that many always fit: the launch is
# refused otherwise. The amax travels by atomics only and the spin is an atomic whose result every thread
# of the program waits for: a first version that polled with volatile loads and then read the programs'
# maxima with plain loads returned wrong bits once on the H100 (its other threads' loads were not ordered
# after the one acquiring atomic). bench/per_tensor_probe.py swept the constants on the H100 (per_tensor_probe_h100_s15*.json:
# 16384-element chunks, one held, two 8-warp programs an SM won on geomean).
# The interpreter runs programs one after another, so it gets one program (every chunk, no wait).
COOP_BLOCK = 16384
COOP_HELD = 1
COOP_WARPS = 8
COOP_PER_SM = 2
COOP_MAX_PROGRAMS = 4096
# Up to this many elements the two-kernel path stays (H100: 1024 x 2048 0.31 against 0.27 of the
# bandwidth, 1024 x 4096 0.48 against 0.46: the wait for every program costs more than the second read
# of an input L2 holds); from 1024 x 7168 on the cooperative kernel ties or wins (up to 1.44x).
COOP_MIN_NUMEL = 1 << 22


@triton.jit
def _held_chunk(x_ptr, base, c, stride, numel):
    offs = base + c * stride
    x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0)
    return x, tl.max(tl.abs(x.to(tl.float32)), axis=0)


@triton.jit
def _store_quantized(q_ptr, x, base, c, stride, numel, scale, inv, HW: tl.constexpr, FMA: tl.constexpr):
    offs = base + c * stride
    q = _quantized(x.to(tl.float32), scale, inv, 0, False, False, HW, FMA)
    tl.store(q_ptr + offs, q, mask=offs < numel, eviction_policy="evict_first")


@triton.jit
def grid_amax(sync_ptr, amax, n_programs):
    """The maximum of every program's ``amax`` (>= 0), once all ``n_programs`` of a cooperative launch have
    arrived. sync_ptr: int32 [arrivals, departures, amax bits], zero at rest and left so: the last program
    out zeroes them (every program has read the amax by then)."""
    # |x| >= 0: its fp32 bits order as int32s do
    tl.atomic_max(sync_ptr + 2, amax.to(tl.int32, bitcast=True), sem="acq_rel")
    arrived = tl.atomic_add(sync_ptr, 1, sem="acq_rel") + 1
    while arrived < n_programs:
        arrived = tl.atomic_add(sync_ptr, 0, sem="acquire")
    amax = tl.atomic_max(sync_ptr + 2, 0, sem="acq_rel").to(tl.float32, bitcast=True)
    if tl.atomic_add(sync_ptr + 1, 1, sem="acq_rel") == n_programs - 1:
        tl.atomic_xchg(sync_ptr, 0)
        tl.atomic_xchg(sync_ptr + 1, 0)
        tl.atomic_xchg(sync_ptr + 2, 0)
    return amax


@triton.jit
def _per_tensor_coop_kernel(x_ptr, q_ptr, s_ptr, sync_ptr, numel, steps,
                            BLOCK: tl.constexpr, HELD: tl.constexpr, HW: tl.constexpr, FMA: tl.constexpr):
    # sync_ptr: int32 [arrivals, departures, amax bits], zero at rest
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    stride = n_programs.to(tl.int64) * BLOCK
    base = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    # chunks 0 .. HELD-1 stay in registers (written out: a tuple of tensors is not a loop variable)
    x0, amax = _held_chunk(x_ptr, base, 0, stride, numel)
    x1, x2, x3 = x0, x0, x0
    if HELD >= 2:
        x1, m1 = _held_chunk(x_ptr, base, 1, stride, numel)
        amax = tl.maximum(amax, m1)
    if HELD >= 3:
        x2, m2 = _held_chunk(x_ptr, base, 2, stride, numel)
        amax = tl.maximum(amax, m2)
    if HELD >= 4:
        x3, m3 = _held_chunk(x_ptr, base, 3, stride, numel)
        amax = tl.maximum(amax, m3)
    for c in range(HELD, steps):  # the rest: maxima only
        offs = base + c * stride
        x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=0))
    amax = grid_amax(sync_ptr, amax, n_programs)
    scale = tl.math.div_rn(tl.maximum(amax, 1e-12), 448.0)
    if pid == 0:
        tl.store(s_ptr, scale)
    inv = _inverse(scale, FMA)
    _store_quantized(q_ptr, x0, base, 0, stride, numel, scale, inv, HW, FMA)
    if HELD >= 2:
        _store_quantized(q_ptr, x1, base, 1, stride, numel, scale, inv, HW, FMA)
    if HELD >= 3:
        _store_quantized(q_ptr, x2, base, 2, stride, numel, scale, inv, HW, FMA)
    if HELD >= 4:
        _store_quantized(q_ptr, x3, base, 3, stride, numel, scale, inv, HW, FMA)
    for i in range(steps - HELD):  # re-read, the chunk read last first
        c = steps - 1 - i
        offs = base + c * stride
        x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0)
        _store_quantized(q_ptr, x, base, c, stride, numel, scale, inv, HW, FMA)


def coop_grid(numel: int, programs_max: int) -> tuple[int, int]:
    """(programs, steps) of the cooperative per-tensor launch: as many programs as fit at once (at most
    ``programs_max``) but no more than there are chunks; each takes ``steps`` >= HELD chunks."""
    programs = max(1, min(programs_max, COOP_MAX_PROGRAMS, cdiv(numel, COOP_BLOCK)))
    return programs, max(COOP_HELD, cdiv(numel, programs * COOP_BLOCK))


REGISTERS_PER_SM = 65536  # every sm_70+ GPU


def coop_maxnreg(warps: int, per_sm: int) -> int:
    """The register cap that lets ``per_sm`` programs of ``warps`` warps share an SM (a multiple of 8,
    at most the 255 an sm_70+ thread can address)."""
    return min(255, REGISTERS_PER_SM // (32 * warps * per_sm) // 8 * 8)


def _per_tensor_coop(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> None:
    """x -> (q, s) for fp8_dynamic_per_tensor by ``_per_tensor_coop_kernel``: one launch, one read where
    registers and L2 hold the input."""
    numel = x.numel()
    resident = 1 if interpreted() else sm_count(x.device) * COOP_PER_SM
    programs, steps = coop_grid(numel, resident)
    launch(_per_tensor_coop_kernel, (programs,), (x, q, s, tile_counters(x.device, 3), numel, steps),
           dict(BLOCK=COOP_BLOCK, HELD=COOP_HELD, HW=hw_cast(x.device), FMA=fma_div(x.device),
                launch_cooperative_grid=True, maxnreg=coop_maxnreg(COOP_WARPS, COOP_PER_SM)), COOP_WARPS)


def coop_on(numel: int) -> bool:
    """Whether dynamic per-tensor over ``numel`` elements takes the cooperative one-read kernel (past
    COOP_MIN_NUMEL; QUANTC_PER_TENSOR_COOP=0: the amax pass, then the quantize pass, at every size)."""
    return numel > COOP_MIN_NUMEL and env("QUANTC_PER_TENSOR_COOP", "1") != "0"


# dynamic per-tensor at up to ONE_PASS_MAX elements: one launch of the per-token kernel on the tensor as
# one row (False: the amax pass first at every size; bench/bench_quant.py compares the two)
PER_TENSOR_ONE_LAUNCH = True


def one_pass(group: int) -> bool:
    """Whether groups of ``group`` elements take the one-pass tile kernel (else two passes)."""
    return next_pow2(group) <= ONE_PASS_MAX


def quantize_activation(x: torch.Tensor, key: str, static_scale: torch.Tensor | None = None):
    """bf16 (M, K) -> (elements, scales) for an activation key, on x's device (Triton). Dynamic per-tensor:
    up to ONE_PASS_MAX elements the per-token kernel on the tensor as one row, up to COOP_MIN_NUMEL an
    amax pass then the quantize pass, beyond one cooperative launch (``_per_tensor_coop_kernel``)."""
    m, k = x.shape
    x = x.contiguous()
    if key == "fp8_dynamic_per_tensor" and m * k == 0:  # no rows: nothing to scan, the floored amax's scale
        return (torch.empty((m, k), dtype=ref.FP8, device=x.device),
                torch.full((), 1e-12, dtype=torch.float32, device=x.device) / 448.0)
    if key == "fp8_dynamic_per_tensor" and PER_TENSOR_ONE_LAUNCH and one_pass(m * k):
        # decode sizes: the whole tensor fits one program's registers, so it is quantized as one row with
        # the per-token math (the same scale formula): one launch and one read instead of an amax pass first
        q, s = quantize_activation(x.view(1, m * k), "fp8_dynamic_per_token")
        return q.view(m, k), s.reshape(())
    int8 = key == "int8_dynamic_per_token"
    mx = key == "mxfp8"
    q = empty((m, k), torch.int8 if int8 else ref.FP8, x.device)
    src, group = _FROM_GROUP, k
    if key in ("fp8_dynamic_group_128", "mxfp8"):
        group = 128 if key == "fp8_dynamic_group_128" else 32
        if k % group:  # the compiler rejects such plans (QC301); a direct call must not write past the scales
            raise ValueError(f"{key} needs K divisible by {group}, got K = {k}")
        s = empty((m, k // group), torch.uint8 if mx else torch.float32, x.device)
    elif key in ("fp8_dynamic_per_tensor", "fp8_static_per_tensor"):
        s = empty((), torch.float32, x.device)
        if key == "fp8_static_per_tensor":
            if static_scale is None:
                raise ValueError("fp8_static_per_tensor needs the checkpoint's input_scale")
            src, s = _STATIC, static_scale.float().reshape(())
            aux = s
        elif coop_on(m * k):
            _per_tensor_coop(x, q, s)
            return q, s
        else:
            src = _FROM_AMAX
            aux = _amax(x)
    elif key in ("fp8_dynamic_per_token", "int8_dynamic_per_token"):
        s = empty((m, 1), torch.float32, x.device)
    else:
        raise KeyError(f"no activation quantizer for {key!r}")
    if src == _FROM_GROUP:
        aux = s
    s_stride = s.stride(0) if s.dim() == 2 else 0
    # a dynamic scale is >= 1e-12 / 448, a normal number: its reciprocal and the FMA division are exact
    # there; a static scale comes from a checkpoint and keeps div.rn
    fma = fma_div(x.device) and src != _STATIC and not mx
    gblock = next_pow2(group)
    if one_pass(group):
        n_groups = k // group
        groups = max(1, min(GROUP_TILE // gblock, next_pow2(n_groups)))
        per_warp = ROW_ELEMS_PER_WARP if group == k and m > DECODE_MAX_M else ELEMS_PER_WARP
        warps = max(1, min(MAX_WARPS, groups * gblock // per_warp))
        launch(_quant_tile_kernel, (m, cdiv(n_groups, groups)), (x, q, s, aux, k, x.stride(0), q.stride(0), s_stride),
               dict(GROUP=group, GROUPS=groups, GBLOCK=gblock, SRC=src, INT8=int8, MX=mx, HW=hw_cast(x.device),
                    FMA=fma), warps)
        return q, s
    launch(_quant_rows_kernel, (m, k // group), (x, q, s, aux, k, x.stride(0), q.stride(0), s_stride),
           dict(GROUP=group, BLOCK=2048, SRC=src, INT8=int8, MX=mx, HW=hw_cast(x.device), FMA=fma), 4)
    return q, s


def quantize_activation_op(x: torch.Tensor, key: str, static_scale: torch.Tensor | None = None):
    """``quantize_activation`` where torch.compile traces: the ``quantc::quantize_activation`` custom op
    (opaque to it, as the GEMMs are); eager calls run the launchers directly."""
    if torch.compiler.is_compiling():
        return torch.ops.quantc.quantize_activation(x, key, static_scale)
    return quantize_activation(x, key, static_scale)


def _quantize_activation_op(x: torch.Tensor, key: str,
                            static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = quantize_activation(x, key, static_scale)
    if static_scale is not None and s.data_ptr() == static_scale.data_ptr():
        s = s.clone()  # a custom op's outputs may not alias its inputs
    return q, s


_act_quant_op = torch.library.custom_op("quantc::quantize_activation", _quantize_activation_op, mutates_args=())


@_act_quant_op.register_fake
def _(x, key, static_scale):
    m, k = x.shape
    q = x.new_empty((m, k), dtype=torch.int8 if key == "int8_dynamic_per_token" else ref.FP8)
    if key in ("fp8_dynamic_group_128", "mxfp8"):
        g = 128 if key == "fp8_dynamic_group_128" else 32
        return q, x.new_empty((m, k // g), dtype=torch.uint8 if key == "mxfp8" else torch.float32)
    if key in ("fp8_dynamic_per_tensor", "fp8_static_per_tensor"):
        return q, x.new_empty((), dtype=torch.float32)
    return q, x.new_empty((m, 1), dtype=torch.float32)


def reference(x: torch.Tensor, key: str, static_scale: torch.Tensor | None = None):
    """The same math in plain torch (``quantc.runtime.quantize``)."""
    if key == "fp8_static_per_tensor":
        return ref.quant_fp8_per_tensor(x, static_scale)
    return ref.ACTIVATION_QUANTIZERS[key](x)
