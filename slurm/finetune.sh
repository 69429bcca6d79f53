#!/bin/bash
# Finetuning on Slurm, one task per GPU, resumed across allocations until the run ends:
# 1 node x 8 GPUs, ZeRO-2 bf16 (ds_configs/finetune_bf16.json), MNLI by default.
#
#   TASK=mnli DATA_DIR=glue/MNLI MODEL=models/v3-large OUTPUT_DIR=ft/mnli sbatch slurm/finetune.sh
#   SEEDS=5 TASK=rte DATA_DIR=glue/RTE OUTPUT_DIR=ft/rte sbatch --ntasks-per-node=1 --gres=gpu:1 slurm/finetune.sh
#   sbatch --ntasks-per-node=2 --gres=none slurm/finetune.sh                       # CPU ranks
#
# Settings are environment variables (below); EXTRA_ARGS adds flags (e.g. "--sift --lr 7e-6").
# The task's recipe applies as on the command line. Ten minutes before the time limit Slurm
# sends USR1 to this shell (--signal): slurm/requeue.sh has every rank save at the end of its
# step and requeues the job, and the next allocation resumes the run (with SEEDS, at the seed
# that was running, skipping finished ones). Preemption's SIGTERM saves as well; --requeue lets
# Slurm requeue a preempted job. OUTPUT_DIR must be on a file system every node sees.
#SBATCH --job-name=deberta-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

: "${TASK:=mnli}"
: "${DATA_DIR:=glue/MNLI}"
: "${MODEL:=models/v3}"
: "${OUTPUT_DIR:=ft/${TASK}}"
: "${DS_CONFIG:=ds_configs/finetune_bf16.json}"
: "${SEEDS:=1}"                    # runs: N seeds from --seed (42), or a list "1,2,3"
: "${SAVE_INTERVAL:=1000}"         # optimizer steps between checkpoints (and one on the signal)
: "${EXTRA_ARGS:=}"
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}  # sbatch runs a copy of the script: find the code by the submit dir
cd "$REPO"
: "${PYTHON:=python}"
source slurm/ranks.sh  # srun on a free port, retried on a clash; requeued at the time limit

ARGS=(--ds_config "$DS_CONFIG" --task "$TASK" --data_dir "$DATA_DIR" --model "$MODEL" --output_dir "$OUTPUT_DIR"
      --seeds "$SEEDS" --save_interval "$SAVE_INTERVAL")
read -r -a EXTRA <<< "$EXTRA_ARGS"
# Requeue only a run that has not ended: one seed's summary.json, or the summary of all seeds.
if [ "$SEEDS" = 1 ]; then export REQUEUE_SUMMARY="$OUTPUT_DIR/summary.json"
else export REQUEUE_SUMMARY="$OUTPUT_DIR/seeds_summary.json"; fi

status=0
run_ranks finetune/main.py "${OUTPUT_DIR} (eval_results.json, best/; the run resumes there when requeued)" \
    "${ARGS[@]}" "${EXTRA[@]}" || status=$?
exit "$status"
