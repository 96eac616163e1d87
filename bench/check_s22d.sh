#!/usr/bin/env bash
# The twenty-second session's fourth device call (~6 min on an H200): the one-row GEMV's tiles with the chained word
# dots on all seven shapes (wo_probe sweep: rows a thread 4 / 8 / 16, lanes along N, warps along K 2 / 4 / 8, one
# or two K steps an iteration), to re-fit gemv_config where the H200 is instruction-bound.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run gemv_tiles 330 env PROBE_KERNELS=gemv PROBE_MS=1 PROBE_FMTS=int4_group_128,mxfp4,nvfp4 \
    PROBE_SHAPES=28672x4096,24576x7168,4096x14336,6144x4096,4096x4096,7168x2048,2048x7168 \
    PROBE_GEMV_TILES=8x4x1x4,8x2x1x4,4x4x1x4,16x4x1x4,8x4x1x8,4x4x1x8,8x2x1x8,8x4x2x2 PROBE_GEMV_STAGES=2,3 \
    PROBE_SPLIT_MULT=1 PROBE_CAP_S=300 python3 bench/wo_probe.py sweep
