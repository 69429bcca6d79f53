# The ranks of a job, started by srun on a free rendezvous port and resumed across
# allocations: sourced by slurm/pretrain_common.sh and slurm/finetune.sh, which then call
#
#   run_ranks pretrain/main.py "what the output folder holds" ARGS...
#
# One task per GPU: srun starts SLURM_NTASKS copies of the entry point; each takes its rank
# from Slurm (RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID) and they meet on the first
# node of the allocation (MASTER_ADDR:MASTER_PORT), where torch.distributed's env://
# rendezvous runs. World size = nodes x tasks per node, e.g. 16 x 16 = 256.
#
# The port is one that is free on that node now (this shell runs there), chosen again in
# every allocation unless MASTER_PORT is given; if another job takes it before rank 0 binds
# it, the ranks exit 98 (training/distributed.py) and start again on another port. A run
# that outlives its allocation goes on in the next one (slurm/requeue.sh).
source slurm/requeue.sh

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export WORLD_SIZE=$SLURM_NTASKS
_PORT_GIVEN=${MASTER_PORT:-}
_RANK_ATTEMPTS=3

run_ranks() {
    local entry=$1 output_note=$2 attempt status
    shift 2
    for ((attempt = 1; attempt <= _RANK_ATTEMPTS; attempt++)); do
        MASTER_PORT=${_PORT_GIVEN:-$("${PYTHON:-python}" -c \
            'from training.distributed import free_port; print(free_port())')}
        export MASTER_PORT
        echo "job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} nodes, ${WORLD_SIZE} ranks, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
        echo "output: ${output_note}"
        status=0
        run_requeueable srun --kill-on-bad-exit=1 bash -c \
            'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID; exec "$0" "$@"' \
            "${PYTHON:-python}" "$entry" "$@" || status=$?
        # 98: the rendezvous port was taken between its choice and the bind
        if [ "$status" != 98 ] || [ -n "$_PORT_GIVEN" ]; then return "$status"; fi
        echo "job ${SLURM_JOB_ID}: the rendezvous port was taken by another process; starting again on another"
    done
    return 98
}
