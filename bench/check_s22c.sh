#!/usr/bin/env bash
# The twenty-second session's third device call (~7 min on an H200): the 4-bit MoE layer on each of its kernels
# (moe_wo_probe: GEMV, grouped GEMM, wo_plane_mma at 1-256 tokens), then bench_wo at one row on all seven shapes
# with the GEMV's chained word dots and 8-row tiles from 16384 rows (the defaults now).
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run moe_wo 190 env PROBE_MODELS=qwen3_30b_a3b,deepseek_v3,mixtral_8x7b PROBE_FMTS=mxfp4 PROBE_CAP_S=160 \
    python3 bench/moe_wo_probe.py
run bench_wo_m1 230 env BENCH_MS=1 BENCH_CAP_S=210 python3 bench/bench_wo.py
