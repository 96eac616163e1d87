"""The PTX of the nibble decode, executed by a small emulator of the instructions it uses (prmt, lop3,
shifts, bf16x2 fma and mul), against the plain decode: every byte value in every position of a word. CI has
no GPU and the interpreter never runs inline PTX, so this is where a wrong byte selector or mask
shows up (one did: it decoded element 2i twice instead of 2i and 2i+1)."""

import re

import numpy as np
import pytest
import torch

from quantc.runtime import quantize as qz
from quantc.runtime.kernels import nibble_decode as nd
from quantc.runtime.kernels import wo_planes as wp

M32 = 0xFFFFFFFF


def _bf16(bits: int) -> float:
    return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])


def _to_bf16_bits(x: float) -> int:
    f = np.array([x], dtype=np.float32).view(np.uint32)[0].item()
    lsb = (f >> 16) & 1
    return ((f + 0x7FFF + lsb) >> 16) & 0xFFFF  # round to nearest even (values here are exact anyway)


def _prmt(a: int, b: int, sel: int) -> int:
    src = (b << 32) | a  # bytes 0-3 from a, 4-7 from b
    out = 0
    for i in range(4):
        s = (sel >> (4 * i)) & 0xF
        assert s < 8, "sign-replicating selectors are not used"
        out |= ((src >> (8 * s)) & 0xFF) << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def _fma_bf16x2(a: int, b: int, c: int) -> int:
    out = 0
    for lane in range(2):
        x, y, z = ((v >> (16 * lane)) & 0xFFFF for v in (a, b, c))
        out |= _to_bf16_bits(_bf16(x) * _bf16(y) + _bf16(z)) << (16 * lane)
    return out


def run_ptx(asm: str, inputs: dict[int, int]) -> dict[int, int]:
    """Execute the asm block on integer registers; returns the $N operands written (32-bit, or 16-bit
    halves for ``mov.b32 {$a, $b}, r``)."""
    regs: dict[str, int] = {f"${k}": v & M32 for k, v in inputs.items()}

    def val(tok: str) -> int:
        tok = tok.strip()
        return int(tok, 16) & M32 if tok.startswith("0x") else int(tok) if tok.isdigit() else regs[tok]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        m = re.match(r"\{\s*(\$\d+),\s*(\$\d+)\s*\},\s*(\S+)", rest)
        if op == "mov.b32" and m:
            v = val(m.group(3))
            regs[m.group(1)], regs[m.group(2)] = v & 0xFFFF, v >> 16
            continue
        d, *args = [t.strip() for t in rest.split(",")]
        a = [val(t) for t in args]
        if op == "mov.b32":
            r = a[0]
        elif op == "xor.b32":
            r = a[0] ^ a[1]
        elif op == "and.b32":
            r = a[0] & a[1]
        elif op == "shr.b32":
            r = a[0] >> a[1]
        elif op == "shl.b32":
            r = (a[0] << a[1]) & M32
        elif op == "prmt.b32":
            r = _prmt(*a)
        elif op == "lop3.b32":
            r = _lop3(*a)
        elif op == "fma.rn.bf16x2":
            r = _fma_bf16x2(*a)
        elif op == "mul.rn.bf16x2":
            r = _fma_bf16x2(a[0], a[1], 0)
        else:
            raise AssertionError(f"instruction {op} not emulated")
        regs[d] = r
    return {int(k[1:]): v for k, v in regs.items() if k.startswith("$")}


def _value(code: int, fmt: str) -> float:
    if fmt == "int4_sym":
        return float(code - 16 if code >= 8 else code)
    if fmt == "int4_code":
        return float(code)
    return float(qz.e2m1_to_float(torch.tensor([code])).item())


WORD_ASM = {"int4_sym": nd.WORD_INT4_SYM_ASM.value, "int4_code": nd.WORD_INT4_CODE_ASM.value,
            "e2m1": nd.WORD_E2M1_ASM.value}
PAIR_ASM = {"int4_sym": nd.INT4_SYM_ASM.value, "int4_code": nd.INT4_CODE_ASM.value, "e2m1": nd.E2M1_ASM.value}


