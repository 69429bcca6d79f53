"""DeBERTa pretraining entry point; the logic lives in pretrain/trainer.py.

    deepspeed pretrain/main.py --ds_config ds_configs/zero2.json --model_config deberta-v3-base \\
        --objective rtd --data_dir data/ --output_dir runs/v3 --max_steps 500000
    deepspeed --num_gpus 2 pretrain/main.py ...          # no GPU: 2 CPU ranks over gloo
    deepspeed pretrain/main.py --recipe deberta-v3-base-rtd --data_dir data/ --output_dir runs/v3
    sbatch slurm/pretrain_xxlarge.sh                     # 16 nodes x 16 GPUs

Starting again with the same --output_dir resumes from its newest complete checkpoint.
"""
import sys
from pathlib import Path

# Run as a script, sys.path[0] is pretrain/ itself: its module names (config, data, ...)
# must not shadow top-level packages, and the repository root makes `pretrain` importable.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from pretrain.trainer import main  # noqa: E402

if __name__ == "__main__":
    main()
