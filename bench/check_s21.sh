#!/usr/bin/env bash
# The twentieth session's untimed work, checked and timed in one device call (~7 min on an H100; RUNBOOK's first
# call of the twenty-first session). Run from the repository root on the device with the wheels' PYTHONPATH set and
# OUT exported; every step writes its JSON under $OUT/<step>/ and a failing step does not stop the others.
#
#   1. bench_wo at M = 1 and 2, every format, with GemLite's int4 column (its source in .whl/gemlite_src: `bash
#      ../shared/tools/gemlite-src.sh` here first), then mxfp4 / nvfp4 at M = 1 under QUANTC_E2M1_DECODE=prmt:
#      the prmt e2m1 decode's first GPU check (its correctness pass) and its A/B against the default decode;
#   2. frag_only_probe: int4 kept in fragment order only against the plane layout through the layer's launcher,
#      M = 1-512, with wo_frag_gemv's tiles at one row (its first GPU run: the _rel_err columns), wo_frag's 64-token
#      programs at 64 / 128 rows and the permuting dequant at 512;
#   3. bench_moe at 1 and 16 tokens: the MoE GEMV columns now include gpt-oss (K = 2880 at 64-deep steps, forced).
set -u
source "$(dirname "$0")/device_steps.sh"  # run NAME LIMIT COMMAND...
run bench_wo_m12 100 env BENCH_MS=1,2 BENCH_CAP_S=85 python3 bench/bench_wo.py
run bench_wo_fp4_prmt 60 env QUANTC_E2M1_DECODE=prmt BENCH_MS=1 BENCH_FORMATS=mxfp4,nvfp4 BENCH_CAP_S=45 \
    python3 bench/bench_wo.py
run frag_only 150 env PROBE_FRAG_GEMV=4x1x1x4,2x2x1x4,1x4x1x4,4x2x1x4 PROBE_KEYS=int4_group_128,int4_group_128_asym \
    python3 bench/frag_only_probe.py
run bench_moe 200 env BENCH_TOKENS=1,16 BENCH_CAP_S=180 python3 bench/bench_moe.py
