"""Compile-only probe for the M = 16 floor of issue 12: 4-bit weights fed to the tensor cores straight from registers.

The plane kernel (``wo_planes``) pays ~3 instructions an int4 element at M = 16 because Triton chooses the MMA
operand layout and the decoded tile must be shuffled into it. Marlin's answer is to repack the weights at load time
so that each lane's 32-bit word holds exactly the eight nibbles of its m16n8k16 A fragment (rows g and g + 8,
K columns 2t, 2t + 1 and 2t + 8, 2t + 9 of a 16 x 16 tile; lane = 4g + t). One PTX block then decodes the word into
the four bf16x2 registers the MMA reads, with the group scale folded into one bf16x2 FMA a register.

This prototype shows that Gluon can express it:
- a lane's word is decoded into (rows, k) values by ``inline_asm_elementwise``;
- ``join`` / ``reshape`` / ``permute`` put each value at the (row, k) coordinate the fragment assigns it;
- ``convert_layout`` to ``DotOperandLayout(0, mma v2, k_width=2)`` is then the identity, because the two
  layouts map every (warp, lane, register) to the same element;
- ``mma_v2`` consumes the result.

Triton 3.6 (the GPU image's) and 3.9 compile it for sm_90 with no shared memory, no shuffles and no local
memory: 8 MMAs and 16 ``lop3`` per 64-deep K step of 16 weight rows a warp. Each lane makes one 16-byte load of
its four words a step.

Not done yet (a kernel, not a probe):
- the scales of rows g + 8 (this prototype applies row g's to all four registers);
- the activation fragments as wide loads, or from shared memory by ``ldmatrix``;
- split-K, and the repacking in ``wo_format``;
- a GPU run against the reference.

    PYTHONPATH=<triton 3.6> python bench/mma_fragment_probe.py
"""

from __future__ import annotations

import os
import re

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile for real

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import mma_v2  # noqa: E402

# int4 symmetric codes -> bf16 q * s for the nibble pairs (0,4) (1,5) (2,6) (3,7) of a word: lop3 puts 128 + (c ^ 8)
# (bf16 magic 0x4300 = 128), one bf16x2 FMA gives (t - 136) * s = q * s with c1 = -136 * s
DECODE = gl.constexpr("""{
.reg .b32 w4, w8, w12;
shr.b32 w4, $4, 4;
shr.b32 w8, $4, 8;
shr.b32 w12, $4, 12;
lop3.b32 $0, $4, 0x000F000F, 0x43084308, 0x6A;
lop3.b32 $1, w4, 0x000F000F, 0x43084308, 0x6A;
lop3.b32 $2, w8, 0x000F000F, 0x43084308, 0x6A;
lop3.b32 $3, w12, 0x000F000F, 0x43084308, 0x6A;
fma.rn.bf16x2 $0, $0, $5, $6;
fma.rn.bf16x2 $1, $1, $5, $6;
fma.rn.bf16x2 $2, $2, $5, $6;
fma.rn.bf16x2 $3, $3, $5, $6;
}""")


