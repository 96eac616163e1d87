#!/usr/bin/env bash
# Compile every example config against its model at tensor_parallel 1/2/4/8 for one GPU: the plans whose
# per-rank shapes `bench/tune_plan.py --space seeded` tunes into kernels/<gpu>.json (2026-11-26: 44 plans;
# gpt-oss-20b refuses tp 4/8, K = 2880 / tp is not a multiple of 32, and the B200 nvfp4 example is left out).
#
#     bash bench/compile_examples.sh .out/plans_h100 h100
set -u
out=${1:?usage: compile_examples.sh OUT_DIR GPU}
gpu=${2:?usage: compile_examples.sh OUT_DIR GPU}
cd "$(dirname "$0")/.."
mkdir -p "$out"
pairs="deepseek_v3_fp8_block.yaml:deepseek-v3-bf16 gpt_oss_20b_mxfp4_mxfp8.toml:gpt-oss-20b-bf16
gpt_oss_20b_checkpoint_mxfp8_acts.yaml:gpt-oss-20b llama31_70b_tp8_fp8_block.yaml:llama-3.1-70b
llama31_8b_fp8.yaml:llama-3.1-8b llama31_8b_int8.json:llama-3.1-8b llama31_8b_w4a16.toml:llama-3.1-8b
mixtral_8x7b_int8_w4a16.toml:mixtral-8x7b qwen3_30b_a3b_fp8_child.yaml:qwen3-30b-a3b
qwen3_30b_a3b_mxfp4.yaml:qwen3-30b-a3b qwen3_30b_a3b_mxfp4_mxfp8.yaml:qwen3-30b-a3b base_fp8.yaml:qwen3-8b"
for pair in $pairs; do
  config=${pair%%:*}
  model=${pair##*:}
  for tp in 1 2 4 8; do
    if ! err=$(quantc compile "examples/configs/$config" --model "examples/models/$model.json" --gpu "$gpu" \
        --tp "$tp" -o "$out/${config%.*}__tp$tp.json" 2>&1 >/dev/null); then
      echo "skipped $config at tp $tp: $(echo "$err" | grep -m1 'error')"
    fi
  done
done
ls "$out" | wc -l