def _words():
    rng = np.random.default_rng(0)
    words = [int(w) for w in rng.integers(0, 2**32, 64, dtype=np.uint64)]
    for pos in range(4):  # every byte value at every byte position
        words += [v << (8 * pos) | (0x5A5A5A5A & ~(0xFF << (8 * pos))) for v in range(256)]
    return words


@pytest.mark.parametrize("fmt", sorted(WORD_ASM))
def test_word_decode_ptx_gives_each_nibble_in_k_order(fmt):
    for w in _words():
        out = run_ptx(WORD_ASM[fmt], {8: w})
        got = [_bf16(out[j]) for j in range(8)]
        want = [_value((w >> (4 * j)) & 0xF, fmt) for j in range(8)]
        assert got == want, (fmt, hex(w), got, want)


@pytest.mark.parametrize("fmt", sorted(PAIR_ASM))
def test_byte_pair_decode_ptx_gives_low_then_high_nibbles(fmt):
    for w in _words():
        out = run_ptx(PAIR_ASM[fmt], {4: w})
        lo = [_bf16(out[r] >> (16 * h) & 0xFFFF) for r in (0, 1) for h in (0, 1)]
        hi = [_bf16(out[r] >> (16 * h) & 0xFFFF) for r in (2, 3) for h in (0, 1)]
        byte = [(w >> (8 * i)) & 0xFF for i in range(4)]
        assert lo == [_value(b & 0xF, fmt) for b in byte], (fmt, hex(w))
        assert hi == [_value(b >> 4, fmt) for b in byte], (fmt, hex(w))


def test_the_emulator_catches_a_wrong_selector():
    bad = nd.WORD_INT4_CODE_ASM.value.replace("0x4400", "0x4040")
    out = run_ptx(bad, {8: 0x76543210})
    assert [_bf16(out[j]) for j in range(8)] != [float(j) for j in range(8)]


PLANES_ASM = {"int4_sym": wp.PLANES_INT4_SYM.value, "int4_code": wp.PLANES_INT4_CODE.value,
              "e2m1": wp.PLANES_E2M1.value}
PLANES_SHIFTED = wp.PLANES_E2M1_SHIFTED.value
# the decode that leaves the bias in (planes_step takes it off the sums with the zero points)
PLANES_BIASED = {"int4_code": (wp.PLANES_INT4_CODE_BIASED.value, wp.INT4_BIAS_CODE.value)}


@pytest.mark.parametrize("fmt", sorted(PLANES_ASM))
def test_planes_decode_ptx_pairs_nibble_j_of_two_words(fmt):
    words = _words()
    for a, b in zip(words, words[1:] + words[:1]):
        out = run_ptx(PLANES_ASM[fmt], {8: a, 9: b})
        for j in range(8):
            got = [_bf16(out[j] >> (16 * h) & 0xFFFF) for h in (0, 1)]
            want = [_value((w >> (4 * j)) & 0xF, fmt) for w in (a, b)]
            assert got == want, (fmt, hex(a), hex(b), j, got, want)


def test_shifted_e2m1_planes_are_the_value_times_2_to_the_minus_126():
    words = _words()
    for a, b in zip(words, words[1:] + words[:1]):
        out = run_ptx(PLANES_SHIFTED, {8: a, 9: b})
        for j in range(8):
            got = [_bf16(out[j] >> (16 * h) & 0xFFFF) for h in (0, 1)]
            want = [_value((w >> (4 * j)) & 0xF, "e2m1") * 2.0 ** -126 for w in (a, b)]
            assert got == want, (hex(a), hex(b), j, got, want)


@pytest.mark.parametrize("fmt", sorted(PLANES_BIASED))
def test_biased_int4_planes_are_the_value_plus_the_bias_without_fmas(fmt):
    """128 + c for codes with zero points: the lop3 results, no bf16x2 FMA and no constants moved."""
    asm, bias = PLANES_BIASED[fmt]
    assert "fma" not in asm and "0x3F803F80" not in asm
    words = _words()
    for a, b in zip(words, words[1:] + words[:1]):
        out = run_ptx(asm, {8: a, 9: b})
        for j in range(8):
            got = [_bf16(out[j] >> (16 * h) & 0xFFFF) for h in (0, 1)]
            want = [_value((w >> (4 * j)) & 0xF, fmt) + bias for w in (a, b)]
            assert got == want, (fmt, hex(a), hex(b), j, got, want)
