#!/usr/bin/env bash
# The twentieth session's third batch, one device call (~7 min on an H100; `python3 bench/bench_e2e.py prepare
# --plans .out/e2e_plans` here first, and carry .out/e2e_plans). Run from the repository root on the device with
# the wheels' PYTHONPATH set and OUT exported; every step writes its JSON under $OUT/<step>/.
#
#   1. bench_moe at 1 and 16 tokens: the MoE GEMV (default at decode while pairs <= experts) on the 64-row tile
#      from 16384 pair rows, and Qwen3-30B-A3B's K = 768 (a 768-deep tile before the power-of-two fix);
#   2. bench_wo at 2 rows, all formats: the several-row GEMV as the default there;
#   3. bench_e2e w4a16 and mxfp4 on the three models, with the MoE GEMV and without it (QUANTC_MOE_GEMV=0).
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run bench_moe 190 env BENCH_TOKENS=1,16 BENCH_CAP_S=170 python3 bench/bench_moe.py
run bench_wo_m2 60 env BENCH_MS=2 BENCH_CAP_S=45 python3 bench/bench_wo.py
run e2e_moe_gemv 120 python3 bench/bench_e2e.py run --plans .out/e2e_plans --out "$OUT/e2e_moe_gemv/e2e_h100.json" \
    --budget 100 --only w4a16 mxfp4
run e2e_moe_grouped 120 env QUANTC_MOE_GEMV=0 python3 bench/bench_e2e.py run --plans .out/e2e_plans \
    --out "$OUT/e2e_moe_grouped/e2e_h100.json" --budget 100 --only w4a16 mxfp4
