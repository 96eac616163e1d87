"""Default KernelConfigs per dense kernel and M bucket: what a launcher uses when the plan has no
table entry for a module (a plan compiled before the tables knew the shape, or direct kernel calls).
Tuned on H100 by ``bench/bench_dense.py``; the same rows are in ``bench/results/dense_configs_h100.json``
for ``kernels/h100.json``."""

from __future__ import annotations

from bisect import bisect_left

from quantc.plan import KernelConfig

# kernel -> ((m_max, KernelConfig), ...) ascending; the last bucket covers every larger M. The most
# frequent winner per bucket over the seven benchmark shapes (bench/results/dense_configs_h100.json
# has the per-shape rows).
_L = 2**31 - 1
_8BIT = ((1, KernelConfig(16, 32, 256, 8, 4, 5)), (16, KernelConfig(16, 64, 256, 8, 4, 3)),
         (64, KernelConfig(64, 64, 128, 8, 4, 4)), (256, KernelConfig(64, 128, 128, 8, 4, 4)),
         (_L, KernelConfig(128, 256, 128, 8, 8, 3)))
DEFAULTS: dict[str, tuple[tuple[int, KernelConfig], ...]] = {
    "fp8_scaled_gemm": _8BIT,
    "int8_gemm": _8BIT,
    "fp8_block_gemm": ((1, KernelConfig(16, 32, 128, 8, 4, 5)), (16, KernelConfig(16, 32, 128, 8, 4, 4)),
                       (64, KernelConfig(64, 64, 128, 8, 4, 4)), (256, KernelConfig(64, 128, 128, 8, 4, 4)),
                       (_L, KernelConfig(128, 128, 128, 8, 8, 4))),
    "mxfp8_gemm_emulated": ((16, KernelConfig(16, 64, 32, 8, 4, 4)), (_L, KernelConfig(128, 256, 32, 8, 8, 3))),
    "fp8_weight_only_gemm": ((16, KernelConfig(16, 32, 256, 8, 4, 5)), (_L, KernelConfig(128, 128, 64, 8, 8, 3))),
    "int8_weight_only_gemm": ((16, KernelConfig(16, 32, 256, 8, 4, 5)), (_L, KernelConfig(128, 128, 64, 8, 8, 3))),
}


# weight-only 4-bit ids: the config depends on the shape (split-K covers the SMs at decode sizes), so
# their defaults come from ``wo_gemm.default_config`` at the bucket bounds when N and K are known
WEIGHT_ONLY_4BIT = ("int4_weight_only_gemm", "fp4_weight_only_gemm", "mxfp4_mxfp8_gemm_emulated", "nvfp4_gemm")

# MoE ids: grouped-GEMM configs by (token, slot) pairs = tokens x top_k; converted to token bounds
MOE_PAIR_BUCKETS = ((64, KernelConfig(16, 64, 128, 8, 4, 3)), (1024, KernelConfig(32, 64, 128, 8, 4, 3)),
                    (_L, KernelConfig(64, 128, 64, 8, 8, 3)))


def default_buckets(kernel: str, n: int = 0, k: int = 0, top_k: int = 1) -> tuple[tuple[int, KernelConfig], ...]:
    """The buckets a module uses when the plan has no table entry for it. ``n``/``k`` refine the 4-bit
    weight-only defaults; ``top_k`` turns the MoE pair bounds into live token counts."""
    if kernel.startswith("moe_"):  # the grouped-GEMM ids (kernel_specs: layer kind moe)
        return tuple((m if m == _L else max(1, m // top_k), c) for m, c in MOE_PAIR_BUCKETS)
    if kernel in WEIGHT_ONLY_4BIT and n and k:
        from .kernels.wo_gemm import default_config as wo_default

        return tuple((m, wo_default(m_at, n, k)) for m, m_at in ((1, 1), (16, 16), (_L, 17)))
    return DEFAULTS.get(kernel, _8BIT)


def bucket_lookup(buckets) -> tuple[tuple[int, ...], tuple[KernelConfig, ...]]:
    """(m_max bounds, configs): the precomputed form a module keeps for its hot path."""
    return tuple(b[0] for b in buckets), tuple(b[1] for b in buckets)


def pick(bounds: tuple[int, ...], configs: tuple[KernelConfig, ...], m: int) -> KernelConfig:
    i = bisect_left(bounds, m)
    return configs[min(i, len(configs) - 1)]


def default_config(kernel: str, m: int) -> KernelConfig:
    return pick(*bucket_lookup(default_buckets(kernel)), m)
