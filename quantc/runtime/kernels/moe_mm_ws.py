"""MoE grouped GEMM for Hopper, warp-specialized by hand (Gluon): ``moe_gemm``'s raw-sum path at 128- or 64-row blocks.

The same contract as ``moe_gemm._moe_gemm`` with RAW sums (bf16 x bf16, fp8 x fp8 or int8 x int8 operands,
per-row / per-tensor activation scales, per-channel weight scales, applied once after the K sum):

    out[pair, n] = act( (sum_k A[pair, k] W[e, n, k]) * sa[pair // A_DIV] * sw[e, n] (+ bias[e, n]) ) (* topw[pair])

but fed by TMA, which cannot gather rows: the activation rows are first copied into expert-sorted order
(``gather_sorted``: row p of the copy is the input row of sorted pair p, for the rows the routing uses), so
each block of the copy is one expert's block of ``align_by_expert``. Then ``rowwise_mm_ws``'s
structure: one producer warp streams the A block and the expert's weight tiles (the gate and the up rows
for a fused activation: two B tiles a K step) through a ring of shared-memory slots, and each 64-row
warpgroup is a consumer partition that chains its wgmmas over K (one step in flight while the next is
issued) and releases each slot when the MMA reading it is done, then scales, applies the activation and
scatters its rows to the pairs' output rows while the producer already loads the next tile. Persistent:
one program per SM walks the live tiles (blocks below ``total``), GROUP_M blocks taking each weight tile
in turn as in the Triton kernel.

Opt-in (``moe_gemm.ws_block_m``, QUANTC_MOE_WS): on the H100 its gate_up beat the table's Triton tile at
4096 tokens by up to 8% on pre-sorted rows (0.99-1.08x for fp8), but the whole expert layer, the copies of the rows included, ran
0.79-0.96x the Triton kernels on the shipped table's tiles at most sizes (bench/results/moe_h100_s13_ws_tables.json,
README "MoE"). The epilogue (a layout change and scattered rows) is not overlapped with the next tile's MMAs.

Gluon kernels cannot run under ``TRITON_INTERPRET``: ``compile_for_hopper`` compiles it offline for sm_90
(tests read its SASS); bench/bench_moe.py checks it against the Triton kernel on the GPU before timing.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .block_mm_ws import PRODUCER_REGS, CONSUMER_REGS, _launch, _tile_offsets, _tma_load, max_registers
from .common import cdiv, launch, sm_count
from .moe_gemm import GPT_OSS_ALPHA, GPT_OSS_LIMIT

BLOCK_MS = (128, 64)  # routing blocks: two 64-row consumer warpgroups, or one (twice the tiles, half the padding)


@functools.cache
def _layouts(block_n: int, bf16: bool, block_m: int = 128):
    """(A tile, B tile) shared layouts (128-byte swizzle: K steps of 128 bytes a row), the wgmma accumulator
    layout of one warpgroup and the store layout (16 bytes of bf16 a thread along N)."""
    el = gl.bfloat16 if bf16 else gl.float8e4nv
    bk = 64 if bf16 else 128
    acc = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, block_n, 16 if bf16 else 32])
    lanes_n = block_n // 8
    store = gl.BlockedLayout([1, 8], [32 // lanes_n, lanes_n], [4, 1], [1, 0])
    return (gl.NVMMASharedLayout.get_default_for([block_m, bk], el),
            gl.NVMMASharedLayout.get_default_for([block_n, bk], el), acc, store)


@gluon.jit
def _live_tiles(total_ptr, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """Tiles of the blocks the routing uses (``total`` rows, a multiple of BLOCK_M) x N tiles."""
    return (gl.load(total_ptr) // BLOCK_M) * gl.cdiv(N, BLOCK_N)


@gluon.jit
def _producer(a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, block_expert_ptr, total_ptr, N, W_ROWS, K,
              ACT: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    BK: gl.constexpr = w_desc.block_type.shape[1]
    nbytes: gl.constexpr = a_desc.block_type.nbytes + (2 if ACT != 0 else 1) * w_desc.block_type.nbytes
    rows = gl.load(total_ptr)
    num_tiles = _live_tiles(total_ptr, N, BLOCK_M, BLOCK_N)
    k_tiles = gl.cdiv(K, BK)
    g = 0  # steps loaded so far by this program: the ring position
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, rows, N, BLOCK_M, BLOCK_N, GROUP_M)
        w_row = gl.load(block_expert_ptr + off_m // BLOCK_M) * W_ROWS + off_n
        for i in range(k_tiles):
            s = g % NUM_STAGES
            # a fresh mbarrier counts as phase 1 complete, so the first lap does not wait
            mbarrier.wait(empty.index(s), ((g // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)
            _tma_load(a_desc, [off_m, i * BK], ready.index(s), a_bufs.index(s))  # zeros past K
            _tma_load(w_desc, [w_row, i * BK], ready.index(s), w_bufs.index(s))
            if ACT != 0:
                _tma_load(w_desc, [w_row + N, i * BK], ready.index(s), u_bufs.index(s))
            g += 1


@gluon.jit
def _epilogue(acc, acc_up, sorted_ids_ptr, sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, e, off_m, off_n, N,
              num_pairs, stride_sam, stride_swe, stride_be, stride_om, A_DIV: gl.constexpr, A_MODE: gl.constexpr,
              B_MODE: gl.constexpr, HAS_BIAS: gl.constexpr, ACT: gl.constexpr, MUL_TOPW: gl.constexpr,
              ALPHA: gl.constexpr, LIMIT: gl.constexpr, ROW0: gl.constexpr, BLOCK_N: gl.constexpr,
              STORE: gl.constexpr):
    """``moe_gemm``'s epilogue for rows ROW0..ROW0+63 of the block at off_m: the raw sums (moved to the
    store layout first) x the activation scale x the weight scale, the bias, the activation, the routing
    weight; scattered to the pairs' rows (padding rows and columns past N not stored)."""
    offs_p = off_m + ROW0 + gl.arange(0, 64, layout=gl.SliceLayout(1, STORE))
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, STORE))
    pairs = gl.load(sorted_ids_ptr + offs_p)
    p_mask = pairs < num_pairs
    n_mask = offs_n < N
    out = gl.convert_layout(acc, STORE).to(gl.float32)
    if ACT != 0:
        up = gl.convert_layout(acc_up, STORE).to(gl.float32)
    if A_MODE == 1:
        sa = gl.load(sa_ptr)
        out = out * sa
        if ACT != 0:
            up = up * sa
    elif A_MODE == 2:
        sa = gl.load(sa_ptr + (pairs // A_DIV).to(gl.int64) * stride_sam, mask=p_mask, other=0.0)[:, None]
        out = out * sa
        if ACT != 0:
            up = up * sa
    sw_e = sw_ptr + e * stride_swe
    b_e = bias_ptr + e * stride_be
    if B_MODE != 0:
        out = out * gl.load(sw_e + offs_n, mask=n_mask, other=0.0)[None, :]
        if ACT != 0:
            up = up * gl.load(sw_e + N + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        out = out + gl.load(b_e + offs_n, mask=n_mask, other=0.0).to(gl.float32)[None, :]
        if ACT != 0:
            up = up + gl.load(b_e + N + offs_n, mask=n_mask, other=0.0).to(gl.float32)[None, :]
    if ACT == 1:
        out = out * (1.0 / (1.0 + gl.exp(-out))) * up
    elif ACT == 2:
        gate = gl.minimum(out, LIMIT)
        up = gl.minimum(gl.maximum(up, -LIMIT), LIMIT)
        out = (up + 1.0) * gate * (1.0 / (1.0 + gl.exp(-(ALPHA * gate))))
    if MUL_TOPW:
        out = out * gl.load(topw_ptr + pairs, mask=p_mask, other=0.0).to(gl.float32)[:, None]
    ptrs = out_ptr + pairs.to(gl.int64)[:, None] * stride_om + offs_n[None, :]
    gl.store(ptrs, out.to(gl.bfloat16), mask=p_mask[:, None] & n_mask[None, :])


@gluon.jit
def _consume(a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr, total_ptr, sa_ptr, sw_ptr,
             bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe, stride_be, stride_om,
             A_DIV: gl.constexpr, A_MODE: gl.constexpr, B_MODE: gl.constexpr, INT8: gl.constexpr,
             HAS_BIAS: gl.constexpr, ACT: gl.constexpr, MUL_TOPW: gl.constexpr, ALPHA: gl.constexpr,
             LIMIT: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, ROW0: gl.constexpr,
             LAYOUT: gl.constexpr, STORE: gl.constexpr):
    """Rows ROW0..ROW0+63 of each of the program's tiles (128 rows: two consumer partitions, 64: one): the K
    loop (gate and up MMAs a step), then the epilogue."""
    BLOCK_M: gl.constexpr = a_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    BK: gl.constexpr = w_bufs.type.shape[2]
    rows = gl.load(total_ptr)
    num_tiles = _live_tiles(total_ptr, N, BLOCK_M, BLOCK_N)
    k_tiles = gl.cdiv(K, BK)
    acc_dtype: gl.constexpr = gl.int32 if INT8 else gl.float32
    base = 0
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile_offsets(t, rows, N, BLOCK_M, BLOCK_N, GROUP_M)
        e = gl.load(block_expert_ptr + off_m // BLOCK_M).to(gl.int64)
        acc = gl.zeros([64, BLOCK_N], acc_dtype, LAYOUT)
        acc_up = gl.zeros([64, BLOCK_N], acc_dtype, LAYOUT)
        for i in range(k_tiles):
            s = (base + i) % NUM_STAGES
            mbarrier.wait(ready.index(s), ((base + i) // NUM_STAGES) & 1)
            a = a_bufs.index(s).slice(ROW0, 64)
            acc = warpgroup_mma(a, w_bufs.index(s).permute((1, 0)), acc, is_async=True)
            if ACT != 0:
                acc_up = warpgroup_mma(a, u_bufs.index(s).permute((1, 0)), acc_up, is_async=True)
                # this step's two MMAs may still run: the previous step's are done, so its slot goes back
                acc, acc_up = warpgroup_mma_wait(num_outstanding=2, deps=(acc, acc_up))
            else:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            if i > 0:
                mbarrier.arrive(empty.index((base + i - 1) % NUM_STAGES), count=1)
        if ACT != 0:
            acc, acc_up = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc_up))
        else:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((base + k_tiles - 1) % NUM_STAGES), count=1)
        base += k_tiles
        _epilogue(acc, acc_up, sorted_ids_ptr, sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, e, off_m, off_n, N,
                  num_pairs, stride_sam, stride_swe, stride_be, stride_om, A_DIV, A_MODE, B_MODE, HAS_BIAS, ACT,
                  MUL_TOPW, ALPHA, LIMIT, ROW0, BLOCK_N, STORE)


@gluon.jit
def _producer_part(a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr, total_ptr,
                   sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe,
                   stride_be, stride_om, A_DIV: gl.constexpr, A_MODE: gl.constexpr, B_MODE: gl.constexpr,
                   INT8: gl.constexpr, HAS_BIAS: gl.constexpr, ACT: gl.constexpr, MUL_TOPW: gl.constexpr,
                   ALPHA: gl.constexpr, LIMIT: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr,
                   LAYOUT: gl.constexpr, STORE: gl.constexpr):
    _producer(a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, block_expert_ptr, total_ptr, N, W_ROWS, K, ACT,
              GROUP_M, NUM_STAGES)


@gluon.jit
def _upper_part(a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr, total_ptr,
                sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe,
                stride_be, stride_om, A_DIV: gl.constexpr, A_MODE: gl.constexpr, B_MODE: gl.constexpr,
                INT8: gl.constexpr, HAS_BIAS: gl.constexpr, ACT: gl.constexpr, MUL_TOPW: gl.constexpr,
                ALPHA: gl.constexpr, LIMIT: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr,
                LAYOUT: gl.constexpr, STORE: gl.constexpr):
    """Rows 64..127 of each block, in a warpgroup of their own."""
    _consume(a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr, total_ptr, sa_ptr, sw_ptr,
             bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe, stride_be, stride_om,
             A_DIV, A_MODE, B_MODE, INT8, HAS_BIAS, ACT, MUL_TOPW, ALPHA, LIMIT, GROUP_M, NUM_STAGES, 64, LAYOUT,
             STORE)


@gluon.jit
def _moe_mm_ws_kernel(a_desc, w_desc, sorted_ids_ptr, block_expert_ptr, total_ptr, sa_ptr, sw_ptr, bias_ptr,
                      topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe, stride_be, stride_om,
                      A_DIV: gl.constexpr, A_MODE: gl.constexpr, B_MODE: gl.constexpr, INT8: gl.constexpr,
                      HAS_BIAS: gl.constexpr, ACT: gl.constexpr, MUL_TOPW: gl.constexpr, ALPHA: gl.constexpr,
                      LIMIT: gl.constexpr, GROUP_M: gl.constexpr, NUM_STAGES: gl.constexpr, LAYOUT: gl.constexpr,
                      STORE: gl.constexpr, num_warps: gl.constexpr):
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_STAGES] + a_desc.block_type.shape, a_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [NUM_STAGES] + w_desc.block_type.shape, w_desc.layout)
    # the up rows' tiles (a fused activation); one slot when unused
    u_bufs = gl.allocate_shared_memory(w_desc.dtype, [NUM_STAGES if ACT != 0 else 1] + w_desc.block_type.shape,
                                       w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    CONSUMERS: gl.constexpr = a_desc.block_type.shape[0] // 64
    for s in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=CONSUMERS)  # one release per consumer warpgroup
    # the partitions take one argument list, written out per partition (see rowwise_mm_ws)
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consume, (a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr, total_ptr, sa_ptr,
                        sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe,
                        stride_be, stride_om, A_DIV, A_MODE, B_MODE, INT8, HAS_BIAS, ACT, MUL_TOPW, ALPHA, LIMIT,
                        GROUP_M, NUM_STAGES, 0, LAYOUT, STORE)),
            (_producer_part, (a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr,
                              total_ptr, sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs,
                              stride_sam, stride_swe, stride_be, stride_om, A_DIV, A_MODE, B_MODE, INT8, HAS_BIAS,
                              ACT, MUL_TOPW, ALPHA, LIMIT, GROUP_M, NUM_STAGES, LAYOUT, STORE)),
            (_upper_part, (a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr,
                           total_ptr, sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam,
                           stride_swe, stride_be, stride_om, A_DIV, A_MODE, B_MODE, INT8, HAS_BIAS, ACT, MUL_TOPW,
                           ALPHA, LIMIT, GROUP_M, NUM_STAGES, LAYOUT, STORE)),
        ], [1, 4], [PRODUCER_REGS, CONSUMER_REGS])
    else:  # 64-row blocks: one consumer warpgroup
        gl.warp_specialize([
            (_consume, (a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr, total_ptr, sa_ptr,
                        sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs, stride_sam, stride_swe,
                        stride_be, stride_om, A_DIV, A_MODE, B_MODE, INT8, HAS_BIAS, ACT, MUL_TOPW, ALPHA, LIMIT,
                        GROUP_M, NUM_STAGES, 0, LAYOUT, STORE)),
            (_producer_part, (a_desc, w_desc, a_bufs, w_bufs, u_bufs, ready, empty, sorted_ids_ptr, block_expert_ptr,
                              total_ptr, sa_ptr, sw_ptr, bias_ptr, topw_ptr, out_ptr, N, W_ROWS, K, num_pairs,
                              stride_sam, stride_swe, stride_be, stride_om, A_DIV, A_MODE, B_MODE, INT8, HAS_BIAS,
                              ACT, MUL_TOPW, ALPHA, LIMIT, GROUP_M, NUM_STAGES, LAYOUT, STORE)),
        ], [1], [PRODUCER_REGS])


