"""Raw-sum W8A8 GEMM for Hopper, warp-specialized by hand (Gluon): ``out = (A @ B.T) * sa * sb (+ bias)``.

fp8 e4m3 or int8 operands with per-tensor / per-row activation scales and per-tensor / per-channel weight
scales, applied once after the whole K sum (``scaled_mm``'s ``_epilogue``: the same fp32 products in the
same order, so the output is the tiled kernel's). ``block_mm_ws``'s machinery without the per-step
scaling: one producer warp streams A and B tiles through a ring of shared-memory slots (TMA), and each
64-row warpgroup of a 128-row tile is a consumer partition of its own that chains its wgmmas over K
(one in flight while the next is issued), releases each slot when the MMA reading it is done, then
scales, converts and stores its rows (TMA) while the producer already loads the next tile. 64-row tiles
have one consumer partition and twice the programs; ``scaled_mm.rowwise_ws_tile`` picks the tile (64 rows
where 128-row tiles would fill at most half the SMs) and ``bench/rowwise_ws_probe.py`` times them.

Gluon kernels cannot run under ``TRITON_INTERPRET``: ``compile_for_hopper`` compiles it offline for sm_90
(tests read its SASS); ``bench/rowwise_ws_probe.py`` compares it with the tiled kernel on the GPU.
"""

from __future__ import annotations


import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .block_mm_ws import (BLOCK_K, CONSUMER_REGS, PRODUCER_REGS, _launch, _producer, _ring, _tile_offsets, _tma_store,
                          _with_bias, max_registers, mma_layout, smem_layouts)
from .common import cdiv, empty


@gluon.jit
def _scaled_out(acc, sa_ptr, sb_ptr, offs_m, offs_n, M, N, stride_sam, stride_sbn,
                A_MODE: gl.constexpr, B_MODE: gl.constexpr):
    """``scaled_mm._epilogue`` up to the bias: fp32 sum x activation scale x weight scale, in that order."""
    out = acc.to(gl.float32)
    if A_MODE == 1:
        out = out * gl.load(sa_ptr)
    else:
        out = out * gl.load(sa_ptr + offs_m * stride_sam, mask=offs_m < M, other=0.0)[:, None]
    if B_MODE == 1:
        out = out * gl.load(sb_ptr)
    else:
        out = out * gl.load(sb_ptr + offs_n * stride_sbn, mask=offs_n < N, other=0.0)[None, :]
    return out


@gluon.jit
def _consume(a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles, k_tiles,
             stride_sam, stride_sbn, A_MODE: gl.constexpr, B_MODE: gl.constexpr, INT8: gl.constexpr,
             HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, BLOCK_M: gl.constexpr, ROW0: gl.constexpr,
             NUM_STAGES: gl.constexpr, layout: gl.constexpr):
    """Rows ROW0..ROW0+63 of each of the program's BLOCK_M-row tiles (128: two consumer partitions, 64: one)."""
    BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
    c_smem = gl.allocate_shared_memory(gl.bfloat16, [64, BLOCK_N], c_desc.layout)
    base = 0
    for t in range(first_tile, num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = gl.zeros([64, BLOCK_N], gl.int32 if INT8 else gl.float32, layout)
        for i in range(k_tiles):
            s = (base + i) % NUM_STAGES
            mbarrier.wait(ready.index(s), ((base + i) // NUM_STAGES) & 1)
            acc = warpgroup_mma(a_bufs.index(s).slice(ROW0, 64), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
            # at most this step's MMA still running: the previous one is done, so its slot goes back
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            if i > 0:
                mbarrier.arrive(empty.index((base + i - 1) % NUM_STAGES), count=1)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((base + k_tiles - 1) % NUM_STAGES), count=1)
        base += k_tiles
        offs_m = off_m + ROW0 + gl.arange(0, 64, layout=gl.SliceLayout(1, layout))
        offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        out = _scaled_out(acc, sa_ptr, sb_ptr, offs_m, offs_n, M, N, stride_sam, stride_sbn, A_MODE, B_MODE)
        if HAS_BIAS:
            out = _with_bias(out, bias_ptr, off_n, N, BLOCK_N, layout)
        tma.store_wait(pendings=0)  # the previous tile's store has read c_smem
        c_smem.store(out.to(gl.bfloat16))
        fence_async_shared()
        _tma_store(c_desc, [off_m + ROW0, off_n], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _producer_part(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                   num_tiles, k_tiles, stride_sam, stride_sbn, A_MODE: gl.constexpr, B_MODE: gl.constexpr,
                   INT8: gl.constexpr, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr,
                   LAYOUT: gl.constexpr):
    _producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, first_tile, num_tiles, k_tiles, GROUP_M,
              NUM_STAGES)


@gluon.jit
def _upper_part(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile,
                num_tiles, k_tiles, stride_sam, stride_sbn, A_MODE: gl.constexpr, B_MODE: gl.constexpr,
                INT8: gl.constexpr, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr,
                LAYOUT: gl.constexpr):
    """Rows 64..127 of each 128-row tile, in a warpgroup of their own."""
    _consume(a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles, k_tiles,
             stride_sam, stride_sbn, A_MODE, B_MODE, INT8, HAS_BIAS, GROUP_M, 128, 64, NUM_STAGES, LAYOUT)


@gluon.jit
def _rowwise_mm_ws_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K, stride_sam, stride_sbn,
                          A_MODE: gl.constexpr, B_MODE: gl.constexpr, INT8: gl.constexpr, HAS_BIAS: gl.constexpr,
                          GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, LAYOUT: gl.constexpr,
                          num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]  # 128 (two consumer warpgroups) or 64 (one)
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    k_tiles = gl.cdiv(K, 128)  # BLOCK_K: the producer's K step
    a_bufs, b_bufs, ready, empty = _ring(a_desc, b_desc, NUM_STAGES, BLOCK_M // 64)
    # the worker partitions take one argument list (each ignores what it does not need); the two branches
    # repeat it because warp_specialize wants the partitions written out (a tuple of the arguments built
    # once does not compile in triton 3.9's Gluon: its constexpr members, the layout and the format flags,
    # lose their compile-time values)
    if BLOCK_M == 128:
        gl.warp_specialize([
            (_consume, (a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles,
                        k_tiles, stride_sam, stride_sbn, A_MODE, B_MODE, INT8, HAS_BIAS, GROUP_M, BLOCK_M, 0,
                        NUM_STAGES, LAYOUT)),
            (_producer_part, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                              first_tile, num_tiles, k_tiles, stride_sam, stride_sbn, A_MODE, B_MODE, INT8, HAS_BIAS,
                              GROUP_M, NUM_STAGES, LAYOUT)),
            (_upper_part, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                           first_tile, num_tiles, k_tiles, stride_sam, stride_sbn, A_MODE, B_MODE, INT8, HAS_BIAS,
                           GROUP_M, NUM_STAGES, LAYOUT)),
        ], [1, 4], [PRODUCER_REGS, CONSUMER_REGS])
    else:
        # 64-row tiles (twice the programs of 128-row ones where the tiles are few): one consumer warpgroup
        gl.warp_specialize([
            (_consume, (a_bufs, b_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, first_tile, num_tiles,
                        k_tiles, stride_sam, stride_sbn, A_MODE, B_MODE, INT8, HAS_BIAS, GROUP_M, BLOCK_M, 0,
                        NUM_STAGES, LAYOUT)),
            (_producer_part, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, sa_ptr, sb_ptr, bias_ptr, M, N,
                              first_tile, num_tiles, k_tiles, stride_sam, stride_sbn, A_MODE, B_MODE, INT8, HAS_BIAS,
                              GROUP_M, NUM_STAGES, LAYOUT)),
        ], [1], [PRODUCER_REGS])


