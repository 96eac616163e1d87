#!/usr/bin/env bash
# The twenty-first session's second device call (~7 min on an H100): wo_plane_mma's first GPU run (int4 from the
# natural layout on the tensor cores, M = 1-64, against the layer's launcher and tinygemm, its correctness pass
# first), and bench_wo's fp4 at M = 1 over all seven shapes with the prmt e2m1 decode now the default.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run plane_mma 330 env PROBE_CAP_S=300 python3 bench/plane_mma_probe.py
run plane_mma_asym 90 env PROBE_SHAPES=28672x4096,4096x4096 PROBE_KEYS=int4_group_128_asym PROBE_MS=2,16 \
    PROBE_CAP_S=80 python3 bench/plane_mma_probe.py
run bench_wo_fp4 130 env BENCH_MS=1 BENCH_FORMATS=mxfp4,nvfp4 BENCH_CAP_S=115 python3 bench/bench_wo.py
