"""Tune kernel ids on the benchmark shapes instead of a plan's: the dense ids on Runtime I's seven (N, K)
shapes, the MoE ids at the four bench_moe model sizes (gate_up and down GEMMs), every M-bucket. For the
kernel ids no example config uses (issue 13 asks for every kernel on Runtime I's shapes); the rows go to
``OUT/<gpu>.json`` like ``quantc tune`` (resumable, atomic), then into ``kernels/<gpu>.json``.

    python3 bench/tune_kernels.py OUT --kernels int8_weight_only_gemm,moe_bf16 [--space seeded] [--m-buckets 1,16]
        [--models gpt_oss_120b]

``--space seeded`` works for ids without rows of their own through ``quantc.tune.SEED_SIBLINGS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# kernel id -> (weight key, activation key) it is tuned with
KEYS = {
    "fp8_scaled_gemm": ("fp8_per_channel", "fp8_dynamic_per_token"),
    "fp8_block_gemm": ("fp8_block_128x128", "fp8_dynamic_group_128"),
    "int8_gemm": ("int8_per_channel", "int8_dynamic_per_token"),
    "mxfp8_gemm_emulated": ("mxfp8", "mxfp8"),
    "fp8_weight_only_gemm": ("fp8_per_channel", "none"),
    "int8_weight_only_gemm": ("int8_per_channel", "none"),
    "int4_weight_only_gemm": ("int4_group_128", "none"),
    "fp4_weight_only_gemm": ("mxfp4", "none"),
    "mxfp4_mxfp8_gemm_emulated": ("mxfp4", "mxfp8"),
    "moe_bf16": ("none", "none"),
    "moe_fp8": ("fp8_per_channel", "fp8_dynamic_per_token"),
    "moe_fp8_block": ("fp8_block_128x128", "fp8_dynamic_group_128"),
    "moe_int8": ("int8_per_channel", "int8_dynamic_per_token"),
    "moe_weight_only": ("mxfp4", "none"),
    "moe_mxfp4_mxfp8_emulated": ("mxfp4", "mxfp8"),
    "moe_mxfp8_emulated": ("mxfp8", "mxfp8"),
}
# Runtime I's shapes (bench/bench_dense.py) and the MoE sizes of bench/bench_moe.py: experts, top_k, H, I
DENSE_SHAPES = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 2048), (2048, 7168), (24576, 7168))
MOE_MODELS = {"qwen3_30b_a3b": (128, 8, 2048, 768), "deepseek_v3": (256, 8, 7168, 2048),
              "gpt_oss_120b": (128, 4, 2880, 2880), "mixtral_8x7b": (8, 2, 4096, 14336)}


def build_jobs(kernels, buckets, models=None):
    """TuneJobs for ``kernels`` (ids of KEYS) at every bucket: dense ids on DENSE_SHAPES; MoE ids a gate_up
    job (N = 2I, fused activation) then a down job (N = H, run at gate_up's BLOCK_M) per model whose sizes
    the kernel takes (its spec's K / N multiples)."""
    from quantc.kernel_specs import KERNELS_BY_ID
    from quantc.tune import TuneJob

    jobs = []
    for kernel in kernels:
        if kernel not in KEYS:
            raise ValueError(f"unknown kernel id {kernel!r}; known: {', '.join(sorted(KEYS))}")
        wk, ak = KEYS[kernel]
        for m_max, m in buckets:
            if not kernel.startswith("moe_"):
                jobs += [TuneJob(kernel, n, k, wk, ak, m_max, m) for n, k in DENSE_SHAPES]
                continue
            spec = KERNELS_BY_ID[kernel]
            for name, (experts, top_k, h, inter) in MOE_MODELS.items():
                if models and name not in models:
                    continue
                if h % spec.k_multiple or inter % spec.k_multiple or h % spec.n_multiple or inter % spec.n_multiple:
                    continue  # a size the compiler would not plan on this kernel (QC301): gpt-oss's 2880 on 128 blocks
                act = "gpt_oss" if name.startswith("gpt_oss") else "silu"
                moe = dict(num_experts=experts, top_k=top_k, act=act)
                jobs.append(TuneJob(kernel, 2 * inter, h, wk, ak, m_max, m, role="gate_up", rows=2 * inter, **moe))
                jobs.append(TuneJob(kernel, h, inter, wk, ak, m_max, m, role="down", rows=h,
                                    partner=(kernel, 2 * inter, h), **moe))
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--kernels", required=True, help="comma-separated kernel ids")
    ap.add_argument("--gpu", default="", help="catalog name of the GPU (default: the live one)")
    ap.add_argument("--m-buckets", default="")
    ap.add_argument("--space", default="seeded", choices=["full", "small", "seeded"])
    ap.add_argument("--models", default="", help=f"MoE sizes to tune (default all): {','.join(MOE_MODELS)}")
    args = ap.parse_args()
    from quantc.gpus import GPUS
    from quantc.tune import M_BUCKETS

    if args.gpu and args.gpu not in GPUS:
        ap.error(f"unknown GPU {args.gpu!r}; known: {', '.join(GPUS)}")
    wanted = {int(b) for b in args.m_buckets.split(",") if b}
    buckets = tuple(b for b in M_BUCKETS if not wanted or b[0] in wanted or b[1] in wanted)
    try:
        models = [m for m in args.models.split(",") if m]
        unknown = sorted(set(models) - set(MOE_MODELS))
        if unknown:
            raise ValueError(f"unknown MoE size {unknown[0]!r}; known: {', '.join(MOE_MODELS)}")
        jobs = build_jobs([k for k in args.kernels.split(",") if k], buckets, models)
    except ValueError as exc:
        ap.error(str(exc))
    import torch

    from quantc.gpus import gpu_from_device_name
    from quantc.runtime.tune import tune

    if args.gpu:
        gpu = GPUS[args.gpu]
    else:
        gpu = gpu_from_device_name(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
    print(tune(jobs, gpu, args.out, space=args.space, progress=sys.stderr.isatty()), flush=True)


if __name__ == "__main__":
    main()
