#!/bin/bash
# Tokenize a corpus into packed token-id shards on a CPU cluster, one MPI rank per core.
#
#   sbatch slurm/data_prep.sh
#   INPUT='/corpus/*.jsonl.gz' TOKENIZER=tok/spm.model OUTPUT=data/ sbatch --nodes 8 slurm/data_prep.sh
#
# Every setting can be overridden by an environment variable of the same name. The output
# bytes do not depend on the number of nodes or ranks, and a job that is cancelled or
# preempted resumes where it stopped when submitted again with the same settings
# (--requeue does that by itself). OUTPUT must be on a file system every node sees.
#SBATCH --job-name=data_prep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --mem-per-cpu=2G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

INPUT=${INPUT:-corpus/*}
TOKENIZER=${TOKENIZER:-tok/spm.model}
OUTPUT=${OUTPUT:-data/}
SEQ_LEN=${SEQ_LEN:-512}
VALID_FRACTION=${VALID_FRACTION:-0.005}
WORKERS=${WORKERS:-1}                 # processes per rank; ranks already use every core
SHARD_SIZE_MB=${SHARD_SIZE_MB:-256}
EXTRA_ARGS=${EXTRA_ARGS:---dedup}     # e.g. "--dedup --allow_unreadable"
MPI=${MPI:-pmi2}                      # srun's PMI plugin, which mpi4py's MPI uses to find the other ranks

cd "${SLURM_SUBMIT_DIR:-.}"
# One rank per core: keep the tokenizers' own thread pools from oversubscribing the node.
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

srun --mpi="$MPI" python -m data_prep shard \
    --input "$INPUT" --tokenizer "$TOKENIZER" --output "$OUTPUT" \
    --seq_len "$SEQ_LEN" --valid_fraction "$VALID_FRACTION" --workers "$WORKERS" \
    --shard_size_mb "$SHARD_SIZE_MB" $EXTRA_ARGS

# A last check on one process, so that the job fails if anything is not intact.
srun --ntasks=1 --nodes=1 python -m data_prep verify "$OUTPUT"
