"""fp8 128-block GEMM for Hopper, warp-specialized by hand (Gluon): ``out = (A * sa) @ (B * sb).T``.

A (M, K) e4m3 with 1 x 128 scales ``sa`` (M, K/128); B (N, K) e4m3 with 128 x 128 scales ``sb``
(ceil(N/128), K/128); bf16 out. The same operands and per-step math as ``scaled_mm``'s fp8_block_gemm
(``acc += part * (sa_k * sb_k)``, one FMA per element per 128-wide K step), so the two agree bit for bit.

Why a second kernel: the tiled Triton kernel waits for each K step's wgmma group before scaling its
partial into the running sum, so the tensor cores idle during the scaling (README, "fp8 128-block").
Here the K loop is split across warps and across time:

- a producer warp issues the TMA loads of A and B tiles into a ring of NUM_STAGES shared-memory slots
  (``ready`` / ``empty`` mbarriers per slot);
- the consumer warps (one warpgroup per 64 rows; at 128-row tiles usually one partition per warpgroup,
  so each waits only on its own MMAs) issue step i+1's wgmma asynchronously, scale step i's finished
  partial into the running sum while it runs, then wait for it and release its slot. Every iteration
  waits for its own MMA: a wgmma still running when its registers cross a loop edge would be copied by
  LLVM into the loop's registers, and ptxas then serialises every wgmma of the kernel. Two partial
  buffers alternate (the loop is unrolled by two so they keep their registers); the running sum is the
  third and goes through each wait as a dependency, or ptxas schedules the FMAs after the wait. 3 x 64
  fp32 registers a thread per 64 x 128 warpgroup tile, which the producer's register donation
  (``setmaxnreg``: 40 for the producer, the rest to the consumers) pays for.
- persistent: with the grid capped at the SM count a program walks several output tiles, and the
  producer loads the next tile's first steps while the consumers store the current one.
- 128 x 256 tiles (``_block_mm_ws_wide_kernel``, where ``tile_for`` finds enough of them): at 128 x 128
  the shared memory's bandwidth, not the tensor cores, bounds the kernel (each 64 x 128 wgmma re-reads its
  A slice); a 64 x 256 warpgroup tile taken as two 64 x 128 halves with the A slice in registers, read once
  for both, cuts that traffic by a fifth. One partial buffer (two sums of 64 registers and one partial), so
  each half's MMA is waited for before its scaling, which overlaps the other warpgroup's MMA.

Gluon kernels cannot run under ``TRITON_INTERPRET``: CI compiles this one for sm_90 offline and checks
its SASS (``tests/runtime/test_block_mm_ws.py``: each step's wgmmas back to back with one wait, FMAs
between issue and wait, register reallocation, no spills), and ``bench/block_ws_probe.py`` and
bench_dense's GPU check compare it with the tiled kernel on the GPU, bit for bit.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .common import MEMO_STATE, _args_key, cdiv, current_stream, empty, fast_launch_on

# triton 3.6 names the TMA copies async_copy_global_to_shared / async_copy_shared_to_global; later
# releases renamed them async_load / async_store
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
BLOCK_K = 128  # the scale group: one wgmma group per group
PRODUCER_REGS = gl.constexpr(40)
CONSUMER_REGS = gl.constexpr(232)  # the second consumer partition's, when SPLIT


@gluon.jit
def _tile_offsets(t, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """Output tile t -> (first row, first column): GROUP_M row tiles take each column tile in turn (L2
    reuse of the weight tile), as ``common.grouped_tile``."""
    width = GROUP_M * gl.cdiv(N, BLOCK_N)
    first_m = (t // width) * GROUP_M
    rows = gl.minimum(gl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return (first_m + (t % width) % rows) * BLOCK_M, ((t % width) // rows) * BLOCK_N


@gluon.jit
def _producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, first_tile, num_tiles, k_tiles,
              GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    g = 0  # steps loaded so far by this program, over all its tiles: the ring position
    for t in range(first_tile, num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        for i in range(k_tiles):
            s = g % NUM_STAGES
            # a fresh mbarrier counts as phase 1 complete, so the first lap does not wait
            mbarrier.wait(empty.index(s), ((g // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            _tma_load(a_desc, [off_m, i * 128], ready.index(s), a_bufs.index(s))
            _tma_load(b_desc, [off_n, i * 128], ready.index(s), b_bufs.index(s))
            g += 1


@gluon.jit
def _issue(a_bufs, b_bufs, ready, i, part, ROW0: gl.constexpr, ROWS: gl.constexpr, NUM_STAGES: gl.constexpr):
    """Wait for the tiles of ring position i (the program's i-th step) and start the MMA of rows
    ROW0..ROW0+ROWS of the A tile into ``part``'s registers (their old value unused)."""
    s = i % NUM_STAGES
    mbarrier.wait(ready.index(s), (i // NUM_STAGES) & 1)
    return warpgroup_mma(a_bufs.index(s).slice(ROW0, ROWS), b_bufs.index(s).permute((1, 0)), part, use_acc=False,
                         is_async=True)


@gluon.jit
def _step_scale(i, sa_ptr, sb_ptr, offs_m, mask_m, sb_row, stride_sam, stride_sak, stride_sbk):
    """sa_k * sb_k of K step i, one per row: loaded a step ahead of its use (global load latency)."""
    sa_k = gl.load(sa_ptr + offs_m * stride_sam + i * stride_sak, mask=mask_m, other=0.0)
    sb_k = gl.load(sb_ptr + sb_row + i * stride_sbk)
    return sa_k * sb_k


@gluon.jit
def _finish(running, acc, empty, i, NUM_STAGES: gl.constexpr):
    """Wait for ring position i's MMA and give its shared-memory slot back to the producer. ``acc`` goes through
    the wait as well, so the scaling issued before it stays before it (the FMAs overlap the MMA rather
    than being scheduled after the wait)."""
    part, acc = warpgroup_mma_wait(num_outstanding=0, deps=(running, acc))
    mbarrier.arrive(empty.index(i % NUM_STAGES), count=1)
    return part, acc


@gluon.jit
def _with_bias(acc, bias_ptr, off_n, N, BLOCK_N: gl.constexpr, layout: gl.constexpr):
    """``acc`` (fp32, ``layout``) plus the bf16 bias of columns off_n..off_n+BLOCK_N (0 past N)."""
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    return acc + gl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(gl.float32)[None, :]


@gluon.jit
def _consume(a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles, k_tiles,
             stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr,
             BLOCK_M: gl.constexpr, ROW0: gl.constexpr, ROWS: gl.constexpr, BLOCK_N: gl.constexpr,
             NUM_STAGES: gl.constexpr, layout: gl.constexpr):
    """Rows ROW0..ROW0+ROWS of each of the program's output tiles (one warpgroup per 64 rows;
    ``layout``: the wgmma accumulator's, ``mma_layout``): the K loop, the bias and the TMA store."""
    c_smem = gl.allocate_shared_memory(gl.bfloat16, [ROWS, BLOCK_N], c_desc.layout)
    base = 0  # the ring position of the tile's first step
    for t in range(first_tile, num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = _tile_sum(a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, M, off_m, off_n, k_tiles, base, stride_sam,
                        stride_sak, stride_sbn, stride_sbk, ROW0, ROWS, BLOCK_N, NUM_STAGES, layout)
        base += k_tiles
        if HAS_BIAS:
            acc = _with_bias(acc, bias_ptr, off_n, N, BLOCK_N, layout)
        tma.store_wait(pendings=0)  # the previous tile's store has read c_smem
        c_smem.store(acc.to(gl.bfloat16))
        fence_async_shared()
        _tma_store(c_desc, [off_m + ROW0, off_n], c_smem)  # clips rows / columns past M / N
    tma.store_wait(pendings=0)


@gluon.jit
def _tile_sum(a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, M, off_m, off_n, k_tiles, base, stride_sam, stride_sak,
              stride_sbn, stride_sbk, ROW0: gl.constexpr, ROWS: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_STAGES: gl.constexpr, layout: gl.constexpr):
    """One tile's scaled sum over K (fp32, ``layout``); its steps sit at ring positions base...""" 
    offs_m = off_m + ROW0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    mask_m = offs_m < M
    sb_row = (off_n // 128) * stride_sbn
    acc = gl.zeros([ROWS, BLOCK_N], gl.float32, layout)
    # Step i+1's MMA runs while step i's finished partial is scaled; each iteration waits for its MMA
    # before the next, so no wgmma is in flight across a loop edge (registers of a running wgmma copied
    # between loop values would make ptxas serialize every wgmma of the kernel). part_x / part_y
    # alternate, the loop unrolled by two so each keeps its registers.
    scale_x = _step_scale(0, sa_ptr, sb_ptr, offs_m, mask_m, sb_row, stride_sam, stride_sak, stride_sbk)
    part_x, acc = _finish(_issue(a_bufs, b_bufs, ready, base, acc, ROW0, ROWS, NUM_STAGES), acc, empty, base,
                          NUM_STAGES)
    part_y = gl.zeros([ROWS, BLOCK_N], gl.float32, layout)
    for j in range(0, (k_tiles - 1) // 2):
        i = 2 * j + 1
        running = _issue(a_bufs, b_bufs, ready, base + i, part_y, ROW0, ROWS, NUM_STAGES)
        scale_y = _step_scale(i, sa_ptr, sb_ptr, offs_m, mask_m, sb_row, stride_sam, stride_sak, stride_sbk)
        acc = acc + part_x * scale_x[:, None]
        part_y, acc = _finish(running, acc, empty, base + i, NUM_STAGES)
        running = _issue(a_bufs, b_bufs, ready, base + i + 1, part_x, ROW0, ROWS, NUM_STAGES)
        scale_x = _step_scale(i + 1, sa_ptr, sb_ptr, offs_m, mask_m, sb_row, stride_sam, stride_sak, stride_sbk)
        acc = acc + part_y * scale_y[:, None]
        part_x, acc = _finish(running, acc, empty, base + i + 1, NUM_STAGES)
    last = k_tiles - 1
    if k_tiles % 2 == 0:
        running = _issue(a_bufs, b_bufs, ready, base + last, part_y, ROW0, ROWS, NUM_STAGES)
        scale_y = _step_scale(last, sa_ptr, sb_ptr, offs_m, mask_m, sb_row, stride_sam, stride_sak, stride_sbk)
        acc = acc + part_x * scale_x[:, None]
        part_y, acc = _finish(running, acc, empty, base + last, NUM_STAGES)
        acc = acc + part_y * scale_y[:, None]
    else:
        acc = acc + part_x * scale_x[:, None]
    return acc


@gluon.jit
def _producer_part(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                   num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS: gl.constexpr,
                   GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, UPPER_LAYOUT: gl.constexpr):
    _producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, first_tile, num_tiles, k_tiles, GROUP_M,
              NUM_STAGES)


@gluon.jit
def _upper_part(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS: gl.constexpr,
                GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, UPPER_LAYOUT: gl.constexpr):
    """Rows 64..127 of each 128-row tile, in a warpgroup of their own (SPLIT)."""
    _consume(a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles, k_tiles,
             stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS, GROUP_M, 128, 64, 64,
             b_desc.block_type.shape[0], NUM_STAGES, UPPER_LAYOUT)


@gluon.jit
def _ring(a_desc, b_desc, NUM_STAGES: gl.constexpr, RELEASES: gl.constexpr):
    """The operand ring: NUM_STAGES shared-memory slots of an A and a B tile, a ``ready`` mbarrier per slot
    (the producer's TMA bytes) and an ``empty`` one that counts RELEASES arrivals (one per consumer
    partition)."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_STAGES] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=RELEASES)
    return a_bufs, b_bufs, ready, empty


@gluon.jit
def _block_mm_ws_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                        stride_sam, stride_sak, stride_sbn, stride_sbk,
                        HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr,
                        SPLIT: gl.constexpr, LAYOUT: gl.constexpr, UPPER_LAYOUT: gl.constexpr,
                        num_warps: gl.constexpr):
    """Program p computes output tiles p, p + P, p + 2P, ... (P programs): one tile each when the grid
    covers the tiles, a persistent loop when it is capped (the producer then loads the next tile's
    first steps while the consumers finish and store the current one)."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    k_tiles = gl.cdiv(K, 128)

    a_bufs, b_bufs, ready, empty = _ring(a_desc, b_desc, NUM_STAGES, 2 if SPLIT else 1)
    # worker partitions take one argument list (the producer ignores what it does not need)
    if SPLIT:
        # one partition per 64-row warpgroup: each waits only on its own MMAs and barriers, so one's
        # scaling can run while the other's MMAs hold the tensor cores
        gl.warp_specialize([
            (_consume, (a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles,
                        k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS, GROUP_M, BLOCK_M, 0, 64,
                        BLOCK_N, NUM_STAGES, LAYOUT)),
            (_producer_part, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                              first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                              HAS_BIAS, GROUP_M, NUM_STAGES, UPPER_LAYOUT)),
            (_upper_part, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                           first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                           HAS_BIAS, GROUP_M, NUM_STAGES, UPPER_LAYOUT)),
        ], [1, 4], [PRODUCER_REGS, CONSUMER_REGS])
    else:
        gl.warp_specialize([
            (_consume, (a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles,
                        k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS, GROUP_M, BLOCK_M, 0,
                        BLOCK_M, BLOCK_N, NUM_STAGES, LAYOUT)),
            (_producer_part, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                              first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                              HAS_BIAS, GROUP_M, NUM_STAGES, UPPER_LAYOUT)),
        ], [1], [PRODUCER_REGS])


# ---- 256-wide tiles ----------------------------------------------------------------------------------
# At 128 x 128 tiles each warpgroup's 64 x 128 x 32 wgmma reads its A slice (2 KB) and the whole B slice
# (4 KB) from shared memory, and TMA writes both tiles there: ~160 bytes a clock an SM at the tensor cores'
# rate, over the ~128 that shared memory serves (the per-channel kernel's 128 x 256 tiles, 64 x 256
# instructions, run at ~1250 TFLOP/s; this kernel's 128 x 128 ones at ~1050). A 64 x 256 instruction would
# need the sum and a partial of 128 registers each. Here a warpgroup's 64 x 256 tile is two 64 x 128
# halves (one weight block each): the A slice goes into registers once a K step and feeds both halves' MMAs,
# so shared memory serves ~128 bytes a clock. Registers: two sums and one partial (3 x 64 a thread), so each
# half's MMA is waited for before its scaling, which then overlaps the other warpgroup's MMA (one
# partition each). Three stages: four with the output tiles exceed shared memory.
WIDE_N = gl.constexpr(256)


@gluon.jit
def _wide_producer(a_desc, b_desc, c_desc, a_bufs, b_bufs, b2_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                   first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                   HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, LAYOUT: gl.constexpr):
    nbytes: gl.constexpr = a_desc.block_type.nbytes + 2 * b_desc.block_type.nbytes
    g = 0
    for t in range(first_tile, num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, M, N, 128, WIDE_N, GROUP_M)
        for i in range(k_tiles):
            s = g % NUM_STAGES
            mbarrier.wait(empty.index(s), ((g // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)
            _tma_load(a_desc, [off_m, i * 128], ready.index(s), a_bufs.index(s))
            _tma_load(b_desc, [off_n, i * 128], ready.index(s), b_bufs.index(s))
            _tma_load(b_desc, [off_n + 128, i * 128], ready.index(s), b2_bufs.index(s))  # zeros past N
            g += 1


@gluon.jit
def _wide_rows(sa_ptr, off_m, i, M, stride_sam, stride_sak, ROWS: gl.constexpr, layout: gl.constexpr):
    """sa_k of K step i for rows off_m.."""
    offs_m = off_m + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    return gl.load(sa_ptr + offs_m * stride_sam + i * stride_sak, mask=offs_m < M, other=0.0)


@gluon.jit
def _wide_consume(a_bufs, b_bufs, b2_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                  num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS: gl.constexpr,
                  GROUP_M: gl.constexpr, ROW0: gl.constexpr, NUM_STAGES: gl.constexpr, layout: gl.constexpr):
    """Rows ROW0..ROW0+63 of the program's 128 x 256 tiles: per K step the A slice into registers, then per
    half its MMA, the wait and the scaling (``layout``: a 64 x 128 accumulator's). The tiled kernel's FMA
    per element, so the sums agree bit for bit."""
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=4)
    c_smem = gl.allocate_shared_memory(gl.bfloat16, [64, 128], c_desc.layout)
    c2_smem = gl.allocate_shared_memory(gl.bfloat16, [64, 128], c_desc.layout)
    last_block = gl.cdiv(N, 128) - 1  # a second half wholly past N reads a real scale row (its output is clipped)
    base = 0
    for t in range(first_tile, num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, M, N, 128, WIDE_N, GROUP_M)
        sb_lo = (off_n // 128) * stride_sbn
        sb_hi = gl.minimum(off_n // 128 + 1, last_block) * stride_sbn
        acc = gl.zeros([64, 128], gl.float32, layout)
        acc2 = gl.zeros([64, 128], gl.float32, layout)
        part = gl.zeros([64, 128], gl.float32, layout)
        for i in range(k_tiles):
            s = (base + i) % NUM_STAGES
            mbarrier.wait(ready.index(s), ((base + i) // NUM_STAGES) & 1)
            a_reg = a_bufs.index(s).slice(ROW0, 64).load(a_layout)
            run = warpgroup_mma(a_reg, b_bufs.index(s).permute((1, 0)), part, use_acc=False, is_async=True)
            r = _wide_rows(sa_ptr, off_m + ROW0, i, M, stride_sam, stride_sak, 64, layout)
            r2 = r * gl.load(sb_ptr + sb_hi + i * stride_sbk)
            r = r * gl.load(sb_ptr + sb_lo + i * stride_sbk)
            part = warpgroup_mma_wait(num_outstanding=0, deps=(run,))
            acc = acc + part * r[:, None]
            run = warpgroup_mma(a_reg, b2_bufs.index(s).permute((1, 0)), part, use_acc=False, is_async=True)
            part = warpgroup_mma_wait(num_outstanding=0, deps=(run,))
            mbarrier.arrive(empty.index(s), count=1)
            acc2 = acc2 + part * r2[:, None]
        base += k_tiles
        if HAS_BIAS:
            acc = _with_bias(acc, bias_ptr, off_n, N, 128, layout)
            acc2 = _with_bias(acc2, bias_ptr, off_n + 128, N, 128, layout)
        tma.store_wait(pendings=0)  # the previous tile's stores have read c_smem / c2_smem
        c_smem.store(acc.to(gl.bfloat16))
        c2_smem.store(acc2.to(gl.bfloat16))
        fence_async_shared()
        _tma_store(c_desc, [off_m + ROW0, off_n], c_smem)
        _tma_store(c_desc, [off_m + ROW0, off_n + 128], c2_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _wide_upper(a_desc, b_desc, c_desc, a_bufs, b_bufs, b2_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, LAYOUT: gl.constexpr):
    """Rows 64..127 of each tile, in a warpgroup of their own."""
    _wide_consume(a_bufs, b_bufs, b2_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                  num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS, GROUP_M, 64,
                  NUM_STAGES, LAYOUT)


@gluon.jit
def _block_mm_ws_wide_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                             stride_sam, stride_sak, stride_sbn, stride_sbk,
                             HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr,
                             LAYOUT: gl.constexpr, num_warps: gl.constexpr):
    """``_block_mm_ws_kernel`` at 128 x 256 tiles (persistent, one partition per 64-row warpgroup), from
    the same descriptors as its split 128 x 128 tile: two B tiles a K step."""
    num_tiles = gl.cdiv(M, 128) * gl.cdiv(N, WIDE_N)
    first_tile = gl.program_id(0)
    k_tiles = gl.cdiv(K, 128)
    a_bufs, b_bufs, ready, empty = _ring(a_desc, b_desc, NUM_STAGES, 2)
    b2_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_STAGES] + b_desc.block_type.shape, b_desc.layout)
    # the worker partitions take one argument list (each ignores what it does not need)
    gl.warp_specialize([
        (_wide_consume, (a_bufs, b_bufs, b2_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                         num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk, HAS_BIAS, GROUP_M, 0,
                         NUM_STAGES, LAYOUT)),
        (_wide_producer, (a_desc, b_desc, c_desc, a_bufs, b_bufs, b2_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M,
                          N, first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                          HAS_BIAS, GROUP_M, NUM_STAGES, LAYOUT)),
        (_wide_upper, (a_desc, b_desc, c_desc, a_bufs, b_bufs, b2_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M,
                       N, first_tile, num_tiles, k_tiles, stride_sam, stride_sak, stride_sbn, stride_sbk,
                       HAS_BIAS, GROUP_M, NUM_STAGES, LAYOUT)),
    ], [1, 4], [PRODUCER_REGS, CONSUMER_REGS])


@functools.cache
def mma_layout(warps: int, block_n: int):
    """The wgmma accumulator layout of ``warps`` warps (stacked along M, 16 rows each): 16 x block_n x 32
    fp8 instructions."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps, 1], instr_shape=[16, block_n, 32])


@functools.cache  # get_default_for costs ~50 us of host time a call: once per tile
def smem_layouts(block_m: int, block_n: int, split: bool = False):
    """(A tile, B tile, C tile) shared layouts: 128-byte swizzle for the fp8 K-major operand tiles; the C
    tile is per consumer partition (64 rows when SPLIT)."""
    return (gl.NVMMASharedLayout.get_default_for([block_m, BLOCK_K], gl.float8e4nv),
            gl.NVMMASharedLayout.get_default_for([block_n, BLOCK_K], gl.float8e4nv),
            gl.NVMMASharedLayout.get_default_for([64 if split else block_m, block_n], gl.bfloat16))


def max_registers(block_m: int) -> int:
    """The launch's register cap a thread: num_warps consumer warps plus the producer's warpgroup share the
    SM's 64K registers; the producer then gives back all but PRODUCER_REGS, which lifts the consumers to
    232 at 128 rows (12 warps x 168 = 4 x 40 + 8 x 232) and to the 256 maximum at 64 rows."""
    warps = block_m // 16 + 4
    return min(256, (65536 // (32 * warps)) // 8 * 8)


def supports(m: int, n: int, k: int, block_n: int) -> bool:
    """Whether the operands fit this kernel: TMA needs 16-byte row strides (K % 16 for fp8, N % 8 for the
    bf16 output), and a tile must lie in one 128-row weight block (block_n divides 128) or be two of them
    (WIDE_N)."""
    return m > 0 and k % 16 == 0 and n % 8 == 0 and (128 % block_n == 0 or block_n == WIDE_N.value)


def _wave_use(tiles: int, sms: int) -> float:
    """The share of program slots a persistent launch of ``tiles`` equal tiles keeps busy."""
    return tiles / (-(-tiles // sms) * sms)


def tile_for(m: int, n: int, k: int, sms: int) -> tuple[int, int, int, bool, int]:
    """(block_m, block_n, stages, split, group_m) for an (M, N, K) GEMM on a GPU of ``sms`` SMs; the
    launcher runs it persistent, one program per SM. 128 x 256 tiles (three stages) where K >= 4096 and
    they fill the SMs (at least 0.9 of a wave, and 0.8 of the last wave's slots busy); else 128 x 128
    tiles with four stages; where those would fill at most half the SMs, 64-row tiles (twice the programs).
    At 128 x 128, split (one partition per 64-row warpgroup) with GROUP_M 4, except for the long-K, wide
    shapes (K >= 7168 and N >= 4096), where one 8-warp partition with GROUP_M 8 ran faster.

    From ``bench/block_ws_probe.py`` on the H100, 7 shapes x M = 256..8192. The 256-wide tile
    (block_ws_probe_h100_wide256.json, M >= 1024): 0.949 -> 0.984 of cuBLAS blockwise by this rule, up to
    +12% on the long-K shapes; it lost where its tiles leave SMs idle ((2048, 7168) at M = 1024: 64 tiles;
    (6144, 4096) at M = 1024: 192 tiles, 1.45 waves), on K = 2048 and at M = 256. The 128 x 128 choices
    (block_ws_probe_h100_persistent.json): the persistent loop won or tied every row, the split tile 16 of
    the 21 rows at M >= 1024 and the unsplit one the long-K wide ones; at M = 256 the 64-row tile won
    exactly the shapes with at most 64 tiles of 128 rows. GROUP_M 4 against 8 / 16
    (block_ws_probe_h100_groups.json, M >= 1024): 0.938 / 0.915 / 0.924 of cuBLAS blockwise."""
    if -(-m // 128) * -(-n // 128) <= sms // 2:
        return 64, 128, 4, False, 8
    wide = -(-m // 128) * -(-n // WIDE_N.value)
    if k >= 4096 and wide >= 0.9 * sms and _wave_use(wide, sms) >= 0.8:
        return 128, WIDE_N.value, 3, True, 8
    split = not (k >= 7168 and n >= 4096)
    return 128, 128, 4, split, 4 if split else 8


def _variant(block_m: int, block_n: int, split: bool, num_stages: int, group_m: int, has_bias: bool):
    """The kernel a tile runs and its compile-time arguments: (kernel, block_m, block_n of one B tile,
    split, num_warps, constexprs). WIDE_N runs the 256-wide kernel on the split 128 x 128 tile's
    descriptors (two B tiles a K step); ``split`` only applies to 128-row tiles."""
    wide = block_n == WIDE_N.value
    bm, bn, split = (128, 128, True) if wide else (block_m, block_n, split and block_m == 128)
    warps = 4 if split else bm // 16
    consts = dict(HAS_BIAS=has_bias, GROUP_M=group_m, NUM_STAGES=num_stages)
    if wide:
        consts.update(LAYOUT=mma_layout(4, bn))
    else:
        consts.update(SPLIT=split, LAYOUT=mma_layout(warps, bn), UPPER_LAYOUT=mma_layout(4, bn))
    consts["num_warps"] = warps
    return (_block_mm_ws_wide_kernel if wide else _block_mm_ws_kernel), bm, bn, split, warps, consts


def compile_for_hopper(block_m: int, block_n: int, num_stages: int, split: bool, has_bias: bool = False):
    """Compile the kernel for sm_90 without a GPU (Triton's bundled ptxas): the CompiledKernel, whose
    ``asm`` holds the PTX and the cubin. Tests and bench/kernel tools inspect it. block_n = WIDE_N compiles
    the 256-wide kernel (128 rows, split)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    kernel, bm, bn, split, warps, consts = _variant(block_m, block_n, split, num_stages, 8, has_bias)
    la, lb, lc = smem_layouts(bm, bn, split)
    sig = {"a_desc": f"tensordesc<fp8e4nv[{bm}, {BLOCK_K}],{la!r}>",
           "b_desc": f"tensordesc<fp8e4nv[{bn}, {BLOCK_K}],{lb!r}>",
           "c_desc": f"tensordesc<bf16[{64 if split else bm}, {bn}],{lc!r}>",
           "sa_ptr": "*fp32", "sb_ptr": "*fp32", "bias_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
           "stride_sam": "i32", "stride_sak": "i32", "stride_sbn": "i32", "stride_sbk": "i32"}
    consts = {k: gl.constexpr(v) if k in _LAYOUT_CONSTS else v for k, v in consts.items()}
    sig.update({k: "constexpr" for k in consts})
    return triton.compile(GluonASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "maxnreg": max_registers(bm)})


def block_mm_ws(a: torch.Tensor, weight: torch.Tensor, a_scale: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None, block_m: int, block_n: int, num_stages: int, group_m: int = 8,
                out: torch.Tensor | None = None, split: bool = False, programs: int | None = None) -> torch.Tensor:
    """(M, N) bf16 = (a x a_scale) @ (weight x weight_scale).T; block_m 64 or 128 (one consumer warpgroup
    per 64 rows; ``split`` puts the two of a 128-row tile in partitions of their own), block_n <= 128, or
    WIDE_N (128 x 256 tiles, always split, three stages at most); ``programs`` caps the grid (a persistent
    loop over the tiles; None: a program per tile)."""
    m, k = a.shape
    n = weight.shape[0]
    if out is None:
        out = empty((m, n), torch.bfloat16, a.device)
    kernel, bm, bn, split, _, consts = _variant(block_m, block_n, split, num_stages, group_m, bias is not None)
    la, lb, lc = smem_layouts(bm, bn, split)
    descs = (TensorDescriptor.from_tensor(a, [bm, BLOCK_K], la), TensorDescriptor.from_tensor(weight, [bn, BLOCK_K], lb),
             TensorDescriptor.from_tensor(out, [64 if split else bm, bn], lc))
    scalars = (a_scale, weight_scale, bias if bias is not None else out, m, n, k, a_scale.stride(0),
               a_scale.stride(1), weight_scale.stride(0), weight_scale.stride(1))
    tiles = cdiv(m, bm) * cdiv(n, block_n)
    grid = (min(tiles, programs) if programs else tiles,)
    _launch(kernel, grid, descs, scalars, consts, (bm, block_n, split), max_registers(bm))
    return out


_COMPILED: dict = {}
_LAYOUT_CONSTS = ("LAYOUT", "UPPER_LAYOUT")


def _launch(kernel, grid, descs, scalars, consts, tile, maxnreg):
    """``kernel[grid](*descs, *scalars, **consts)``, or, once that specialization has compiled, a direct
    call of the compiled kernel (``common.launch``'s fast path: Triton's per-call binding costs tens of us
    of host time, which eager prefill pays per linear). The descriptors' types follow from ``tile``; the
    scalars key the specialization as in ``common``. QUANTC_FAST_LAUNCH=0 takes Triton's path."""
    rec = getattr(MEMO_STATE, "rec", None)
    if not fast_launch_on():
        kernel[grid](*descs, *scalars, **consts, maxnreg=maxnreg)
        if rec is not None:
            rec.launch(kernel, grid, descs + scalars, dict(consts, maxnreg=maxnreg), None, ())
        return
    key = (id(kernel), tile, scalars[0].device, _args_key(scalars),
           tuple((n_, v) for n_, v in consts.items() if n_ not in _LAYOUT_CONSTS))
    hit = _COMPILED.get(key)
    if hit is None:
        compiled = kernel[grid](*descs, *scalars, **consts, maxnreg=maxnreg)
        nargs = len(descs) + len(scalars)
        _COMPILED[key] = hit = (compiled, tuple(consts[n_] for n_ in kernel.arg_names[nargs:]))
        if rec is not None:
            rec.launch(kernel, grid, descs + scalars, {}, *hit)
        return
    compiled, const_vals = hit
    if rec is not None:
        rec.launch(kernel, grid, descs + scalars, {}, compiled, const_vals)
    compiled.run(grid[0], 1, 1, current_stream(scalars[0].device), compiled.function, compiled.packed_metadata,
                 None, None, None, *descs, *scalars, *const_vals)