def compile_for_hopper(block_n: int, num_stages: int, int8: bool = False, a_mode: int = 2, b_mode: int = 2,
                       has_bias: bool = False, block_m: int = 128):
    """Compile for sm_90 without a GPU (Triton's bundled ptxas): the CompiledKernel (tests read its SASS)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    la, lb, lc = smem_layouts(block_m, block_n, True)
    el = "i8" if int8 else "fp8e4nv"
    sig = {"a_desc": f"tensordesc<{el}[{block_m}, {BLOCK_K}],{la!r}>", "b_desc": f"tensordesc<{el}[{block_n}, {BLOCK_K}],{lb!r}>",
           "c_desc": f"tensordesc<bf16[64, {block_n}],{lc!r}>", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
           "bias_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "stride_sam": "i32", "stride_sbn": "i32"}
    consts = {"A_MODE": a_mode, "B_MODE": b_mode, "INT8": int8, "HAS_BIAS": has_bias, "GROUP_M": 8,
              "NUM_STAGES": num_stages, "LAYOUT": gl.constexpr(mma_layout(4, block_n)), "num_warps": 4}
    sig.update({k: "constexpr" for k in consts})
    return triton.compile(GluonASTSource(_rowwise_mm_ws_kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "maxnreg": max_registers(block_m)})


def supports(m: int, n: int, k: int) -> bool:
    """Whether the operands fit this kernel: TMA needs 16-byte row strides (K % 16 for 8-bit operands,
    N % 8 for the bf16 output)."""
    return m > 0 and k % 16 == 0 and n % 8 == 0


def rowwise_mm_ws(a: torch.Tensor, weight: torch.Tensor, a_scale: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None, a_mode: int, b_mode: int, block_n: int, num_stages: int,
                  group_m: int = 8, out: torch.Tensor | None = None, programs: int | None = None,
                  block_m: int = 128) -> torch.Tensor:
    """(M, N) bf16 from 8-bit ``a`` (M, K) and ``weight`` (N, K) (both e4m3 or both int8), scales applied
    after the K sum (a_mode 1 tensor / 2 row, b_mode 1 tensor / 2 channel); block_m x block_n tiles
    (block_m 128 or 64), one partition per 64-row warpgroup; ``programs`` caps the grid (persistent)."""
    m, k = a.shape
    n = weight.shape[0]
    if out is None:
        out = empty((m, n), torch.bfloat16, a.device)
    la, lb, lc = smem_layouts(block_m, block_n, True)
    descs = (TensorDescriptor.from_tensor(a, [block_m, BLOCK_K], la), TensorDescriptor.from_tensor(weight, [block_n, BLOCK_K], lb),
             TensorDescriptor.from_tensor(out, [64, block_n], lc))
    sa2 = a_scale.reshape(-1)
    sb2 = weight_scale.reshape(-1)
    scalars = (sa2, sb2, bias if bias is not None else out, m, n, k, 1, 1)
    consts = dict(A_MODE=a_mode, B_MODE=b_mode, INT8=a.dtype == torch.int8, HAS_BIAS=bias is not None, GROUP_M=group_m,
                  NUM_STAGES=num_stages, LAYOUT=mma_layout(4, block_n), num_warps=4)
    tiles = cdiv(m, block_m) * cdiv(n, block_n)
    grid = (min(tiles, programs) if programs else tiles,)
    _launch(_rowwise_mm_ws_kernel, grid, descs, scalars, consts, ("rowwise", block_m, block_n), max_registers(block_m))
    return out
