"""The copy bandwidth of the GPU in this run: the reference the benches report bandwidth against
(shared/BENCH.md: a 1 GiB device-to-device copy, read + write bytes over its time)."""

from __future__ import annotations


def copy_gbps(nbytes: int = 1 << 30, device: str = "cuda") -> float:
    import torch
    from triton.testing import do_bench

    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return 2 * nbytes / do_bench(lambda: b.copy_(a)) / 1e6
