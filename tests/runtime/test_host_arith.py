"""The launchers' host-side grid arithmetic equals triton's constexpr functions it replaces (those cost
~4 us a Python call; a launch made nine)."""

import triton

from quantc.runtime.kernels.common import cdiv, next_pow2


def test_cdiv_and_next_pow2_match_triton():
    for a in list(range(0, 70)) + [2**31 - 1, 2**31, 3 * 2**20 + 7]:
        assert next_pow2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 16, 32, 128, 4096):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
