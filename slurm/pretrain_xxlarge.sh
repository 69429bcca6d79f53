#!/bin/bash
# DeBERTa-v2-xxlarge (1.5B) MLM pretraining as in the paper: 16 DGX-2 nodes x 16 V100
# 32 GB, ZeRO-2, fp16, global batch 2048 = micro 8 x accumulation 1 x 256 GPUs,
# 1M steps (docs/memory_xxlarge.md: why ZeRO-2 fits and what else would).
#
#   sbatch slurm/pretrain_xxlarge.sh
#   sbatch --nodes=2 --ntasks-per-node=8 --gres=gpu:8 slurm/pretrain_xxlarge.sh   # smaller machine
#   DATA_DIR=... OUTPUT_DIR=... MAX_STEPS=... sbatch slurm/pretrain_xxlarge.sh
#
# Nodes and GPUs per node are Slurm's own options (one task per GPU); everything else is
# an environment variable below. Ten minutes before the time limit Slurm sends USR1 to the
# batch shell (--signal=B:USR1@600): every rank saves a checkpoint at the end of its step, and
# the job requeues itself and resumes from it (same OUTPUT_DIR) until MAX_STEPS
# (slurm/requeue.sh). Preemption's SIGTERM saves as well, and --requeue brings the job back.
#SBATCH --job-name=deberta-v2-xxlarge
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=16
#SBATCH --gres=gpu:16
#SBATCH --cpus-per-task=6
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

: "${MODEL_CONFIG:=deberta-v2-xxlarge}"
: "${OBJECTIVE:=mlm}"
: "${RECIPE:=deberta-v2-xxlarge-mlm}"
: "${DS_CONFIG:=ds_configs/zero2_fp16.json}"
: "${DATA_DIR:=data/}"
: "${OUTPUT_DIR:=runs/v2-xxlarge}"
: "${GLOBAL_BATCH:=2048}"
: "${MICRO_BATCH:=8}"
: "${MAX_STEPS:=1000000}"
: "${EXTRA_ARGS:=--activation_checkpointing true}"
source "${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/pretrain_common.sh"
