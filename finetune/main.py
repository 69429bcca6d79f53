"""Finetune a DeBERTa model folder on a task; the logic lives in finetune/trainer.py.

One device (a world of one, through the same DeepSpeed engine):
    python -m finetune --task sst-2 --data_dir glue/SST-2 --model models/v3 --output_dir ft/sst2
Many (ZeRO stage, precision and batch sizes from the JSON unless flags say otherwise):
    deepspeed finetune/main.py --ds_config ds_configs/finetune_bf16.json --task mnli \\
        --data_dir glue/MNLI --model models/v3 --output_dir ft/mnli --micro_batch_size 32
Your own table, no code:
    python -m finetune --task custom --train a.tsv --dev b.tsv --text_cols sentence \\
        --label_col label --model models/v3 --output_dir ft/mine
With SiFT: add --sift [--sift_lambda 1 --sift_step_size 1e-4 --sift_init_noise 1e-2].
Several seeds, with the median and spread: add --seeds 5 (or --seeds 1,2,3); see finetune/seeds.py.
A run stopped (SIGTERM saves at the end of the step; a kill loses the steps since the last
--save_interval checkpoint) continues when the same command is run again.

Exit codes: 0 done (or saved on SIGTERM), 1 unusable data or a non-finite loss, 2 contradictory
settings (a resume with changed settings included).
The project must be installed (`pip install -e .`): this file imports the package.
"""
import logging
import sys
from pathlib import Path

import finetune

from deberta.errors import run_command
from finetune.config import parse_args
from finetune.checkpoint import StopSignal
from finetune.seeds import run_seeds
from training.distributed import init_distributed, shutdown


def main(argv=None) -> int:
    """One ``error:`` line, from rank 0, for data, model folders and settings (``deberta.errors``)."""
    return run_command(_run, argv)


def _run(argv: list[str]) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        with StopSignal() as stop:  # SIGTERM from here on saves, even between two seeds' runs
            init_distributed()
            run_seeds(config, stop)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    if Path(finetune.__file__).resolve().parent != Path(__file__).resolve().parent:
        sys.exit(f"error: {__file__} would run the finetune package installed from "
                 f"{Path(finetune.__file__).parent}; install this checkout: pip install -e .")
    sys.exit(main())
