#!/usr/bin/env bash
# Everything a lent GPU is for, in one short run (about 10 minutes on one H100):
# the GPU tests, then the bf16 figures of docs/benchmarks.md.
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
# The figures go to bench/results/*_gpu*.json and docs/benchmarks.md is rendered again:
# commit those files.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
bash scripts/install.sh test 2>&1 | tail -1      # keeps the machine's own torch
python -m pytest tests -q -m gpu -p no:cacheprovider
# v3-base, seq 512, bf16, batch 32: forward + backward, ours (both backends) vs transformers.
for backend in sdpa eager; do
    timeout 240 python -m bench.model_step --device cuda --dtype bf16 --batch 32 --seq 512 \
        --steps 5 --warmup 2 --backend "$backend" --json "bench/results/model_step_gpu_$backend.json"
done
# The full training step (AdamW included), tokens/s and model TFLOP/s.
timeout 240 python -m bench.pretrain_step --seq_len 512 --batch_size 32 --precision bf16 \
    --json bench/results/pretrain_step_gpu.json
python -m bench.report
