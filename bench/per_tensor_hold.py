"""An experiment, not a runtime kernel (it lost, see below): dynamic per-tensor fp8 in one launch that keeps
its input on chip (Gluon), ``fp8_dynamic_per_tensor``.

Result (seventeenth session, H100, ``bench/per_tensor_probe.py``, ``bench/results/per_tensor_probe_h100_s17_hold.json``):
bit-identical to the two-kernel path on all 12 shapes and 7 configurations, but slower than the Triton
cooperative kernel everywhere: geomean 0.50-0.54 of the bandwidth against its 0.62, and 0.56-0.62 where the
whole input is on chip (4096 x 4096: 0.59-0.62 against 0.84). The reads of phase 1 and the quantization of
phase 2 do not overlap (nothing can be quantized before the barrier), and phase 2 here, from shared memory,
took ~15 us at 4096 x 4096 where the cooperative kernel's re-read from L2 took ~9; not profiled further. Two
earlier versions were slower still: contiguous ranges a program, and loops over every shared-memory slot at
small inputs (the quantization of empty slots' padding).

The scale needs the amax of the whole tensor before the first element can be quantized, so a two-kernel
path reads the input twice (5 bytes an element moved where 3 are counted: the floor's 0.6 of bandwidth).
``act_quant._per_tensor_coop_kernel`` (Triton) waits for every program inside one cooperative launch and
keeps one chunk a program in registers (~8.6 MB on an H100); the rest is read again, from L2 at best. This
kernel also keeps chunks in shared memory, which Triton cannot address directly:

- the input is dealt out to the programs chunk by chunk (neighbouring programs read neighbouring chunks:
  contiguous ranges a program, 64 KB apart, ran at 0.6-0.9x the Triton kernel on the H100);
- each program's first SMEM_A + SMEM_B chunks are copied into shared memory by ``cp.async`` (all in flight at
  once), the next HELD chunk is loaded into registers, the rest stream through registers for their maximum;
- a running element-wise maximum of |x| as bf16 bits (exact, 16 bits wide), reduced once;
- the programs' maxima meet in one int32 slot by atomics and every program waits on an arrival counter: the
  Triton kernel's ``grid_amax`` (its comments say why it is atomics only);
- then the chunks in shared memory and registers are quantized where they are, and the rest are read again,
  the chunk read last first (the part most likely still in L2).

The quantization is the Triton kernels' (``_quantized``: the scale as ``div_rn(max(amax, 1e-12), 448)``, the
division through the reciprocal and FMAs, the explicit e4m3 rounding), so the bits are theirs.

bench/per_tensor_probe.py compares its output with the two-pass path's on the GPU, bit for bit, before timing
it (``PROBE_HOLD``); ``compile_for_hopper`` compiles it offline for sm_90 (triton 3.6 and 3.9: no spills at
the probed configurations).
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from quantc.runtime.kernels.act_quant import _quantized, grid_amax
from quantc.runtime.kernels.common import cdiv, launch

# triton 3.6 names the copy async_copy_global_to_shared; later releases renamed it async_load
_cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

SMEM_PER_SM = 227 * 1024  # Hopper's shared memory a block may opt into (232448 bytes), all programs of an SM
# The defaults, to be set by bench/per_tensor_probe.py's sweep on the H100 (``hold:`` variants)
HOLD_STREAM = 16384  # elements a streaming step (and the register-held chunk)
HOLD_WARPS = 8
HOLD_PER_SM = 2
HOLD_HELD = 1


@gluon.jit
def _abs_bits(x):
    """|x| of bf16 values as their int16 bits (sign cleared): non-negative floats order as their bits do, so
    the running maximum stays 16 bits wide (triton 3.6 takes bf16 maxima in fp32)."""
    bits = x.to(gl.int16, bitcast=True)
    return bits & gl.full(bits.shape, 0x7FFF, gl.int16, bits.type.layout)


@gluon.jit
def _bits_to_float(bits):
    """int16 bf16 bits -> the fp32 value (bf16 is fp32's upper half)."""
    return (bits.to(gl.int32) << 16).to(gl.float32, bitcast=True)


@gluon.jit
def _live(N: gl.constexpr, FIRST: gl.constexpr, numel, BLOCK: gl.constexpr):
    """How many of the N chunks FIRST .. FIRST + N - 1 of this program start inside the input (small inputs
    leave most slots empty: no copies, maxima or quantization of padding)."""
    first_start = (FIRST * gl.num_programs(0) + gl.program_id(0)) * BLOCK
    live = gl.cdiv(gl.maximum(numel - first_start, 0), gl.num_programs(0) * BLOCK)
    return gl.minimum(live, N)


@gluon.jit
def _copy_in(buf, N: gl.constexpr, FIRST: gl.constexpr, x_ptr, numel, lanes, BLOCK: gl.constexpr):
    """cp.async of this program's chunks FIRST .. FIRST + N - 1 (chunk c: BLOCK elements at (c P + pid) BLOCK)
    into ``buf``'s N slots."""
    for c in range(_live(N, FIRST, numel, BLOCK)):
        offs = ((FIRST + c) * gl.num_programs(0) + gl.program_id(0)) * BLOCK + lanes
        _cp_async(buf.index(c), x_ptr + offs, mask=offs < numel)
        async_copy.commit_group()


@gluon.jit
def _max_in(buf, N: gl.constexpr, FIRST: gl.constexpr, run, numel, lanes, BLOCK: gl.constexpr):
    """``run`` with the |x| of ``buf``'s chunks folded in (element-wise, as bf16 bits)."""
    for c in range(_live(N, FIRST, numel, BLOCK)):
        offs = ((FIRST + c) * gl.num_programs(0) + gl.program_id(0)) * BLOCK + lanes
        x = buf.index(c).load(lanes.type.layout)
        run = gl.maximum(run, gl.where(offs < numel, _abs_bits(x), gl.zeros_like(run)))
    return run


@gluon.jit
def _quantize_from(buf, N: gl.constexpr, FIRST: gl.constexpr, q_ptr, numel, lanes, scale, inv,
                   BLOCK: gl.constexpr, HW: gl.constexpr, FMA: gl.constexpr):
    for c in range(_live(N, FIRST, numel, BLOCK)):
        offs = ((FIRST + c) * gl.num_programs(0) + gl.program_id(0)) * BLOCK + lanes
        x = buf.index(c).load(lanes.type.layout)
        q = _quantized(x.to(gl.float32), scale, inv, 0, False, False, HW, FMA)
        gl.store(q_ptr + offs, q, mask=offs < numel)


@gluon.jit
def _per_tensor_hold_kernel(x_ptr, q_ptr, s_ptr, sync_ptr, numel,
                            BLOCK: gl.constexpr, SMEM_A: gl.constexpr, SMEM_B: gl.constexpr,
                            STREAM: gl.constexpr, HELD: gl.constexpr, HW: gl.constexpr, FMA: gl.constexpr):
    # sync_ptr: int32 [arrivals, departures, amax bits], zero at rest. The input in three regions, each dealt
    # out to the P programs chunk by chunk (program p takes chunks p, P + p, 2P + p, ...: neighbouring
    # programs read neighbouring addresses): SMEM_A + SMEM_B chunks of BLOCK elements a program into shared
    # memory (two buffers: a buffer's dimensions are powers of two; SMEM_B may be 0), then HELD chunks of STREAM
    # elements into registers (0 or 1), then the rest STREAM elements a step (wide steps keep enough loads in
    # flight: Gluon does not pipeline a loop's loads). int32 offsets: the launcher keeps numel < 2**31.
    WARPS: gl.constexpr = gl.num_warps()
    layout: gl.constexpr = gl.BlockedLayout([8], [32], [WARPS], [0])  # 16-byte runs of bf16 a thread
    smem_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    pid = gl.program_id(0)
    n_programs = gl.num_programs(0)
    lanes = gl.arange(0, BLOCK, layout=layout)
    s_lanes = gl.arange(0, STREAM, layout=layout)
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    buf_a = gl.allocate_shared_memory(dtype, [SMEM_A, BLOCK], smem_layout)
    _copy_in(buf_a, SMEM_A, 0, x_ptr, numel, lanes, BLOCK)
    if SMEM_B > 0:
        buf_b = gl.allocate_shared_memory(dtype, [SMEM_B, BLOCK], smem_layout)
        _copy_in(buf_b, SMEM_B, SMEM_A, x_ptr, numel, lanes, BLOCK)
    held_at = (SMEM_A + SMEM_B) * n_programs * BLOCK + pid * STREAM + s_lanes
    run = gl.zeros([STREAM], gl.int16, layout)  # the running maximum of |x|, as bf16 bits
    held = gl.zeros([STREAM], dtype, layout)
    if HELD:
        held = gl.load(x_ptr + held_at, mask=held_at < numel, other=0.0)
        run = gl.maximum(run, _abs_bits(held))
    rest = ((SMEM_A + SMEM_B) * BLOCK + HELD * STREAM) * n_programs  # where the streamed region starts
    n_rest = gl.cdiv(gl.maximum(numel - rest, 0), n_programs * STREAM)
    for i in range(n_rest):  # the rest: maxima only
        offs = rest + (i * n_programs + pid) * STREAM + s_lanes
        x = gl.load(x_ptr + offs, mask=offs < numel, other=0.0)
        run = gl.maximum(run, _abs_bits(x))
    async_copy.wait_group(0)
    small = gl.zeros([BLOCK], gl.int16, layout)
    small = _max_in(buf_a, SMEM_A, 0, small, numel, lanes, BLOCK)
    if SMEM_B > 0:
        small = _max_in(buf_b, SMEM_B, SMEM_A, small, numel, lanes, BLOCK)
    amax = gl.maximum(_bits_to_float(gl.max(run, axis=0)), _bits_to_float(gl.max(small, axis=0)))
    amax = grid_amax(sync_ptr, amax, n_programs)  # the Triton kernel's protocol, compiled as Gluon
    scale = gl.div_rn(gl.maximum(amax, 1e-12), 448.0)
    if pid == 0:
        gl.store(s_ptr, scale)
    inv = scale
    if FMA:  # RN(1 / scale), as act_quant._inverse (whose tl.full has no layout here)
        inv = gl.div_rn(1.0, scale)
    if HELD:
        q = _quantized(held.to(gl.float32), scale, inv, 0, False, False, HW, FMA)
        gl.store(q_ptr + held_at, q, mask=held_at < numel)
    _quantize_from(buf_a, SMEM_A, 0, q_ptr, numel, lanes, scale, inv, BLOCK, HW, FMA)
    if SMEM_B > 0:
        _quantize_from(buf_b, SMEM_B, SMEM_A, q_ptr, numel, lanes, scale, inv, BLOCK, HW, FMA)
    for i in range(n_rest):  # re-read, the chunk read last first
        offs = rest + ((n_rest - 1 - i) * n_programs + pid) * STREAM + s_lanes
        x = gl.load(x_ptr + offs, mask=offs < numel, other=0.0)
        q = _quantized(x.to(gl.float32), scale, inv, 0, False, False, HW, FMA)
        gl.store(q_ptr + offs, q, mask=offs < numel)


SCRATCH_BYTES = 4096  # shared memory the compiler takes besides the chunks (the final reductions')


def smem_block(warps: int) -> int:
    """Elements of one shared-memory chunk: two 16-byte bf16 runs a thread."""
    return 16 * 32 * warps


def smem_chunks(block: int, per_sm: int, itemsize: int = 2) -> tuple[int, int]:
    """(SMEM_A, SMEM_B): the chunks of ``block`` elements a program keeps in shared memory when ``per_sm``
    programs share an SM, as two powers of two (a buffer's dimensions must be; B may be 0): the largest two
    such terms that fit."""
    fit = max(1, (SMEM_PER_SM // per_sm - SCRATCH_BYTES) // (block * itemsize))
    a = 1 << (fit.bit_length() - 1)
    rest = fit - a
    return a, (1 << (rest.bit_length() - 1)) if rest else 0


def hold_programs(numel: int, sms: int, block: int, per_sm: int = HOLD_PER_SM) -> int:
    """Programs of a launch: as many as fit at once (``per_sm`` an SM), but no more than there are
    shared-memory chunks of ``block`` elements."""
    return max(1, min(sms * per_sm, cdiv(numel, block)))


def _consts(x_itemsize: int, stream: int, warps: int, per_sm: int, held: int, hw: bool, fma: bool) -> dict:
    block = smem_block(warps)
    a, b = smem_chunks(block, per_sm, x_itemsize)
    return dict(BLOCK=block, SMEM_A=a, SMEM_B=b, STREAM=stream, HELD=held, HW=hw, FMA=fma)


def per_tensor_hold(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, counters: torch.Tensor, sms: int,
                    stream: int = HOLD_STREAM, warps: int = HOLD_WARPS, per_sm: int = HOLD_PER_SM,
                    held: int = HOLD_HELD, hw: bool = True, fma: bool = True) -> None:
    """x (bf16, contiguous) -> q (e4m3, x's shape) and s (one fp32) in one cooperative launch;
    ``counters``: three int32 zero at rest (``common.tile_counters``). A GPU of compute capability 8+ only."""
    from quantc.runtime.kernels.act_quant import coop_maxnreg

    numel = x.numel()
    programs = hold_programs(numel, sms, smem_block(warps), per_sm)
    launch(_per_tensor_hold_kernel, (programs,), (x, q, s, counters, numel),
           dict(_consts(x.element_size(), stream, warps, per_sm, held, hw, fma),
                launch_cooperative_grid=True, maxnreg=coop_maxnreg(warps, per_sm)), warps)


def compile_for_hopper(stream: int = HOLD_STREAM, warps: int = HOLD_WARPS, per_sm: int = HOLD_PER_SM,
                       held: int = HOLD_HELD):
    """Compile the kernel for sm_90 without a GPU (Triton's bundled ptxas): the CompiledKernel, whose ``asm``
    holds the PTX and the cubin; tests inspect it."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from quantc.runtime.kernels.act_quant import coop_maxnreg

    sig = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "sync_ptr": "*i32", "numel": "i32"}
    consts = _consts(2, stream, warps, per_sm, held, True, True)
    sig.update({k: "constexpr" for k in consts})
    # what a launch specializes on: 16-byte aligned pointers, numel a multiple of 16 (the launcher's policy)
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 4)}
    return triton.compile(GluonASTSource(_per_tensor_hold_kernel, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "maxnreg": coop_maxnreg(warps, per_sm)})
