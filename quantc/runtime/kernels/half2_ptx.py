"""The half2 PTX of the 4-bit GEMVs (``wo_gemv``, ``wo_frag_gemv``): decode a 32-bit word of eight 4-bit codes
into four half2 registers, multiply them by half2 activation packs, and their plain-Triton stand-ins for the
interpreter.

int4 (symmetric, or codes with zero points): ``lop3`` (w & mask) ^ magic gives the fp16 1024 + c for the nibble
pair (j, j + 4) of a word (bits 4j and 16 + 4j; one shift by 8 reaches j = 2, 3); for the odd j the nibble sits 4
bits up and the value is 1024 + 16c. The symmetric codes' sign flip (c ^ 8 = q + 8) is in the magic. One half2
subtraction (1024 + 8, or 1024 + z) or FMA (x 1/16, minus 64 + 8 or 64 + z) leaves the exact q (or c - z): 4-bit
integers are exact in fp16. e2m1 (mxfp4, nvfp4): the value times 2**-14, see E2M1_PRMT_BODY. Four half2 FMAs with
the activation packed as (x[8c + j], x[8c + j + 4]) sum the word's 8 products, then the two halves add in fp32.

The word dot comes fused (WORD_DOT_*: one row) or as two blocks (DECODE_* then DOT_HALF2: a word decoded once for
several rows); both are built from the same bodies (``subst``). tests/runtime/test_wo_gemv.py runs them
instruction by instruction (a small PTX interpreter and numpy half2 arithmetic).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# $0 fp32 out, $1 the word, $2..$5 x packs (x[8c + j], x[8c + j + 4]) for j = 0..3 (lo, hi halves). Built from two
# bodies: the decode (word W -> half2 t0..t3) and the dot (t0..t3 x packs -> fp32 OUT); the several-row kernel runs
# them as two asm blocks (DECODE_*, DOT_HALF2) so that a word decodes once for all its activation rows.
_REGS = """.reg .b32 w8, t0, t1, t2, t3, acc, c0, c1, s16, u, v, z;
.reg .b16 lo, hi;
.reg .f32 flo, fhi;
"""
_DECODE_INT4 = """mov.b32 s16, 0x2C002C00;
shr.b32 w8, W, 8;
lop3.b32 t0, W, 0x000F000F, MAGIC_LO, 0x6A;
lop3.b32 t1, W, 0x00F000F0, MAGIC_HI, 0x6A;
lop3.b32 t2, w8, 0x000F000F, MAGIC_LO, 0x6A;
lop3.b32 t3, w8, 0x00F000F0, MAGIC_HI, 0x6A;
sub.f16x2 t0, t0, c0;
fma.rn.f16x2 t1, t1, s16, c1;
sub.f16x2 t2, t2, c0;
fma.rn.f16x2 t3, t3, s16, c1;
"""
# e2m1 (mxfp4): for the nibble pair (j, j + 4) the three value bits go to bits 9-11 of each half and the sign to
# bit 15: the fp16 v * 2**-14, exactly (0.5 is an fp16 subnormal); the 2**14 goes into the chunk's scale, and the
# activation is scaled to [2**13, 2**14) so the products stay normal. All eight nibbles at once, a byte each:
# u takes the low nibbles (0, 2, 4, 6), value bits up 1 and sign up 4; v the high ones (1, 3, 5, 7), value bits
# down 3, the sign where it is; a prmt then places two of those bytes as the high bytes of a half2 (zero low
# bytes). 11 instructions a word where shifting each pair into place took 15 (E2M1_SHIFTS_BODY).
E2M1_PRMT_BODY = """and.b32 u, W, 0x07070707;
shl.b32 u, u, 1;
shl.b32 v, W, 4;
lop3.b32 u, u, v, 0x80808080, 0xF8;
and.b32 v, W, 0x70707070;
shr.b32 v, v, 3;
lop3.b32 v, v, W, 0x80808080, 0xF8;
mov.b32 z, 0;
prmt.b32 t0, u, z, 0x2404;
prmt.b32 t1, v, z, 0x2404;
prmt.b32 t2, u, z, 0x3414;
prmt.b32 t3, v, z, 0x3414;
"""
E2M1_SHIFTS_BODY = "".join(f"""shl.b32 u, W, {9 - 4 * j};
shl.b32 v, W, {12 - 4 * j};
and.b32 v, v, 0x80008000;
lop3.b32 t{j}, u, 0x0E000E00, v, 0xEA;
""" for j in range(3)) + """shr.b32 u, W, 3;
and.b32 v, W, 0x80008000;
lop3.b32 t3, u, 0x0E000E00, v, 0xEA;
"""
_DOT = """mul.rn.f16x2 acc, t0, P0;
fma.rn.f16x2 acc, t1, P1, acc;
fma.rn.f16x2 acc, t2, P2, acc;
fma.rn.f16x2 acc, t3, P3, acc;
mov.b32 {lo, hi}, acc;
cvt.f32.f16 flo, lo;
cvt.f32.f16 fhi, hi;
add.f32 OUT, flo, fhi;
"""
# symmetric codes: the magic flips bit 3 of each nibble (c ^ 8 = q + 8); c0 = 1024 + 8, c1 = -(64 + 8)
_SYM = ("mov.b32 c0, 0x64086408;\nmov.b32 c1, 0xD480D480;\n", "0x64086408", "0x64806480")


def subst(body: str, **names: str) -> str:
    for name, value in names.items():
        body = body.replace(name, value)
    return body


def _int4_decode(consts: tuple[str, str, str], word: str) -> str:
    return consts[0] + subst(_DECODE_INT4, W=word, MAGIC_LO=consts[1], MAGIC_HI=consts[2])


def _word_dot_asm(decode: str) -> str:
    return "{\n" + _REGS + decode + subst(_DOT, P0="$2", P1="$3", P2="$4", P3="$5", OUT="$0") + "}"


def _decode_asm(decode: str) -> str:
    """$0..$3 the word's four half2 values (t0..t3) of word $4 (zero points: c0 $5, c1 $6)."""
    return "{\n" + _REGS + decode + "".join(f"mov.b32 ${j}, t{j};\n" for j in range(4)) + "}"


