#!/usr/bin/env bash
# The main job on the embedded default, end to end on whatever machine this is:
#   corpus -> tokenizer -> shards -> RTD (v3, GDES) pretraining -> conversion -> metrics
#
#   bash pretrain/run_example.sh                 # ~5 minutes on 2 CPU cores
#   MAX_STEPS=2000 WORK=runs/example2 bash pretrain/run_example.sh
#
# The corpus is the project's shared corpus when ../shared/data/corpus exists, else text
# that ships with Python (pretrain/example_corpus.py); nothing is downloaded. With GPUs
# each GPU is a rank; without, 2 CPU ranks over gloo. Run again: finished stages are
# skipped and training resumes from its newest checkpoint.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
: "${PYTHON:=python}"
: "${WORK:=runs/example}"
: "${MAX_STEPS:=300}"          # ~4 minutes of training on 2 CPU cores
: "${VOCAB_SIZE:=8000}"
: "${SEQ_LEN:=128}"
: "${MICRO_BATCH:=8}"

# Installs the project when it is missing, or installed from another checkout (the ranks
# import the installed package): torch first, the CPU build on a machine without a GPU,
# then pip install -e . -c constraints.txt (scripts/install.sh).
"$PYTHON" -c "import sys, deberta, data_prep, training, finetune, pretrain, deepspeed, jsonargparse
sys.exit(not pretrain.__file__.startswith('$REPO/'))" 2>/dev/null || PYTHON="$PYTHON" bash "$REPO/scripts/install.sh"

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    RANKS=$(nvidia-smi -L | wc -l)
else
    RANKS=2
    export DS_ACCELERATOR=cpu
fi
mkdir -p "$WORK"

echo "== 1/5 corpus"
INPUT=$("$PYTHON" -m pretrain.example_corpus "$WORK/corpus")
echo "$INPUT"

echo "== 2/5 tokenizer (SentencePiece, $VOCAB_SIZE pieces)"
if [ ! -f "$WORK/tok/spm.model" ]; then
    "$PYTHON" -m data_prep tokenizer --input "$INPUT" --vocab_size "$VOCAB_SIZE" --output "$WORK/tok"
fi

echo "== 3/5 shards (seq_len $SEQ_LEN)"
"$PYTHON" -m data_prep shard --input "$INPUT" --tokenizer "$WORK/tok/spm.model" --output "$WORK/data" \
    --seq_len "$SEQ_LEN" --valid_fraction 0.02
"$PYTHON" -m data_prep verify "$WORK/data"

echo "== 4/5 pretraining: tiny DeBERTa-v3 RTD + GDES, $RANKS ranks, $MAX_STEPS steps"
VOCAB=$("$PYTHON" -c "from deberta import load_tokenizer; print(load_tokenizer('$WORK/tok').vocab_size)")
# 4 layers, hidden 128 (generator: 2 layers); global batch = micro x 1 x ranks sequences of SEQ_LEN tokens.
deepspeed --num_gpus "$RANKS" pretrain/main.py --ds_config ds_configs/zero2.json \
    --model_config deberta-v3-xsmall \
    --set_model "vocab_size=$VOCAB,hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512" \
    --objective rtd --embedding_sharing gdes --data_dir "$WORK/data" --output_dir "$WORK/run" \
    --max_steps "$MAX_STEPS" --micro_batch_size "$MICRO_BATCH" --grad_accum 1 --lr 1e-3 --warmup_steps 30 \
    --log_interval 25 --eval_interval 100 --save_interval 100 --eval_samples 256

echo "== 5/5 conversion"
"$PYTHON" -m pretrain.convert "$WORK/run/checkpoints" --output "$WORK/model"
"$PYTHON" -m pretrain.convert "$WORK/run/checkpoints" --output "$WORK/model_hf" --format hf

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
evals = [json.loads(line) for line in (work / "run" / "eval.jsonl").read_text().splitlines()]
first, last = evals[0], evals[-1]
print("\nvalidation (step {} -> {}):".format(first["step"], last["step"]))
for key in ("loss", "mlm_loss", "mlm_acc", "rtd_loss", "rtd_acc", "rtd_auc"):
    print(f"  {key:9s} {first[key]:8.4f} -> {last[key]:8.4f}")
print(f"models: {work / 'model'} (discriminator; generator in {work / 'model' / 'generator'}), "
      f"Hugging Face format in {work / 'model_hf'}")
print(f"TensorBoard: tensorboard --logdir {work / 'run' / 'tensorboard'}")
PY
