#!/bin/bash
# DeBERTa-v3-base architecture with the MLM objective (as DeBERTa-v2 pretraining):
# 4 nodes x 8 GPUs, ZeRO-1, bf16, global batch 2048 = micro 64 x accumulation 1 x 32 GPUs.
#
#   sbatch slurm/pretrain_base.sh
#   sbatch --nodes=1 --ntasks-per-node=2 --gres=none slurm/pretrain_base.sh   # CPU ranks
#SBATCH --job-name=deberta-base-mlm
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

: "${MODEL_CONFIG:=deberta-v3-base}"
: "${OBJECTIVE:=mlm}"
: "${RECIPE:=}"
: "${DS_CONFIG:=ds_configs/zero1_bf16.json}"
: "${DATA_DIR:=data/}"
: "${OUTPUT_DIR:=runs/base-mlm}"
: "${GLOBAL_BATCH:=2048}"
: "${MICRO_BATCH:=64}"
: "${MAX_STEPS:=1000000}"
: "${EXTRA_ARGS:=--lr 2e-4 --warmup_steps 10000}"
source "${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/pretrain_common.sh"