WORD_DOT_SYM = tl.constexpr(_word_dot_asm(_int4_decode(_SYM, "$1")))
# codes with zero points: c0 = 1024 + z ($6) and c1 = -(64 + z) ($7), half2 bits made per chunk
WORD_DOT_ZERO = tl.constexpr(_word_dot_asm(_int4_decode(("mov.b32 c0, $6;\nmov.b32 c1, $7;\n", "0x64006400",
                                                          "0x64006400"), "$1")))
# e2m1: the 11-instruction decode (``e2m1_prmt``, the default: bench/results/wo_h100_s21_fp4_prmt.json, 4% faster
# at M = 1 than the 15-instruction one at every shape) and the 15-instruction one (QUANTC_E2M1_DECODE=shifts); the
# kernels pick one through a constexpr, so each has its own binary
WORD_DOT_E2M1 = tl.constexpr(_word_dot_asm(subst(E2M1_SHIFTS_BODY, W="$1")))
WORD_DOT_E2M1_PRMT = tl.constexpr(_word_dot_asm(subst(E2M1_PRMT_BODY, W="$1")))
DECODE_SYM = tl.constexpr(_decode_asm(_int4_decode(_SYM, "$4")))
DECODE_ZERO = tl.constexpr(_decode_asm(_int4_decode(("mov.b32 c0, $5;\nmov.b32 c1, $6;\n", "0x64006400",
                                                     "0x64006400"), "$4")))
DECODE_E2M1 = tl.constexpr(_decode_asm(subst(E2M1_SHIFTS_BODY, W="$4")))
DECODE_E2M1_PRMT = tl.constexpr(_decode_asm(subst(E2M1_PRMT_BODY, W="$4")))


def _chain_dot_asm(decode: str, words: int, consts: str = "") -> str:
    """``words`` words' dots chained in one half2 accumulator, one fp32 conversion at the end: $0 fp32 out, words
    $1..$words, then each word's four packs in turn; ``decode``'s W, MAGIC_* filled per word (``consts`` once, before
    the first). With the activation scaled as the kernels scale it (max |x r| < 2**(X_EXP + 1)) a half sums
    4 * words products of |v| <= 15 (int4; e2m1's values are times 2**-14): at most 16 * 15 * 256 = 61440 < 65504
    for a chunk's four words, so nothing overflows; the fp16 sum rounds each step (relative 2**-11)."""
    body = consts
    for i in range(words):
        packs = [f"${1 + words + 4 * i + j}" for j in range(4)]
        body += subst(decode, W=f"${1 + i}")
        first = "mul.rn.f16x2 acc, t0, P0;\n" if i == 0 else "fma.rn.f16x2 acc, t0, P0, acc;\n"
        body += subst(first + "fma.rn.f16x2 acc, t1, P1, acc;\nfma.rn.f16x2 acc, t2, P2, acc;\n"
                      "fma.rn.f16x2 acc, t3, P3, acc;\n", P0=packs[0], P1=packs[1], P2=packs[2], P3=packs[3])
    return ("{\n" + _REGS + body + "mov.b32 {lo, hi}, acc;\ncvt.f32.f16 flo, lo;\ncvt.f32.f16 fhi, hi;\n"
            "add.f32 $0, flo, fhi;\n}")


