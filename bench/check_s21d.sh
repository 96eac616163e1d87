#!/usr/bin/env bash
# The twenty-first session's fourth device call (~6 min on an H100): wo_plane_mma's fp4 decode (mxfp4 / nvfp4 at
# 2-16 rows, forced: its first GPU run, the correctness pass first) against the launcher (the two-row GEMV, mma4)
# and tinygemm's int4; int4 at 16 rows in two 8-token tiles; the small shapes at 2 rows with 1-2 warp programs.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run plane_mma_fp4 200 env PROBE_KEYS=mxfp4,nvfp4 PROBE_MS=2,8,16 PROBE_WARPS=4 PROBE_SUBS=2 PROBE_SPLIT_MULT=1,2 \
    PROBE_CAP_S=185 python3 bench/plane_mma_probe.py
run plane_mma_m16 60 env PROBE_SHAPES=28672x4096,4096x14336,4096x4096 PROBE_MS=16 PROBE_WARPS=4 PROBE_SUBS=1,2 \
    PROBE_TOKENS=0,8 PROBE_SPLIT_MULT=1,2 PROBE_CAP_S=50 python3 bench/plane_mma_probe.py
run plane_mma_small 70 env PROBE_SHAPES=4096x4096,7168x2048 PROBE_MS=2 PROBE_WARPS=1,2,4 PROBE_SUBS=1,2 \
    PROBE_SPLIT_MULT=2,4 PROBE_CAP_S=60 python3 bench/plane_mma_probe.py
