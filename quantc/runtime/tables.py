"""Default KernelConfigs per dense kernel and M bucket: what a launcher uses when the plan has no
table entry for a module (a plan compiled before the tables knew the shape, or direct kernel calls).
Tuned on H100 by ``bench/bench_dense.py``; the same rows are in ``bench/results/dense_configs_h100.json``
for ``kernels/h100.json``."""

from __future__ import annotations

from bisect import bisect_left

from quantc.plan import KernelConfig

# kernel -> ((m_max, KernelConfig), ...) ascending; the last bucket covers every larger M
_SMALL = KernelConfig(16, 64, 128, 8, 4, 4)
_MID = KernelConfig(64, 128, 128, 8, 4, 4)
_LARGE = KernelConfig(128, 256, 128, 8, 8, 3)
_FP8 = ((16, _SMALL), (64, _MID), (2**31 - 1, _LARGE))
DEFAULTS: dict[str, tuple[tuple[int, KernelConfig], ...]] = {
    "fp8_scaled_gemm": _FP8,
    "fp8_block_gemm": _FP8,
    "int8_gemm": _FP8,
    "mxfp8_gemm_emulated": ((16, KernelConfig(16, 64, 32, 8, 4, 4)), (2**31 - 1, KernelConfig(128, 128, 32, 8, 4, 4))),
    "fp8_weight_only_gemm": ((16, _SMALL), (2**31 - 1, KernelConfig(128, 128, 64, 8, 8, 3))),
    "int8_weight_only_gemm": ((16, _SMALL), (2**31 - 1, KernelConfig(128, 128, 64, 8, 8, 3))),
}


def default_buckets(kernel: str) -> tuple[tuple[int, KernelConfig], ...]:
    return DEFAULTS.get(kernel, _FP8)


def bucket_lookup(buckets) -> tuple[tuple[int, ...], tuple[KernelConfig, ...]]:
    """(m_max bounds, configs): the precomputed form a module keeps for its hot path."""
    return tuple(b[0] for b in buckets), tuple(b[1] for b in buckets)


def pick(bounds: tuple[int, ...], configs: tuple[KernelConfig, ...], m: int) -> KernelConfig:
    i = bisect_left(bounds, m)
    return configs[min(i, len(configs) - 1)]


def default_config(kernel: str, m: int) -> KernelConfig:
    return pick(*bucket_lookup(default_buckets(kernel)), m)
