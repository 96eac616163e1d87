#!/usr/bin/env bash
# The nineteenth session's GEMV work, checked and timed in one device call (~9 min on an H100; RUNBOOK's first
# call of the twentieth session). Run from the repository root on the device with the wheels' PYTHONPATH set and
# OUT exported (the steps' limits add to 580 s, under a device call's 600); every step writes its JSON under $OUT/<step>/ and a failing step does not stop the others.
#
#   1. bench_wo at M = 1, all three formats: the warps-along-K default under 16384 rows in the reference benchmark,
#      its correctness pass (K = 1024 and 4096: the 1024- and 2048-deep tiles, nvfp4 included) first;
#   2. wo_probe on the two widest shapes: the warps-along-K tile (4x4x1x4, 8x2x1x4) against the 64-row one
#      (4x4x4, 8x2x4) for int4 / mxfp4 / nvfp4 ((24576, 7168) never ran the former); and (4096, 14336), at 2.87-2.95x
#      where the floor asks 3x, with 8 warps along K (16 rows, 2048-deep steps);
#   3. bench_moe at 1 and 16 tokens: its check runs the grouped 4-bit GEMV (QUANTC_MOE_GEMV=1) against the expert
#      loop, and the gate_up_ours_mxfp4_gemv_* / layer_ours_mxfp4_wo_gemv_* columns time it;
#   4. bench_wo at 2 and 4 rows (int4, mxfp4) twice: the default kernels, then the GEMV for them
#      (QUANTC_WO_GEMV_MAX_M=4, a program per row).
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run bench_wo 110 env BENCH_MS=1 BENCH_CAP_S=90 python3 bench/bench_wo.py
run wo_probe_wide 90 env PROBE_SHAPES=28672x4096,24576x7168 PROBE_FMTS=int4_group_128,mxfp4,nvfp4 PROBE_MS=1 \
    PROBE_KERNELS=gemv PROBE_GEMV_STAGES=2 PROBE_GEMV_TILES=4x4x4,8x2x4,4x4x1x4,8x2x1x4 PROBE_GEMV_SPLITS=1 \
    PROBE_CAP_S=70 python3 bench/wo_probe.py sweep
run wo_probe_long_k 60 env PROBE_SHAPES=4096x14336 PROBE_FMTS=int4_group_128,mxfp4 PROBE_MS=1 PROBE_KERNELS=gemv \
    PROBE_GEMV_STAGES=2 PROBE_GEMV_TILES=4x4x1x4,8x2x1x4,4x4x1x8 PROBE_GEMV_SPLITS=1,2 PROBE_CAP_S=45 \
    python3 bench/wo_probe.py sweep
run bench_moe 180 env BENCH_TOKENS=1,16 BENCH_CAP_S=150 python3 bench/bench_moe.py
run bench_wo_m2_4 70 env BENCH_MS=2,4 BENCH_FORMATS=int4_group_128,mxfp4 BENCH_CAP_S=50 python3 bench/bench_wo.py
run bench_wo_m2_4_gemv 70 env QUANTC_WO_GEMV_MAX_M=4 BENCH_MS=2,4 BENCH_FORMATS=int4_group_128,mxfp4 BENCH_CAP_S=50 \
    python3 bench/bench_wo.py
