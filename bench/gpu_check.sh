#!/usr/bin/env bash
# Everything a lent GPU is for, in one short run (about 10 minutes on one H100):
# the GPU tests, then the bf16 figures the README's performance section asks for.
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
python -m pip install -q -e '.[test]' 2>&1 | tail -1
python -m pytest tests -q -m gpu -p no:cacheprovider
# v3-base, seq 512, bf16, batch 32: forward + backward, ours (both backends) vs transformers.
for backend in sdpa eager; do
    timeout 240 python bench/model_step.py --device cuda --dtype bf16 --batch 32 --seq 512 \
        --steps 5 --warmup 2 --backend "$backend"
done
# The full training step (AdamW included), tokens/s and model TFLOP/s.
timeout 240 python bench/pretrain_step.py --seq_len 512 --batch_size 32 --precision bf16
