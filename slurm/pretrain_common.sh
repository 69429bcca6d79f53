# The shared body of slurm/pretrain_*.sh (sourced after they set their defaults).
#
# One task per GPU: srun starts SLURM_NTASKS copies of pretrain/main.py; each takes its
# rank from Slurm (RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID) and they meet on the
# first node of the allocation (MASTER_ADDR:MASTER_PORT), where torch.distributed's
# env:// rendezvous runs. World size = nodes x tasks per node, e.g. 16 x 16 = 256.
set -euo pipefail
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}  # sbatch runs a copy of the script: find the code by the submit dir
cd "$REPO"
: "${PYTHON:=python}"

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export WORLD_SIZE=$SLURM_NTASKS

ARGS=(--ds_config "$DS_CONFIG" --model_config "$MODEL_CONFIG" --objective "$OBJECTIVE" --data_dir "$DATA_DIR"
      --output_dir "$OUTPUT_DIR" --max_steps "$MAX_STEPS" --global_batch_size "$GLOBAL_BATCH"
      --micro_batch_size "$MICRO_BATCH")
if [ -n "$RECIPE" ]; then ARGS=(--recipe "$RECIPE" "${ARGS[@]}"); fi
read -r -a EXTRA <<< "$EXTRA_ARGS"

echo "job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} nodes, ${WORLD_SIZE} ranks, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
echo "output: ${OUTPUT_DIR} (TensorBoard: ${OUTPUT_DIR}/tensorboard; the run resumes there when requeued)"
srun --kill-on-bad-exit=1 bash -c \
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID; exec "$0" pretrain/main.py "$@"' \
    "$PYTHON" "${ARGS[@]}" "${EXTRA[@]}"
