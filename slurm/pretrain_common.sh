# The shared body of slurm/pretrain_*.sh (sourced after they set their defaults).
#
# How the ranks start and meet, and how a run outlives its allocation: slurm/ranks.sh (the
# scripts ask for --signal=B:USR1 before the time limit).
set -euo pipefail
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}  # sbatch runs a copy of the script: find the code by the submit dir
cd "$REPO"
: "${PYTHON:=python}"
source slurm/ranks.sh

ARGS=(--ds_config "$DS_CONFIG" --model_config "$MODEL_CONFIG" --objective "$OBJECTIVE" --data_dir "$DATA_DIR"
      --output_dir "$OUTPUT_DIR" --max_steps "$MAX_STEPS" --global_batch_size "$GLOBAL_BATCH"
      --micro_batch_size "$MICRO_BATCH")
if [ -n "$RECIPE" ]; then ARGS=(--recipe "$RECIPE" "${ARGS[@]}"); fi
read -r -a EXTRA <<< "$EXTRA_ARGS"
# Requeue only a run that stopped early: its summary says "completed" at --max_steps.
export REQUEUE_SUMMARY="$OUTPUT_DIR/summary.json"

status=0
run_ranks pretrain/main.py "${OUTPUT_DIR} (TensorBoard: ${OUTPUT_DIR}/tensorboard; the run resumes there when requeued)" \
    "${ARGS[@]}" "${EXTRA[@]}" || status=$?
exit "$status"
