"""kernel_specs.own_config_rows: the rows of a dense 4-bit weight-only layer that an sm_90 GPU runs at the runtime's
own configs (explain notes them, tune measures one candidate there), and the runtime's policies read the same
numbers."""

import pytest

from quantc.kernel_specs import GEMV_ROWS, PLANE_MMA_ROWS, PLANE_MMA_ROWS_ZERO, own_config_rows


@pytest.mark.parametrize("key,k,rows", [
    ("int4_group_128", 4096, PLANE_MMA_ROWS), ("int4_group_128_asym", 4096, PLANE_MMA_ROWS_ZERO),
    ("mxfp4", 4096, PLANE_MMA_ROWS), ("nvfp4", 14336, PLANE_MMA_ROWS),
    ("int4_group_64", 4096, GEMV_ROWS), ("int4_group_32_asym", 4096, GEMV_ROWS),  # the GEMV's one or two rows only
    ("mxfp4", 2880, 0), ("int4_group_64", 2880, 0),  # K % 128: neither kernel
])
def test_rows_by_key_and_k(key, k, rows):
    assert own_config_rows(key, k) == rows


def test_the_runtime_policies_use_the_same_numbers():
    from quantc.runtime.kernels import wo_gemv, wo_plane_mma

    assert wo_gemv.GEMV_ROWS_MAX == GEMV_ROWS
    assert (wo_plane_mma.PLANE_MMA_MAX_M, wo_plane_mma.PLANE_MMA_MAX_M_ZERO) == (PLANE_MMA_ROWS, PLANE_MMA_ROWS_ZERO)
