#!/usr/bin/env bash
# The twenty-third session's first device call (~9.5 min on an H100 or H200; RUNBOOK's first call). Run from the
# repository root on the device with the wheels' PYTHONPATH set and OUT exported (carry .whl).
#   1. bench_wo at 1 / 2 rows, then 8, all seven shapes, with the twenty-second session's defaults (chained
#      GEMV word dots, 8-row tiles from 16384 rows, unmasked int4 / mxfp4 loads, wo_plane_mma's e2m1 table
#      registers): on an H100 the first timing of all of them;
#   2. the 4-bit MoE layer on each kernel for all four models (moe_wo_probe): gpt-oss-120b forced onto
#      wo_plane_mma, whose K = 2880 ends in a half step (the TAIL step's first GPU check);
#   3. wo_plane_mma at one row for int4 against the GEMV (the default there): its loop is 2.23 SASS instructions an
#      element against the GEMV's 2.68, which matters where the decode is bound by instructions (the H200);
#   4. the GEMV's variants side by side (gemv_chain_probe): QUANTC_GEMV_SPLIT_X=1 (one activation word a lane,
#      8-18% fewer instructions, its first GPU check), the unchained dots, two steps an iteration, 8-row tiles.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run bench_wo_m1_2 175 env BENCH_MS=1,2 BENCH_CAP_S=165 python3 bench/bench_wo.py
run bench_wo_m8 95 env BENCH_MS=8 BENCH_CAP_S=85 python3 bench/bench_wo.py
run moe_wo 125 env PROBE_FMTS=mxfp4 PROBE_TOKENS=1,16,64,256 PROBE_CAP_S=115 python3 bench/moe_wo_probe.py
run pmma_m1 60 env PROBE_MS=1 PROBE_KEYS=int4_group_128,mxfp4 PROBE_WARPS=4 PROBE_SUBS=1,2 PROBE_SPLIT_MULT=1,2 \
    PROBE_CAP_S=50 python3 bench/plane_mma_probe.py
run gemv_variants 100 env PROBE_CAP_S=90 python3 bench/gemv_chain_probe.py