@gluon.jit
def _halves(v):
    lo = (v & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = ((v >> 16) & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def _a_tile(word, s2, c2, WARPS: gl.constexpr):
    r0, r1, r2, r3 = gl.inline_asm_elementwise(DECODE, "=r,=r,=r,=r,r,r,r", [word, s2, c2],
                                               dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)
    e = gl.join(gl.join(_halves(r0), _halves(r2)), gl.join(_halves(r1), _halves(r3)))  # (W, 32, h, kh, rh)
    e = gl.reshape(e, [WARPS, 8, 4, 2, 2, 2])
    e = gl.permute(e, [0, 5, 1, 4, 2, 3])
    return gl.reshape(e, [WARPS * 16, 16])


@gluon.jit
def kernel(w_ptr, s_ptr, x_ptr, out_ptr, N, K, WARPS: gl.constexpr, TOK: gl.constexpr):
    """(WARPS * 16) weight rows x TOK tokens; a lane's 16-byte load holds its A fragments of 4 k16 tiles."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_L: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    WL: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 32, 1], [WARPS, 1, 1], [2, 1, 0])
    W2: gl.constexpr = gl.SliceLayout(2, WL)
    pid = gl.program_id(0)
    wi = gl.arange(0, WARPS, layout=gl.SliceLayout(1, W2))
    li = gl.arange(0, 32, layout=gl.SliceLayout(0, W2))
    vi = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, WL)))
    # repacked words: [row tile][k64 step][lane][4 words]
    tile = pid * WARPS + wi
    base = (gl.expand_dims(gl.expand_dims(tile, 1), 2) * (K // 64) * 128 + gl.expand_dims(gl.expand_dims(li, 0), 2) * 4
            + gl.expand_dims(gl.expand_dims(vi, 0), 1))
    # the lane's rows' scales: row g and g + 8 of its warp's 16 (one per group of 128 = 2 steps)
    srow = gl.expand_dims(tile, 1) * 16 + gl.expand_dims(li // 4, 0)  # (W, 32) in W2
    BKL: gl.constexpr = gl.SliceLayout(1, B_L)
    BNL: gl.constexpr = gl.SliceLayout(0, B_L)
    kk = gl.arange(0, 16, layout=BKL)
    nn = gl.arange(0, TOK, layout=BNL)
    acc = gl.zeros([WARPS * 16, TOK], gl.float32, MMA)
    for t in range(0, K // 64):
        words = gl.load(w_ptr + base + t * 128)  # (W, 32, 4)
        g = (t * 64) // 128
        s_lo = gl.load(s_ptr + srow * (K // 128) + g)  # bf16 scale of row g (the low halves)
        s_hi = gl.load(s_ptr + (srow + 8) * (K // 128) + g)
        # half2 of (s, s) for rows g / g + 8 would differ per register: rows g use s_lo, rows g + 8 s_hi; this
        # prototype applies s_lo to all four (timing only)
        s2 = (s_lo.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF) * 0x10001
        c2 = ((-136.0 * s_lo.to(gl.float32)).to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF) * 0x10001
        ev, od = gl.split(gl.reshape(words, [WARPS, 32, 2, 2]))  # v = 2 v1 + v0: v0 = 0 / 1
        w0, w2 = gl.split(ev)
        w1, w3 = gl.split(od)
        for j in gl.static_range(4):
            word = w0 if j == 0 else (w1 if j == 1 else (w2 if j == 2 else w3))
            a = gl.convert_layout(_a_tile(gl.convert_layout(word, W2), s2, c2, WARPS), A_L)
            b = gl.load(x_ptr + gl.expand_dims(nn, 0) * K + t * 64 + j * 16 + gl.expand_dims(kk, 1))
            acc = mma_v2(a, b, acc)
    OM: gl.constexpr = gl.SliceLayout(1, MMA)
    ON: gl.constexpr = gl.SliceLayout(0, MMA)
    om = pid * WARPS * 16 + gl.arange(0, WARPS * 16, layout=OM)
    on = gl.arange(0, TOK, layout=ON)
    gl.store(out_ptr + gl.expand_dims(on, 0) * N + gl.expand_dims(om, 1), acc.to(gl.bfloat16))




def compile_counts(warps: int = 4, tokens: int = 16) -> dict:
    """The prototype compiled for sm_90: shared memory, and PTX instruction counts of the kinds that matter."""
    sig = {"w_ptr": "*i32", "s_ptr": "*bf16", "x_ptr": "*bf16", "out_ptr": "*bf16", "N": "i32", "K": "i32",
           "WARPS": "constexpr", "TOK": "constexpr"}
    c = triton.compile(GluonASTSource(kernel, sig, {"WARPS": warps, "TOK": tokens}), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps})
    ptx = c.asm["ptx"]
    counts = {name: len(re.findall(pattern, ptx)) for name, pattern in (
        ("st_shared", r"st\.shared"), ("ld_shared", r"ld\.shared"), ("mma", r"mma\.sync"), ("lop3", r"lop3"),
        ("shfl", r"shfl"), ("local", r"\.local"), ("ld_global", r"ld\.global"))}
    return {"shared_bytes": c.metadata.shared, **counts}


if __name__ == "__main__":
    print(compile_counts())
