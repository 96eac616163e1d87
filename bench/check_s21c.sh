#!/usr/bin/env bash
# The twenty-first session's third device call (~5 min on an H100): wo_plane_mma with one or two 128-deep steps an
# iteration (more bytes in flight) and larger split-K, M = 2-16 (int4 g128), and with zero points at 2, 8, 16 rows.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run plane_mma 230 env PROBE_MS=2,4,8,16 PROBE_WARPS=4 PROBE_SPLIT_MULT=1,2,4 PROBE_CAP_S=200 \
    python3 bench/plane_mma_probe.py
run plane_mma_asym 80 env PROBE_SHAPES=28672x4096,4096x4096 PROBE_KEYS=int4_group_128_asym PROBE_MS=2,8,16 \
    PROBE_WARPS=4 PROBE_SPLIT_MULT=1,2,4 PROBE_SUBS=2 PROBE_CAP_S=70 python3 bench/plane_mma_probe.py
# the policy as wired (int4 at 2-8 rows on wo_plane_mma, split at twice wo_gemm._split's two waves), every format
run bench_wo 150 env BENCH_MS=2,8,16 BENCH_CAP_S=135 python3 bench/bench_wo.py
