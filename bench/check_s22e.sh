#!/usr/bin/env bash
# The twenty-second session's last device call (~8 min on an H200), after the GEMV's unmasked loads (EVEN_N) and
# wo_plane_mma's e2m1 table registers:
#   1. the one-row GEMV at 8 and 16 rows a thread, with and without the register prefetch, on five shapes;
#   2. bench_wo at 1 and 8 rows on all seven shapes (the H200 headline with the session's defaults);
#   3. wo_plane_mma for mxfp4 / nvfp4 at 16 rows against the default there (mma4);
#   4. bench_moe at 16 tokens, Qwen3-30B-A3B and DeepSeek-V3: the 4-bit gate_up's bytes/s on wo_plane_mma.
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run gemv_rows16 100 env PROBE_KERNELS=gemv PROBE_MS=1 PROBE_FMTS=int4_group_128,mxfp4,nvfp4 \
    PROBE_SHAPES=28672x4096,24576x7168,4096x14336,6144x4096,7168x2048 \
    PROBE_GEMV_TILES=8x4x1x4,16x4x1x4,8x2x1x4,16x2x1x4 PROBE_GEMV_STAGES=1,2 PROBE_SPLIT_MULT=1 PROBE_CAP_S=85 \
    python3 bench/wo_probe.py sweep
run bench_wo_m1_8 190 env BENCH_MS=1,8 BENCH_CAP_S=175 python3 bench/bench_wo.py
run pmma_fp4_m16 70 env PROBE_KEYS=mxfp4,nvfp4 PROBE_MS=16 PROBE_WARPS=4 PROBE_SUBS=1,2 PROBE_SPLIT_MULT=1 \
    PROBE_CAP_S=60 python3 bench/plane_mma_probe.py
run bench_moe 95 env BENCH_MODELS=qwen3_30b_a3b,deepseek_v3 BENCH_TOKENS=16 BENCH_CAP_S=85 python3 bench/bench_moe.py
