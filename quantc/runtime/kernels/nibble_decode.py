"""4-bit codes -> bf16 values for the tensor-core weight-only GEMMs.

``decode_words(w)`` (the dense kernel, ``wo_mma4``) takes an int32 tile of packed codes (nibble j of a
word = element 8p + j) and returns the bf16 values in K order, eight per word, two consecutive ones per
bf16x2 register. ``decode_pairs(b)`` (the MoE kernel) takes a uint8 tile of packed weights (element
2i in the low nibble of byte i, 2i+1 in the high one, the checkpoint's own layout) and returns
``(lo, hi)``, two bf16 tiles of the same shape holding the values of the low and the high nibbles:

=====  ==========================================================
FMT    value of code c
=====  ==========================================================
INT4   symmetric: c as two's complement (-8..7); with zero points: c (0..15), the zero is subtracted
       by the caller
E2M1   mxfp4 / nvfp4 element: sign, 2 exponent bits (bias 1), 1 mantissa bit
=====  ==========================================================

Every value is exact in bf16, so the GEMM multiplies exact operands. On the GPU the decode is PTX on
bf16x2 registers (Marlin's trick): ``prmt`` moves two bytes into the two 16-bit lanes of a register,
``lop3`` ORs a nibble into the mantissa of the bf16 128.0 (0x4300; its mantissa ulp is 1), one bf16x2
FMA removes the 128 (and the +8 bias of two's complement). e2m1's three exponent-mantissa bits are
shifted under the bf16 exponent field and rescaled by 2**126 with one bf16x2 multiply (this also turns
the e2m1 subnormal 0.5 into a bf16 subnormal times 2**126, exactly). About 1.5 (int4) / 2.5 (e2m1)
instructions per element against ~5 for scalar shift, mask, convert.

The interpreter cannot run PTX: with ``USE_ASM = False`` the same values come from plain Triton
integer and float ops (the kernels' CPU tests); tests/runtime/test_nibble_ptx.py runs the PTX itself
through an emulator of its instructions over every byte value, and bench/bench_wo.py checks the GPU
outputs against the reference before timing.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

USE_ASM = os.environ.get("TRITON_INTERPRET") != "1"
INT4, E2M1 = 1, 2

# Register-local temporaries inside one asm block; outputs $0,$1 (lo pairs), $2,$3 (hi pairs), input $4.
_INT4_ASM = """
{{
.reg .b32 w, a, b, c, one, off;
mov.b32 one, 0x3F803F80;
mov.b32 off, {off};
{xor}
mov.b32 c, 0;
prmt.b32 a, w, c, 0x4140;
prmt.b32 b, w, c, 0x4342;
lop3.b32 $0, a, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $1, b, 0x000F000F, 0x43004300, 0xEA;
shr.b32 a, a, 4;
shr.b32 b, b, 4;
lop3.b32 $2, a, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $3, b, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 $0, $0, one, off;
fma.rn.bf16x2 $1, $1, one, off;
fma.rn.bf16x2 $2, $2, one, off;
fma.rn.bf16x2 $3, $3, one, off;
}}
"""
# symmetric: c ^ 8 = q + 8, so 128 + (q + 8) - 136 = q; with zero points the code itself: 128 + c - 128
INT4_SYM_ASM = tl.constexpr(_INT4_ASM.format(off="0xC308C308", xor="xor.b32 w, $4, 0x88888888;"))
INT4_CODE_ASM = tl.constexpr(_INT4_ASM.format(off="0xC300C300", xor="mov.b32 w, $4;"))

# e2m1 in a 16-bit lane: low nibble bits 0-2 -> bf16 bits 6-8 (shift 6), sign bit 3 -> 15 (shift 12);
# high nibble bits 4-6 -> 6-8 (shift 2), sign bit 7 -> 15 (shift 8). Then x 2**126 (bf16 0x7E80).
_E2M1_SHIFTED = """
shl.b32 t, {src}, {em};
shl.b32 s, {src}, {sign};
and.b32 s, s, 0x80008000;
lop3.b32 {dst}, t, 0x01C001C0, s, 0xEA;"""
E2M1_ASM = tl.constexpr("""
{
.reg .b32 w, a, b, c, t, s, big, nz;
mov.b32 big, 0x7E807E80;
mov.b32 nz, 0x80008000;
mov.b32 w, $4;
mov.b32 c, 0;
prmt.b32 a, w, c, 0x4140;
prmt.b32 b, w, c, 0x4342;""" + "".join(
    _E2M1_SHIFTED.format(dst=dst, src=src, em=em, sign=sign)
    for dst, src, em, sign in (("$0", "a", 6, 12), ("$1", "b", 6, 12), ("$2", "a", 2, 8), ("$3", "b", 2, 8))) + """
fma.rn.bf16x2 $0, $0, big, nz;
fma.rn.bf16x2 $1, $1, big, nz;
fma.rn.bf16x2 $2, $2, big, nz;
fma.rn.bf16x2 $3, $3, big, nz;
}
""")



@triton.jit
def e2m1_to_f32(c):
    """e2m1 codes (int32, 0..15) -> fp32, from the bits (exponent bias 1 -> 127; 0.5 and 0 by select)."""
    mag = c & 7
    bits = tl.where(mag >= 2, (mag << 22) + (126 << 23), (mag & 1) * (126 << 23))
    return (bits | ((c & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def _int4_f32(c, SIGNED: tl.constexpr):
    if SIGNED:
        return ((c ^ 8) - 8).to(tl.float32)
    return c.to(tl.float32)


@triton.jit
def _nibble_value(c, FMT: tl.constexpr, SIGNED: tl.constexpr):
    """The plain-Triton value of 4-bit codes c (int32, 0..15) as bf16: what the PTX computes."""
    if FMT == 1:
        v = _int4_f32(c, SIGNED)
    else:
        v = e2m1_to_f32(c)
    return v.to(tl.bfloat16)


@triton.jit
def decode_pairs(b, FMT: tl.constexpr, SIGNED: tl.constexpr, ASM: tl.constexpr):
    """uint8 tile -> (low-nibble values, high-nibble values), bf16, exact. See the module docstring."""
    if ASM:
        if FMT == 1:
            if SIGNED:
                lo, hi = tl.inline_asm_elementwise(
                    INT4_SYM_ASM, "=r,=r,=r,=r,r", [b], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
            else:
                lo, hi = tl.inline_asm_elementwise(
                    INT4_CODE_ASM, "=r,=r,=r,=r,r", [b], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(
                E2M1_ASM, "=r,=r,=r,=r,r", [b], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        c = b.to(tl.int32)
        lo = _nibble_value(c & 15, FMT, SIGNED)
        hi = _nibble_value(c >> 4, FMT, SIGNED)
    return lo, hi


# One int32 word = eight codes k..k+7 (nibble j = element k+j). b = w >> 4 puts each byte's high nibble
# in the low nibble of the same byte; prmt pairs byte i of w (element 2i) with byte i of b (element
# 2i+1) in the two 16-bit lanes, so each bf16x2 register holds two consecutive elements: the order the
# MMA operand wants (8 consecutive k per thread), no shuffles after the decode.
_WORD_INT4 = """
{{
.reg .b32 a, b, r0, r1, r2, r3, one, off;
mov.b32 one, 0x3F803F80;
mov.b32 off, {off};
{xor}
shr.b32 b, a, 4;
prmt.b32 r0, a, b, 0x4400;
prmt.b32 r1, a, b, 0x5511;
prmt.b32 r2, a, b, 0x6622;
prmt.b32 r3, a, b, 0x7733;
lop3.b32 r0, r0, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 r1, r1, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 r2, r2, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 r3, r3, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 r0, r0, one, off;
fma.rn.bf16x2 r1, r1, one, off;
fma.rn.bf16x2 r2, r2, one, off;
fma.rn.bf16x2 r3, r3, one, off;
mov.b32 {{$0, $1}}, r0;
mov.b32 {{$2, $3}}, r1;
mov.b32 {{$4, $5}}, r2;
mov.b32 {{$6, $7}}, r3;
}}
"""
WORD_INT4_SYM_ASM = tl.constexpr(_WORD_INT4.format(off="0xC308C308", xor="xor.b32 a, $8, 0x88888888;"))
WORD_INT4_CODE_ASM = tl.constexpr(_WORD_INT4.format(off="0xC300C300", xor="mov.b32 a, $8;"))

WORD_E2M1_ASM = tl.constexpr("""
{
.reg .b32 a, b, r0, r1, r2, r3, t, s, big, nz;
mov.b32 big, 0x7E807E80;
mov.b32 nz, 0x80008000;
mov.b32 a, $8;
shr.b32 b, a, 4;
prmt.b32 r0, a, b, 0x4400;
prmt.b32 r1, a, b, 0x5511;
prmt.b32 r2, a, b, 0x6622;
prmt.b32 r3, a, b, 0x7733;""" + "".join(
    _E2M1_SHIFTED.format(dst=f"r{i}", src=f"r{i}", em=6, sign=12) + f"\nfma.rn.bf16x2 r{i}, r{i}, big, nz;"
    for i in range(4)) + """
mov.b32 {$0, $1}, r0;
mov.b32 {$2, $3}, r1;
mov.b32 {$4, $5}, r2;
mov.b32 {$6, $7}, r3;
}
""")


@triton.jit
def _interleave8(v0, v1, v2, v3, v4, v5, v6, v7):
    """Eight (R, C) tiles -> (R, 8C) with column 8c + j from v_j (joins put the new axis last)."""
    even = tl.join(tl.join(v0, v4), tl.join(v2, v6))
    odd = tl.join(tl.join(v1, v5), tl.join(v3, v7))
    return tl.reshape(tl.join(even, odd), (v0.shape[0], v0.shape[1] * 8))


@triton.jit
def decode_words(w, FMT: tl.constexpr, SIGNED: tl.constexpr, ASM: tl.constexpr):
    """int32 tile (R, C) of packed codes -> bf16 (R, 8C) values in K order (column 8c + j = nibble j of
    word c), exact."""
    if ASM:
        if FMT == 1:
            if SIGNED:
                v = tl.inline_asm_elementwise(WORD_INT4_SYM_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [w],
                                              dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
            else:
                v = tl.inline_asm_elementwise(WORD_INT4_CODE_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [w],
                                              dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
        else:
            v = tl.inline_asm_elementwise(WORD_E2M1_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [w],
                                              dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
        return _interleave8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])
    else:
        return _interleave8(_nibble_value(w & 15, FMT, SIGNED), _nibble_value((w >> 4) & 15, FMT, SIGNED),
                            _nibble_value((w >> 8) & 15, FMT, SIGNED), _nibble_value((w >> 12) & 15, FMT, SIGNED),
                            _nibble_value((w >> 16) & 15, FMT, SIGNED), _nibble_value((w >> 20) & 15, FMT, SIGNED),
                            _nibble_value((w >> 24) & 15, FMT, SIGNED), _nibble_value((w >> 28) & 15, FMT, SIGNED))
