# Runs that outlive their allocation: sourced by the sbatch scripts (slurm/finetune.sh and
# slurm/pretrain_common.sh), which then start their ranks with
#
#   run_requeueable srun ... python finetune/main.py ...
#
# and ask Slurm to warn the batch shell before the time limit with
#
#   #SBATCH --signal=B:USR1@600
#   #SBATCH --requeue
#
# Time limit. On USR1 the shell sends SIGTERM to the job's steps (not to itself): every rank
# finishes the step it is in, saves a checkpoint and exits 0. The shell waits for that, then
# puts the job back in the queue (scontrol requeue); the next allocation runs the same
# command, which resumes from the checkpoint. The seconds in --signal must cover a step, an
# evaluation that falls in it and a save.
# Preemption or scancel. Slurm sends SIGTERM to the steps itself: the ranks save and exit.
# The shell does not requeue: a preempted job with --requeue is requeued by Slurm when the
# partition preempts by requeueing, and scancel means stop.
# Each line the shell prints starts with "requeue:" and is in the job's output (append it
# across allocations with --open-mode=append); SLURM_RESTART_COUNT counts the allocations.

_REQUEUE_ASKED=0   # USR1 came: requeue once the ranks have saved
_REQUEUE_SIGNAL=0  # a trapped signal interrupted `wait`

_requeue_on_time_limit() {
    _REQUEUE_ASKED=1 _REQUEUE_SIGNAL=1
    echo "requeue: job ${SLURM_JOB_ID}: the time limit is near (USR1); the ranks save and stop, then the job is requeued"
    scancel --signal=TERM "$SLURM_JOB_ID"  # every step of the job; the batch shell is left alone
}

_requeue_on_term() {
    _REQUEUE_SIGNAL=1
    echo "requeue: job ${SLURM_JOB_ID}: SIGTERM (preemption or scancel); the ranks save and stop"
}

# REQUEUE_SUMMARY (optional): the run's summary.json; a run whose summary says "completed"
# (it reached its last step as the signal came) is not requeued.
_requeue_run_completed() {
    [ -n "${REQUEUE_SUMMARY:-}" ] && [ -f "$REQUEUE_SUMMARY" ] && "${PYTHON:-python}" -c \
        'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("status") != "completed")' "$REQUEUE_SUMMARY"
}

# Run "$@" (an srun) in the background, answer the signals above, and return its exit status;
# requeue the job after USR1 when it exited 0 (it saved). A failed run is not requeued: it
# would fail the same way in the next allocation.
run_requeueable() {
    echo "requeue: job ${SLURM_JOB_ID}, allocation $(( ${SLURM_RESTART_COUNT:-0} + 1 ))"
    trap _requeue_on_time_limit USR1
    trap _requeue_on_term TERM
    "$@" &
    local pid=$! status
    while :; do  # `wait` returns early when a trapped signal arrives: wait again until the run ends
        _REQUEUE_SIGNAL=0
        status=0
        wait "$pid" || status=$?
        [ "$_REQUEUE_SIGNAL" = 1 ] || break
    done
    trap - USR1 TERM
    if [ "$_REQUEUE_ASKED" = 1 ] && [ "$status" = 0 ] && _requeue_run_completed; then
        echo "requeue: job ${SLURM_JOB_ID}: the run reached its end (${REQUEUE_SUMMARY}); not requeued"
    elif [ "$_REQUEUE_ASKED" = 1 ] && [ "$status" = 0 ]; then
        echo "requeue: job ${SLURM_JOB_ID}: saved; requeueing it to continue in a new allocation"
        scontrol requeue "$SLURM_JOB_ID"
    elif [ "$_REQUEUE_ASKED" = 1 ]; then
        echo "requeue: job ${SLURM_JOB_ID}: the run exited with status ${status}; not requeued"
    fi
    return "$status"
}
