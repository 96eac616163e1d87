#!/usr/bin/env bash
# The twenty-second session's second device call (~7 min on an H200): the one-row GEMV's chained word dots
# (QUANTC_GEMV_CHAIN), two steps an iteration (num_stages 3) and 8-row tiles on every dense shape (gemv_chain_probe),
# then the 4-bit MoE layer on each of its kernels (GEMV, grouped GEMM, wo_plane_mma) at 1-256 tokens
# (moe_wo_probe) to set uses_moe_plane_mma's rule.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run gemv_chain 230 env PROBE_CAP_S=200 python3 bench/gemv_chain_probe.py
run moe_wo 200 env PROBE_MODELS=qwen3_30b_a3b,deepseek_v3,mixtral_8x7b PROBE_FMTS=mxfp4 PROBE_CAP_S=170 \
    python3 bench/moe_wo_probe.py