def _chain_int4(words: int, zero: bool) -> str:
    c = (f"mov.b32 c0, ${1 + 5 * words};\nmov.b32 c1, ${2 + 5 * words};\n", "0x64006400", "0x64006400") if zero \
        else _SYM
    return _chain_dot_asm(subst(_DECODE_INT4, MAGIC_LO=c[1], MAGIC_HI=c[2]), words, c[0])


# a chunk's four words in one chain (int4, mxfp4), or two (nvfp4: a scale per two words)
CHUNK_DOT_SYM = tl.constexpr(_chain_int4(4, False))
CHUNK_DOT_ZERO = tl.constexpr(_chain_int4(4, True))  # c0 $21, c1 $22
CHUNK_DOT_E2M1 = tl.constexpr(_chain_dot_asm(E2M1_SHIFTS_BODY, 4))
CHUNK_DOT_E2M1_PRMT = tl.constexpr(_chain_dot_asm(E2M1_PRMT_BODY, 4))
PAIR_DOT_E2M1 = tl.constexpr(_chain_dot_asm(E2M1_SHIFTS_BODY, 2))
PAIR_DOT_E2M1_PRMT = tl.constexpr(_chain_dot_asm(E2M1_PRMT_BODY, 2))


def e2m1_prmt() -> bool:
    """The launchers' choice of the e2m1 decode, read at each launch (a constexpr): the prmt one unless
    QUANTC_E2M1_DECODE=shifts."""
    return os.environ.get("QUANTC_E2M1_DECODE") != "shifts"
# $0 fp32 out: the decoded half2 values $1..$4 times the packs $5..$8
DOT_HALF2 = tl.constexpr("{\n" + _REGS + "".join(f"mov.b32 t{j}, ${j + 1};\n" for j in range(4))
                         + subst(_DOT, P0="$5", P1="$6", P2="$7", P3="$8", OUT="$0") + "}")
PACK_HALF2 = tl.constexpr("cvt.rn.f16x2.f32 $0, $2, $1;")  # $1 -> low half, $2 -> high half
# the activation's per-chunk power of two puts max |x r| in [2**X_EXP, 2**(X_EXP + 1)): int4 (|q| <= 15, four
# products a half) and e2m1 (values times 2**-14)
X_EXP_INT4, X_EXP_E2M1 = tl.constexpr(7), tl.constexpr(13)
E2M1_UNSCALE = tl.constexpr(16384.0)  # 2**14


@triton.jit
def pack_half2(lo, hi):
    """int32 bits of the half2 (lo, hi), each rounded to fp16 (``PACK_HALF2`` in plain Triton)."""
    lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo16 | (hi16 << 16)


@triton.jit
def half_of(bits, HIGH: tl.constexpr):
    """fp32 value of the low or high fp16 half of int32 ``bits`` (the interpreter's path)."""
    h = (bits >> 16) & 0xFFFF if HIGH else bits & 0xFFFF
    return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@gluon.jit
