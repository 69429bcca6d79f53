"""DeBERTa pretraining entry point; the logic lives in pretrain/trainer.py.

    deberta-launch pretrain/main.py --ds_config ds_configs/zero2.json --model_config deberta-v3-base \\
        --objective rtd --data_dir data/ --output_dir runs/v3 --max_steps 500000
    deberta-launch --num_gpus 2 pretrain/main.py ...     # no GPU: 2 CPU ranks over gloo
    deepspeed --master_port 29600 pretrain/main.py ...   # DeepSpeed's launcher itself: give a free port
    deberta-launch pretrain/main.py --recipe deberta-v3-base-rtd --data_dir data/ --output_dir runs/v3
    deberta-launch pretrain/main.py --config run.yaml    # flags in a YAML/JSON file
    deberta-launch pretrain/main.py --objective mypkg.objectives:MyObjective ...
    sbatch slurm/pretrain_xxlarge.sh                     # 16 nodes x 16 GPUs

Starting again with the same --output_dir resumes from its newest complete checkpoint.
The project must be installed (`pip install -e .`): this file imports the package.
"""
from pathlib import Path

import pretrain
from pretrain.trainer import main

if __name__ == "__main__":
    if Path(pretrain.__file__).resolve().parent != Path(__file__).resolve().parent:
        raise SystemExit(f"error: {__file__} would run the pretrain package installed from "
                         f"{Path(pretrain.__file__).parent}; install this checkout: pip install -e .")
    main()
