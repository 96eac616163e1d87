#!/usr/bin/env bash
# The twentieth session's second batch, in one device call (~8 min on an H100). Run from the repository root on
# the device with the wheels' PYTHONPATH set and OUT exported; every step writes its JSON under $OUT/<step>/ and a
# failing step does not stop the others.
#
#   1. bench_wo at M = 1, all three formats: the GEMV tiles of this session (1024-deep warps-along-K from 16384
#      rows, 8 warps along K from K = 8192);
#   2. bench_wo at 2, 3 and 4 rows, all three formats, twice in the same call: the default kernels (planes / mma4),
#      then the several-row GEMV (QUANTC_WO_GEMV_MAX_M=4: one program an N tile, each word decoded once); the
#      correctness pass runs the GEMV first;
#   3. bench_moe at 1 and 16 tokens: the MoE GEMV on by default at decode, the grouped GEMM beside it.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run bench_wo_m1 100 env BENCH_MS=1 BENCH_CAP_S=80 python3 bench/bench_wo.py
run bench_wo_m234 125 env BENCH_MS=2,3,4 BENCH_CAP_S=110 python3 bench/bench_wo.py
run bench_wo_m234_gemv 90 env QUANTC_WO_GEMV_MAX_M=4 BENCH_MS=2,3,4 BENCH_CAP_S=70 python3 bench/bench_wo.py
run bench_moe 200 env BENCH_TOKENS=1,16 BENCH_CAP_S=180 python3 bench/bench_moe.py
