"""Default KernelConfigs per dense kernel and M bucket: what a launcher uses when the plan has no
table entry for a module (a plan compiled before the tables knew the shape, or direct kernel calls).
Tuned on H100 by ``bench/bench_dense.py``; the same rows are in ``bench/results/dense_configs_h100.json``
for ``kernels/h100.json``."""

from __future__ import annotations

from bisect import bisect_left

import torch

from quantc.plan import KernelConfig

# kernel -> ((m_max, KernelConfig), ...) ascending; the last bucket covers every larger M. Block sizes:
# the most frequent winner per bucket over the seven benchmark shapes (bench/results/dense_configs_h100.json
# has the per-shape rows, all measured with split_k = 1).
#
# split_k = DECODE_SPLIT_K in the M <= 16 buckets is NOT measured (no GPU run since split-K landed); it
# rests on a program count. At decode the GEMM is a weight stream and one program owns BLOCK_N rows,
# so N / BLOCK_N programs share the H100's 132 SMs. In bench/results/dense_h100.json (fp8 weight-only,
# M = 1, tuned block sizes) the shapes at 0.84-0.90 of copy bandwidth ran 384-896 programs
# (N = 24576 at BLOCK_N = 64, N = 28672 at 32); those at 0.27-0.57 ran 128-224 (N = 2048..7168), one
# or two programs an SM: too few loads in flight. Four K slices make four times the programs: with
# these defaults at M = 1 (BLOCK_N = 32) N = 4096 -> 512, 6144 -> 768, 7168 -> 896, 2048 -> 256; at
# M <= 16 (BLOCK_N = 64) 256 / 384 / 448 / 128. The cost: an fp32 workspace written and read back,
# 2 x 4 slices x 4 bytes x M per output column against K bytes of 8-bit weight (under 1% at M = 1,
# 12-25% at M = 16 for K = 4096-2048, mostly L2 hits as it is read right after it is written), and one
# small reduction launch. Large-N shapes gain nothing but lose little; tuned table rows override this
# per shape. From M = 64 the round trip passes 25% of the weight bytes, so those buckets stay unsplit
# until a GPU run says otherwise (``quantc tune`` searches split_k in {1, 2, 4, 8} for M <= 64).
# fp8_block_gemm from M = 256: 64 x 128 tiles of one warpgroup (197 registers a thread, 96 KB of shared
# memory) let two programs share an SM, so one's per-K-step scaling overlaps the other's MMAs; on the H100
# they beat 128 x 128 x 8 warps (one program an SM) by 6% at M >= 1024 and 21% at M = 256
# (bench/results/tma_probe_h100_block.json, 4 shapes).
DECODE_SPLIT_K = 4
_L = 2**31 - 1
_S = DECODE_SPLIT_K
_8BIT = ((1, KernelConfig(16, 32, 256, 8, 4, 5, _S)), (16, KernelConfig(16, 64, 256, 8, 4, 3, _S)),
         (64, KernelConfig(64, 64, 128, 8, 4, 4)), (256, KernelConfig(64, 128, 128, 8, 4, 4)),
         (_L, KernelConfig(128, 256, 128, 8, 8, 3)))
_WEIGHT_ONLY = ((16, KernelConfig(16, 32, 256, 8, 4, 5, _S)), (_L, KernelConfig(128, 128, 64, 8, 8, 3)))
DEFAULTS: dict[str, tuple[tuple[int, KernelConfig], ...]] = {
    "fp8_scaled_gemm": _8BIT,
    "int8_gemm": _8BIT,
    "fp8_block_gemm": ((1, KernelConfig(16, 32, 128, 8, 4, 5, _S)), (16, KernelConfig(16, 32, 128, 8, 4, 4, _S)),
                       (64, KernelConfig(64, 64, 128, 8, 4, 4)), (256, KernelConfig(64, 128, 128, 8, 4, 4)),
                       (_L, KernelConfig(64, 128, 128, 8, 4, 4))),
    "mxfp8_gemm_emulated": ((16, KernelConfig(16, 64, 32, 8, 4, 4, _S)), (_L, KernelConfig(128, 256, 32, 8, 8, 3))),
    "fp8_weight_only_gemm": _WEIGHT_ONLY,
    "int8_weight_only_gemm": _WEIGHT_ONLY,
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

        int4 = kernel == "int4_weight_only_gemm"
        return tuple((m, wo_default(m_at, n, k, int4=int4)) for m, m_at in ((1, 1), (16, 16), (_L, 17)))
    return DEFAULTS.get(kernel, _8BIT)


def bucket_lookup(buckets) -> tuple[tuple[int, ...], tuple[KernelConfig, ...]]:
    """(m_max bounds, configs): the precomputed form a module keeps for its hot path."""
    return tuple(b[0] for b in buckets), tuple(b[1] for b in buckets)


def pick(bounds: tuple[int, ...], configs: tuple[KernelConfig, ...], m: int) -> KernelConfig:
    if torch.compiler.is_compiling():  # Dynamo cannot trace C's bisect: the same search as a loop
        i = next((j for j, b in enumerate(bounds) if b >= m), len(bounds))
    else:
        i = bisect_left(bounds, m)
    return configs[min(i, len(configs) - 1)]


def default_config(kernel: str, m: int) -> KernelConfig:
    return pick(*bucket_lookup(default_buckets(kernel)), m)
