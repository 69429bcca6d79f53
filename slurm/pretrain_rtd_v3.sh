#!/bin/bash
# DeBERTa-v3-base RTD with GDES (the v3 recipe): 8 nodes x 8 GPUs, ZeRO-2, bf16,
# global batch 8192 = micro 64 x accumulation 2 x 64 GPUs, 500K steps.
#
#   sbatch slurm/pretrain_rtd_v3.sh
#   RECIPE=deberta-v3-large-rtd MODEL_CONFIG=deberta-v3-large MICRO_BATCH=32 sbatch slurm/pretrain_rtd_v3.sh
#SBATCH --job-name=deberta-v3-rtd
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

: "${MODEL_CONFIG:=deberta-v3-base}"
: "${OBJECTIVE:=rtd}"
: "${RECIPE:=deberta-v3-base-rtd}"
: "${DS_CONFIG:=ds_configs/zero2_bf16.json}"
: "${DATA_DIR:=data/}"
: "${OUTPUT_DIR:=runs/v3-base-rtd}"
: "${GLOBAL_BATCH:=8192}"
: "${MICRO_BATCH:=64}"
: "${MAX_STEPS:=500000}"
: "${EXTRA_ARGS:=}"
source "${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/pretrain_common.sh"