# ---- the sorted copy of the activation rows (a Triton kernel: runs under the interpreter) ---------------

@triton.jit
def _gather_kernel(a_ptr, sorted_ids_ptr, total_ptr, out_ptr, K, num_pairs, stride_am, stride_om,
                   A_DIV: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    p0 = tl.program_id(0) * ROWS
    if p0 >= tl.load(total_ptr):
        return
    offs_p = p0 + tl.arange(0, ROWS)
    pairs = tl.load(sorted_ids_ptr + offs_p)
    live = pairs < num_pairs
    src = (tl.where(live, pairs, 0) // A_DIV).to(tl.int64)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = (ks < K)[None, :]
        v = tl.load(a_ptr + src[:, None] * stride_am + ks[None, :], mask=live[:, None] & k_mask, other=0)
        tl.store(out_ptr + offs_p.to(tl.int64)[:, None] * stride_om + ks[None, :], v, mask=k_mask)


def gather_sorted(a: torch.Tensor, sorted_ids: torch.Tensor, total: torch.Tensor, num_pairs: int,
                  a_div: int) -> torch.Tensor:
    """(len(sorted_ids), K) in ``a``'s dtype: row p = a[sorted_ids[p] // a_div] for p < total (zeros for
    padding entries); rows from ``total`` on are left unwritten (no tile reads them). No host sync: the
    programs past ``total`` return at once."""
    length, k = sorted_ids.numel(), a.shape[1]
    out = torch.empty(length, k, device=a.device, dtype=a.dtype)
    bits = torch.uint8 if a.element_size() == 1 else torch.int16  # copied as raw bits
    rows = 16
    launch(_gather_kernel, (cdiv(length, rows),), (a.view(bits), sorted_ids, total, out.view(bits), k, num_pairs,
                                                   a.stride(0), out.stride(0)),
           dict(A_DIV=a_div, ROWS=rows, BLOCK_K=min(512, triton.next_power_of_2(k))), 4, 1)
    return out


# ---- launcher ------------------------------------------------------------------------------------------

def variant(bf16: bool, block_n: int, act: int, num_stages: int, a_mode: int, b_mode: int, int8: bool,
            has_bias: bool, mul_topw: bool, a_div: int, group_m: int) -> dict:
    """The kernel's compile-time arguments (the block's rows come with the A descriptor)."""
    _, _, acc, store = _layouts(block_n, bf16)
    return dict(A_DIV=a_div, A_MODE=a_mode, B_MODE=b_mode, INT8=int8, HAS_BIAS=has_bias, ACT=act, MUL_TOPW=mul_topw,
                ALPHA=GPT_OSS_ALPHA, LIMIT=GPT_OSS_LIMIT, GROUP_M=group_m, NUM_STAGES=num_stages, LAYOUT=acc,
                STORE=store, num_warps=4)


def compile_for_hopper(dtype: str = "fp8e4nv", block_n: int = 128, act: int = 1, num_stages: int = 3,
                       a_mode: int = 2, b_mode: int = 2, has_bias: bool = False, mul_topw: bool = False,
                       block_m: int = 128):
    """Compile for sm_90 without a GPU (Triton's bundled ptxas): the CompiledKernel (tests read its SASS)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    bf16 = dtype == "bf16"
    la, lb, _, _ = _layouts(block_n, bf16, block_m)
    bk = 64 if bf16 else 128
    sig = {"a_desc": f"tensordesc<{dtype}[{block_m}, {bk}],{la!r}>", "w_desc": f"tensordesc<{dtype}[{block_n}, {bk}],{lb!r}>",
           "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "total_ptr": "*i32", "sa_ptr": "*fp32",
           "sw_ptr": "*fp32", "bias_ptr": "*bf16", "topw_ptr": "*fp32", "out_ptr": "*bf16", "N": "i32",
           "W_ROWS": "i32", "K": "i32", "num_pairs": "i32", "stride_sam": "i32", "stride_swe": "i32",
           "stride_be": "i32", "stride_om": "i32"}
    consts = variant(bf16, block_n, act, num_stages, a_mode, b_mode, dtype == "i8", has_bias, mul_topw, 8, 8)
    consts = {k: gl.constexpr(v) if k in ("LAYOUT", "STORE") else v for k, v in consts.items()}
    sig.update({k: "constexpr" for k in consts})
    return triton.compile(GluonASTSource(_moe_mm_ws_kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "maxnreg": max_registers(block_m)})


def moe_mm_ws(a_sorted: torch.Tensor, a_scale: torch.Tensor | None, w: torch.Tensor, w_scale: torch.Tensor | None,
              bias: torch.Tensor | None, topk_weights: torch.Tensor | None, sorted_ids: torch.Tensor,
              block_expert: torch.Tensor, total: torch.Tensor, num_pairs: int, a_div: int, n_out: int, act: int,
              a_mode: int, block_n: int = 128, num_stages: int = 3, group_m: int = 8,
              programs: int | None = None) -> torch.Tensor:
    """(num_pairs, n_out) bf16 from ``a_sorted`` (rows in sorted-pair order, ``gather_sorted``) and expert
    weights ``w`` (E, W_ROWS, K): n_out = W_ROWS / 2 for a fused activation (``act`` 1 silu, 2 gpt-oss),
    else W_ROWS. ``a_mode`` 0 (bf16) / 1 tensor / 2 row scales indexed by pair // a_div; ``w_scale`` (E,
    W_ROWS, 1) fp32 or None (bf16). The routing's blocks (128 or 64 rows, ``BLOCK_MS``) are the tiles' rows.
    ``programs`` caps the persistent grid (default: the SM count)."""
    e, w_rows, k = w.shape
    block_m = sorted_ids.numel() // block_expert.numel()
    if block_m not in BLOCK_MS:
        raise ValueError(f"moe_mm_ws takes routing blocks of {BLOCK_MS} rows, not {block_m}")
    bf16 = a_sorted.dtype == torch.bfloat16
    bk = 64 if bf16 else 128
    out = torch.empty(num_pairs, n_out, device=a_sorted.device, dtype=torch.bfloat16)
    la, lb, _, _ = _layouts(block_n, bf16, block_m)
    descs = (TensorDescriptor.from_tensor(a_sorted, [block_m, bk], la),
             TensorDescriptor.from_tensor(w.view(e * w_rows, k), [block_n, bk], lb))
    dummy = out
    scalars = (sorted_ids, block_expert, total, a_scale if a_scale is not None else dummy,
               w_scale if w_scale is not None else dummy, bias if bias is not None else dummy,
               topk_weights if topk_weights is not None else dummy, out, n_out, w_rows, k, num_pairs,
               a_scale.stride(0) if a_scale is not None else 0, w_scale.stride(0) if w_scale is not None else 0,
               bias.stride(0) if bias is not None else 0, out.stride(0))
    consts = variant(bf16, block_n, act, num_stages, a_mode, 0 if w_scale is None else 2, a_sorted.dtype == torch.int8,
                     bias is not None, topk_weights is not None, a_div, group_m)
    if programs is None:
        programs = sm_count(a_sorted.device)
    tiles = block_expert.numel() * cdiv(n_out, block_n)  # a bound: programs past the live tiles idle
    _launch(_moe_mm_ws_kernel, (min(tiles, programs),), descs, scalars, consts,
            ("moe", str(a_sorted.dtype), block_m, block_n), max_registers(block_m))
    return out
