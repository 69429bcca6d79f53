#!/usr/bin/env bash
# Everything a lent GPU is for, in one short run (at most 8 minutes on one H100/H200): the
# headline figures first (so that a run cut short still reports them), finetuning on GLUE
# lengths, the other shapes, then the GPU tests, then the full training step.
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
# Installs nothing from the network and never replaces torch or Triton: the project runs
# from this checkout (PYTHONPATH), and packages the machine lacks (DeepSpeed,
# disentangled-flash, ...) come from wheels brought along in .whl/, installed without
# their dependencies into a private folder; torch, Triton and NVIDIA wheels there are skipped.
# The figures go to bench/results/*_gpu*.json and docs/benchmarks.md is rendered again:
# commit those files.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L
python -c "import torch, triton, transformers; print('torch', torch.__version__, '| triton', triton.__version__,
'| transformers', transformers.__version__, '| GPU', torch.cuda.get_device_name())"

wheels=()
for wheel in .whl/*.whl; do
    case "$(basename "$wheel")" in
        torch-*|triton-*|nvidia_*|pytorch_triton*) echo "gpu_check: not installing $wheel (the machine's own stays)" ;;
        *) [ -f "$wheel" ] && wheels+=("$wheel") ;;
    esac
done
if [ ${#wheels[@]} -gt 0 ]; then
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    python -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}" \
        && export PYTHONPATH="$PYTHONPATH:$site"   # after the checkout and before nothing of the machine's
fi

# Time: 345 + 80 + 45 s of timeouts and about 10 s of setup, so that the whole run stays
# within 8 minutes; each part that runs out of time records so and the next one starts.
# 1. Every model row group, headline first (v3-base MLM 512 bf16 batch 32), then finetuning
#    (v3-base sequence classification + AdamW on SST-2 and RTE token lengths: transformers
#    padded against ours padded, packed with cu_seqlens on sdpa and Triton, and packed
#    compiled), v3-base RTD, v3-large MLM and the 1.5B model: transformers eager / compiled /
#    disentangled-flash against ours with each attention backend and compiled; tokens/s,
#    model TFLOP/s, peak memory; then the attention alone at 512 and 2048 (ours,
#    flex_attention). The shares (bench/gpu_attention.py GROUPS: 180, 75, 28, 28, 28 and 18
#    for the attention, 357 in all) are scaled to --budget 330: about 166 s for the headline,
#    69 s for finetuning (five processes of 10-20 s, and the compiled one's two compilations
#    if the headline leaves time over), 26 s for each of the other groups and 17 s for the
#    attention, each a cumulative deadline (time a group leaves over goes to the next), and
#    15 s of margin for the last process to end. bench/results/gpu_attention_gpu.json is rewritten after
#    every measurement.
timeout 345 python -m bench.gpu_attention --budget 330 --json bench/results/gpu_attention_gpu.json \
    || echo "gpu_check: bench.gpu_attention stopped early (exit $?); what it measured is in the JSON"
# 2. The GPU tests (CUDA against the CPU reference; the fused kernels against eager). Named
#    files: other test modules import packages (jsonargparse, DeepSpeed) the machine may lack.
timeout 80 python -m pytest tests/deberta/test_gpu.py tests/deberta/test_triton_attention.py -q -m gpu \
    -p no:cacheprovider || echo "gpu_check: the GPU tests failed or ran out of time (exit $?)"
# 3. The full training step (AdamW included) against transformers in one process; needs
#    jsonargparse (bring its wheel in .whl/).
timeout 45 python -m bench.pretrain_step --seq_len 512 --batch_size 32 --precision bf16 \
    --json bench/results/pretrain_step_gpu.json || echo "gpu_check: bench.pretrain_step did not finish (exit $?)"
python -m bench.report
