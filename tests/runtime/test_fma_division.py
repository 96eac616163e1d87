"""``common.div_rn_fma`` (the quantizers' division on the GPU) gives the correctly rounded quotient
x / b, checked here in exact arithmetic: each FMA is the exact a * b + c rounded once to fp32, as the
GPU's fma.rn.f32 computes it. The interpreter cannot check it (its FMA may round twice), so the
kernels take div.rn there; bench_dense's and bench_quant's GPU checks compare the kernels bit for bit."""

from fractions import Fraction

import numpy as np
import pytest

F32 = np.float32


def rn32(v: Fraction) -> np.float32:
    """The fp32 nearest to the exact value v, ties to even (float() rounds to fp64 first, so the two
    fp32 neighbours of that are candidates too)."""
    f = F32(float(v))
    best = None
    for c in (np.nextafter(f, F32(-np.inf)), f, np.nextafter(f, F32(np.inf))):
        d = abs(Fraction(float(c)) - v)
        key = (d, int(np.array(c).view(np.uint32)) & 1)
        if best is None or key < best[0]:
            best = (key, c)
    return best[1]


def fma(a, b, c) -> np.float32:
    return rn32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def div_rn_fma(x, b, y, steps=2):
    """The kernel's sequence: q = RN(x y), then ``steps`` Markstein corrections."""
    q = F32(x) * F32(y)
    for _ in range(steps):
        q = fma(fma(-q, b, x), y, q)
    return q


def _cases(seed: int, n: int):
    """(x, b) pairs as the quantizers make them: b = RN(amax / fmt_max) for a bf16 amax, x a bf16 value
    with |x| <= amax, biased towards quotients on and next to the e4m3 / int8 rounding midpoints."""
    rng = np.random.default_rng(seed)
    out = []
    grid = np.array([m * 2.0 ** e for e in range(-9, 9) for m in (1.0, 1.125, 1.25, 1.5, 1.875)], dtype=np.float64)
    for i in range(n):
        amax = F32(np.float32(rng.uniform(0.5, 2.0) * 2.0 ** rng.integers(-40, 40)))
        fmt_max = F32(448.0) if i % 2 else F32(127.0)
        b = rn32(Fraction(float(amax)) / Fraction(float(fmt_max)))
        pick = rng.integers(0, 3)
        if pick == 0:  # a quotient near an e4m3 midpoint or an int8 half
            t = grid[rng.integers(0, len(grid))] * (1 + 1 / 16) if i % 2 else rng.integers(0, 127) + 0.5
            x = np.float64(t) * float(b)
        elif pick == 1:
            x = rng.uniform(-1, 1) * float(amax)
        else:
            x = float(amax) * (-1) ** i
        xb = np.array(np.float32(x)).view(np.uint32)
        xb = xb + ((xb >> 16) & 1) + 0x7FFF & 0xFFFF0000  # round to bf16, as the activation arrives
        x = np.array(np.uint32(xb)).view(np.float32)
        for dx in (-1, 0, 1):  # and its bf16 neighbours
            out.append((F32(np.array(np.uint32(int(xb) + (dx << 16))).view(np.float32)), b))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_two_markstein_steps_give_the_correctly_rounded_quotient(seed):
    bad = []
    for x, b in _cases(seed, 1500):
        if not np.isfinite(x) or abs(float(x)) > 448 * float(b) * 448:
            continue
        y = rn32(Fraction(1) / Fraction(float(b)))
        want = rn32(Fraction(float(x)) / Fraction(float(b)))
        assert want == F32(x) / F32(b)  # numpy's fp32 division is IEEE's: the reference agrees
        got = div_rn_fma(x, b, y)
        if not (got == want and np.signbit(got) == np.signbit(want)):
            bad.append((float(x), float(b), float(got), float(want)))
    assert not bad, bad[:5]


def test_the_product_alone_is_not_the_quotient():
    """The check above has teeth: without the corrections, x * RN(1/b) misses the correctly rounded
    quotient in about a third of these cases. (One correction already matched every sampled case; the
    second is what makes the result a theorem rather than a sample.)"""
    off = 0
    for x, b in _cases(7, 3000):
        y = rn32(Fraction(1) / Fraction(float(b)))
        if div_rn_fma(x, b, y, steps=0) != F32(x) / F32(b):
            off += 1
    assert off > 0