def gl_word_dot(words, p0, p1, p2, p3, c0, c1, HAS_ZERO: gl.constexpr, FMT: gl.constexpr, PRMT: gl.constexpr = False):
    if FMT >= 2 and PRMT:
        return gl.inline_asm_elementwise(WORD_DOT_E2M1_PRMT, "=r,r,r,r,r,r", [words, p0, p1, p2, p3],
                                         dtype=gl.float32, is_pure=True, pack=1)
    if FMT >= 2:
        return gl.inline_asm_elementwise(WORD_DOT_E2M1, "=r,r,r,r,r,r", [words, p0, p1, p2, p3], dtype=gl.float32,
                                         is_pure=True, pack=1)
    if HAS_ZERO:
        return gl.inline_asm_elementwise(WORD_DOT_ZERO, "=r,r,r,r,r,r,r,r", [words, p0, p1, p2, p3, c0, c1],
                                         dtype=gl.float32, is_pure=True, pack=1)
    return gl.inline_asm_elementwise(WORD_DOT_SYM, "=r,r,r,r,r,r", [words, p0, p1, p2, p3], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def gl_pack(lo, hi):
    return gl.inline_asm_elementwise(PACK_HALF2, "=r,r,r", [lo, hi], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def gl_bf16_pair(v):
    """The two bf16 values in the low and high halves of an int32, as fp32 (a bf16 is an fp32's top half)."""
    return (v << 16).to(gl.float32, bitcast=True), (v & -65536).to(gl.float32, bitcast=True)


@gluon.jit
def gl_decode(words, c0, c1, HAS_ZERO: gl.constexpr, FMT: gl.constexpr, PRMT: gl.constexpr = False):
    """Each word's four half2 values (the word dot's first half)."""
    if FMT >= 2 and PRMT:
        return gl.inline_asm_elementwise(DECODE_E2M1_PRMT, "=r,=r,=r,=r,r", [words],
                                         dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)
    if FMT >= 2:
        return gl.inline_asm_elementwise(DECODE_E2M1, "=r,=r,=r,=r,r", [words],
                                         dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)
    if HAS_ZERO:
        return gl.inline_asm_elementwise(DECODE_ZERO, "=r,=r,=r,=r,r,r,r", [words, c0, c1],
                                         dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)
    return gl.inline_asm_elementwise(DECODE_SYM, "=r,=r,=r,=r,r", [words],
                                     dtype=[gl.int32, gl.int32, gl.int32, gl.int32], is_pure=True, pack=1)


@gluon.jit
def _gl_split4(v):
    """(..., 4) -> its four (...) slices, in order (two register-only splits)."""
    a, b = gl.split(gl.reshape(v, [v.shape[0], v.shape[1], 2, 2]))  # a: 0, 2; b: 1, 3
    v0, v2 = gl.split(a)
    v1, v3 = gl.split(b)
    return v0, v1, v2, v3


@gluon.jit
def gl_chunk_dot(words, p0, p1, p2, p3, c0, c1, HAS_ZERO: gl.constexpr, FMT: gl.constexpr, PRMT: gl.constexpr):
    """(BLOCK_N, CH, 4) words (a chunk each) x their packs (1, CH, 4) -> (BLOCK_N, CH) fp32 chunk sums, the four
    words chained in half2 (CHUNK_DOT_*); int4 or mxfp4 (nvfp4: ``gl_pair_dot``). Zero points: c0 / c1 (BLOCK_N, CH)."""
    w0, w1, w2, w3 = _gl_split4(words)
    # the packs broadcast over the rows first (registers shared, no copies): split as the words are
    a0, a1, a2, a3 = _gl_split4(gl.broadcast(p0, words)[0])
    b0, b1, b2, b3 = _gl_split4(gl.broadcast(p1, words)[0])
    e0, e1, e2, e3 = _gl_split4(gl.broadcast(p2, words)[0])
    d0, d1, d2, d3 = _gl_split4(gl.broadcast(p3, words)[0])
    args = [w0, w1, w2, w3, a0, b0, e0, d0, a1, b1, e1, d1, a2, b2, e2, d2, a3, b3, e3, d3]
    if FMT >= 2:
        asm: gl.constexpr = CHUNK_DOT_E2M1_PRMT if PRMT else CHUNK_DOT_E2M1
        return gl.inline_asm_elementwise(asm, "=r" + ",r" * 20, args, dtype=gl.float32, is_pure=True, pack=1)
    if HAS_ZERO:  # (the same registers: the words' split layout is the chunk layout)
        c0 = gl.convert_layout(c0, w0.type.layout)
        c1 = gl.convert_layout(c1, w0.type.layout)
        return gl.inline_asm_elementwise(CHUNK_DOT_ZERO, "=r" + ",r" * 22, args + [c0, c1], dtype=gl.float32,
                                         is_pure=True, pack=1)
    return gl.inline_asm_elementwise(CHUNK_DOT_SYM, "=r" + ",r" * 20, args, dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def gl_pair_dot(words, p0, p1, p2, p3, sw, PRMT: gl.constexpr):
    """nvfp4's chunk sums: (BLOCK_N, CH, 4) words x packs (1, CH, 4), words (0, 1) and (2, 3) chained in half2
    (PAIR_DOT_E2M1*: one 16-element scale group each), times their scales ``sw`` (BLOCK_N, CH, 4; words 0 and 2
    read) and added: (BLOCK_N, CH) fp32."""
    shape: gl.constexpr = [words.shape[0], words.shape[1], 2, 2]
    w_even, w_odd = gl.split(gl.reshape(words, shape))  # words (0, 2) and (1, 3): pairs (0, 1), (2, 3) elementwise
    a0, b0 = gl.split(gl.reshape(gl.broadcast(p0, words)[0], shape))
    a1, b1 = gl.split(gl.reshape(gl.broadcast(p1, words)[0], shape))
    a2, b2 = gl.split(gl.reshape(gl.broadcast(p2, words)[0], shape))
    a3, b3 = gl.split(gl.reshape(gl.broadcast(p3, words)[0], shape))
    s_pair, _ = gl.split(gl.reshape(sw, shape))
    asm: gl.constexpr = PAIR_DOT_E2M1_PRMT if PRMT else PAIR_DOT_E2M1
    dots = gl.inline_asm_elementwise(asm, "=r" + ",r" * 10, [w_even, w_odd, a0, a1, a2, a3, b0, b1, b2, b3],
                                     dtype=gl.float32, is_pure=True, pack=1)
    return gl.sum(dots * s_pair, axis=2)
