#!/usr/bin/env bash
# Everything a lent GPU is for, in one short run (about 8 minutes on one H100/H200): the
# headline figures first (so that a run cut short still reports them), then the GPU tests,
# then the other bf16 figures of docs/benchmarks.md.
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

# 1. Headline: v3-base MLM, seq 512, bf16, batch 32: transformers eager / compiled /
#    disentangled-flash against ours with each attention backend; then the attention
#    alone at 512 and 2048 (ours, flex_attention).
timeout 420 python -m bench.gpu_attention --batch 32 --seq 512 --dtype bf16 --timeout 150 \
    --json bench/results/gpu_attention_gpu.json
# 2. The GPU tests (CUDA against the CPU reference; the fused kernels against eager). Named
#    files: other test modules import packages (jsonargparse, DeepSpeed) the machine may lack.
timeout 240 python -m pytest tests/deberta/test_gpu.py tests/deberta/test_triton_attention.py -q -m gpu \
    -p no:cacheprovider
# 3. The full training step (AdamW included), tokens/s and model TFLOP/s; needs jsonargparse
#    (bring its wheel in .whl/).
timeout 150 python -m bench.pretrain_step --seq_len 512 --batch_size 32 --precision bf16 \
    --json bench/results/pretrain_step_gpu.json
python -m bench.report
