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

Exit codes: 0 done, 1 unusable data or a non-finite loss, 2 contradictory settings.
The project must be installed (`pip install -e .`): this file imports the package.
"""
import logging
import sys
from pathlib import Path

import torch.distributed as dist

import finetune

from finetune.config import parse_args
from finetune.data import DataError
from finetune.trainer import Trainer
from training.distributed import shutdown
from training.ds_config import ConfigError
from training.sync import NonFiniteLoss


def main(argv=None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    code = 0
    try:
        Trainer(config).train()
    except (DataError, FileNotFoundError, NonFiniteLoss) as error:
        code = _error(error, 1)
    except ConfigError as error:
        code = _error(error, 2)
    finally:
        shutdown()
    return code


def _error(error: Exception, code: int) -> int:
    """One line, from rank 0 (every rank meets the same error)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"error: {error}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    if Path(finetune.__file__).resolve().parent != Path(__file__).resolve().parent:
        sys.exit(f"error: {__file__} would run the finetune package installed from "
                 f"{Path(finetune.__file__).parent}; install this checkout: pip install -e .")
    sys.exit(main())
