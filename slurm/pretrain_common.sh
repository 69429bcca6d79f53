# The shared body of slurm/pretrain_*.sh (sourced after they set their defaults).
#
# One task per GPU: srun starts SLURM_NTASKS copies of pretrain/main.py; each takes its
# rank from Slurm (RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID) and they meet on the
# first node of the allocation (MASTER_ADDR:MASTER_PORT), where torch.distributed's
# env:// rendezvous runs. World size = nodes x tasks per node, e.g. 16 x 16 = 256.
#
# The port is one that is free on that node now (this shell runs there), chosen again in
# every allocation; if another job takes it before rank 0 binds it, the ranks exit 98 and
# the run starts again on another port. A run that outlives its allocation goes on in the
# next one: slurm/requeue.sh (the scripts ask for --signal=B:USR1 before the time limit).
set -euo pipefail
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}  # sbatch runs a copy of the script: find the code by the submit dir
cd "$REPO"
: "${PYTHON:=python}"
source slurm/requeue.sh

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
PORT_GIVEN=${MASTER_PORT:-}
export WORLD_SIZE=$SLURM_NTASKS
free_port() { "$PYTHON" -c 'from training.distributed import free_port; print(free_port())'; }

ARGS=(--ds_config "$DS_CONFIG" --model_config "$MODEL_CONFIG" --objective "$OBJECTIVE" --data_dir "$DATA_DIR"
      --output_dir "$OUTPUT_DIR" --max_steps "$MAX_STEPS" --global_batch_size "$GLOBAL_BATCH"
      --micro_batch_size "$MICRO_BATCH")
if [ -n "$RECIPE" ]; then ARGS=(--recipe "$RECIPE" "${ARGS[@]}"); fi
read -r -a EXTRA <<< "$EXTRA_ARGS"
# Requeue only a run that stopped early: its summary says "completed" at --max_steps.
export REQUEUE_SUMMARY="$OUTPUT_DIR/summary.json"

for attempt in 1 2 3; do
    export MASTER_PORT=${PORT_GIVEN:-$(free_port)}
    echo "job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} nodes, ${WORLD_SIZE} ranks, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
    echo "output: ${OUTPUT_DIR} (TensorBoard: ${OUTPUT_DIR}/tensorboard; the run resumes there when requeued)"
    status=0
    run_requeueable srun --kill-on-bad-exit=1 bash -c \
        'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID; exec "$0" pretrain/main.py "$@"' \
        "$PYTHON" "${ARGS[@]}" "${EXTRA[@]}" || status=$?
    # 98: the rendezvous port was taken between its choice and the bind (training.distributed)
    if [ "$status" != 98 ] || [ -n "$PORT_GIVEN" ]; then exit "$status"; fi
    echo "job ${SLURM_JOB_ID}: the rendezvous port was taken by another process; starting again on another"
done
exit 98
