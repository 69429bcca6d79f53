#!/usr/bin/env bash
# The main job on the embedded default, end to end on whatever machine this is:
#   corpus -> tokenizer -> shards -> RTD (v3, GDES) pretraining -> conversion -> metrics
#
#   bash pretrain/run_example.sh                 # ~5 minutes on 2 CPU cores
#   MAX_STEPS=2000 WORK=runs/example2 bash pretrain/run_example.sh
#   QUICK=1 WORK=runs/quick bash pretrain/run_example.sh   # a slice of the corpus, 6 steps: ~1 minute
#
# The corpus is the project's shared corpus when ../shared/data/corpus exists, else text
# that ships with Python (pretrain/example_corpus.py); nothing is downloaded. With GPUs
# each GPU is a rank; without, 2 CPU ranks over gloo. The ranks meet on a free port
# (deberta-launch), so other jobs on the machine do not matter.
#
# Run again: each stage records its settings in a stamp beside its output (tok.settings,
# data.settings, run.settings in WORK). A stage whose settings are unchanged is skipped
# (training resumes from its newest checkpoint, up to MAX_STEPS); one whose settings changed
# (VOCAB_SIZE, SEQ_LEN, MICRO_BATCH, QUICK, the corpus) is done again from scratch, and so is
# every stage after it.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
: "${PYTHON:=python}"
: "${WORK:=runs/example}"
: "${QUICK:=0}"
if [ "$QUICK" = 1 ]; then
    : "${MAX_STEPS:=6}" "${WARMUP_STEPS:=2}" "${VOCAB_SIZE:=2000}" "${MICRO_BATCH:=4}" "${QUICK_BYTES:=400000}"
fi
: "${MAX_STEPS:=300}"          # ~4 minutes of training on 2 CPU cores
: "${WARMUP_STEPS:=30}"
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

# stage_is_current NAME OUTPUT SETTINGS: true when OUTPUT was made with SETTINGS (its stamp,
# WORK/NAME.settings, says so). Otherwise OUTPUT is removed, with a line saying why, so that
# the stage runs again; `stamp NAME SETTINGS` records the settings. Stages that resume (shards,
# training) are stamped as they start, so that a killed one resumes; the others when done.
stage_is_current() {
    local stamp="$WORK/$1.settings" output=$2 settings=$3
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$settings" ]; then
        return 0
    fi
    if [ -e "$output" ]; then
        if [ -f "$stamp" ]; then
            echo "   settings changed: was [$(cat "$stamp")], now [$settings]: redoing $output"
        else
            echo "   no record of the settings $output was made with: redoing it"
        fi
        rm -rf "$output"
    fi
    rm -f "$stamp"
    return 1
}
stamp() { printf '%s' "$2" > "$WORK/$1.settings"; }

echo "== 1/5 corpus"
INPUT=$("$PYTHON" -m pretrain.example_corpus "$WORK/corpus")
if [ "$QUICK" = 1 ]; then  # the first QUICK_BYTES of the corpus, cut at a document boundary
    INPUT=$("$PYTHON" - "$INPUT" "$WORK/corpus/quick.txt" "$QUICK_BYTES" <<'PY'
import glob, sys
from pathlib import Path
pattern, output, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
text = "".join(Path(path).read_text(encoding="utf-8") for path in sorted(glob.glob(pattern)))[:limit]
output.parent.mkdir(parents=True, exist_ok=True)
output.write_text(text[:text.rfind("\n\n") + 1], encoding="utf-8")
print(output)
PY
)
fi
echo "$INPUT"

TOKENIZER_SETTINGS="input=$INPUT quick=$QUICK${QUICK_BYTES:+ quick_bytes=$QUICK_BYTES} vocab_size=$VOCAB_SIZE"
echo "== 2/5 tokenizer (SentencePiece, $VOCAB_SIZE pieces)"
if ! stage_is_current tok "$WORK/tok" "$TOKENIZER_SETTINGS"; then
    "$PYTHON" -m data_prep tokenizer --input "$INPUT" --vocab_size "$VOCAB_SIZE" --output "$WORK/tok"
    stamp tok "$TOKENIZER_SETTINGS"
fi

SHARD_SETTINGS="$TOKENIZER_SETTINGS seq_len=$SEQ_LEN"
echo "== 3/5 shards (seq_len $SEQ_LEN)"
stage_is_current data "$WORK/data" "$SHARD_SETTINGS" || stamp data "$SHARD_SETTINGS"
"$PYTHON" -m data_prep shard --input "$INPUT" --tokenizer "$WORK/tok/spm.model" --output "$WORK/data" \
    --seq_len "$SEQ_LEN" --valid_fraction 0.02  # resumes a killed run; a finished one is left as it is
"$PYTHON" -m data_prep verify "$WORK/data"

# MAX_STEPS is not a setting of the run: a larger one continues it.
RUN_SETTINGS="$SHARD_SETTINGS micro_batch=$MICRO_BATCH ranks=$RANKS"
echo "== 4/5 pretraining: tiny DeBERTa-v3 RTD + GDES, $RANKS ranks, $MAX_STEPS steps"
if ! stage_is_current run "$WORK/run" "$RUN_SETTINGS"; then
    rm -rf "$WORK/model" "$WORK/model_hf"
    stamp run "$RUN_SETTINGS"
fi
VOCAB=$("$PYTHON" -c "from deberta import load_tokenizer; print(load_tokenizer('$WORK/tok').vocab_size)")
# 4 layers, hidden 128 (generator: 2 layers); global batch = micro x 1 x ranks sequences of SEQ_LEN tokens.
"$PYTHON" -m training.launch --num_gpus "$RANKS" pretrain/main.py --ds_config ds_configs/zero2.json \
    --model_config deberta-v3-xsmall \
    --set_model "vocab_size=$VOCAB,hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512" \
    --objective rtd --embedding_sharing gdes --data_dir "$WORK/data" --output_dir "$WORK/run" \
    --max_steps "$MAX_STEPS" --micro_batch_size "$MICRO_BATCH" --grad_accum 1 --lr 1e-3 --warmup_steps "$WARMUP_STEPS" \
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
