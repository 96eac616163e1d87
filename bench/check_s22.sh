#!/usr/bin/env bash
# The twenty-second session's first device call (~10 min on an H100 or H200; RUNBOOK's first call). Run from the repository
# root on the device with the wheels' PYTHONPATH set and OUT exported, after `python3 bench/bench_e2e.py prepare
# --plans .out/e2e_plans` here (carry .whl and .out). Every step writes its JSON under $OUT/<step>/.
#   1. bench_wo at 1 and 4 rows, then 16, all seven shapes, with the twenty-first session's defaults (prmt e2m1,
#      wo_plane_mma at 2-8 rows): the README's tables have 2 and 8 rows only;
#   2. wo_plane_mma at 16 rows: the activations a step ahead (X_AHEAD) and two row tiles a warp, on every shape (the
#      plane kernel is the default there: 0.8-0.97x for this kernel at one row tile);
#   3. the two small shapes at 2 rows with one-warp programs and little or no split-K (tinygemm leads them by
#      13-15%);
#   4. bench_e2e w4a16 / mxfp4 on Llama at batch 1, 4 and 8 (wo_plane_mma inside a model);
#   5. bench_moe at 16 and 256 tokens: the layer on wo_plane_mma's grouped launch (QUANTC_MOE_PLANE_MMA, its first
#      GPU run: the correctness pass's moe_weight_only/plane_mma rows) against the GEMV and the grouped GEMM.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run bench_wo_m1_4 170 env BENCH_MS=1,4 BENCH_CAP_S=160 python3 bench/bench_wo.py
run bench_wo_m16 110 env BENCH_MS=16 BENCH_CAP_S=100 python3 bench/bench_wo.py
run plane_mma_m16 90 env PROBE_MS=16 PROBE_WARPS=2,4 PROBE_SUBS=1 PROBE_RT=1,2 PROBE_X_AHEAD=0,1 PROBE_SPLIT_MULT=1,2 \
    PROBE_CAP_S=80 python3 bench/plane_mma_probe.py
run plane_mma_small 40 env PROBE_SHAPES=4096x4096,7168x2048 PROBE_MS=2 PROBE_WARPS=1,2 PROBE_SUBS=1,2 \
    PROBE_SPLIT_MULT=0.5,1 PROBE_X_AHEAD=0,1 PROBE_CAP_S=35 python3 bench/plane_mma_probe.py
run e2e 100 python3 bench/bench_e2e.py run --plans .out/e2e_plans --out "$OUT/e2e/e2e_h200.json" --budget 90 \
    --batches 1 4 8 --models llama-3.1-8b --only w4a16 mxfp4
run bench_moe 170 env BENCH_TOKENS=16,256 BENCH_CAP_S=160 python3 bench/bench_moe.py
