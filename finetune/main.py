"""Finetune a DeBERTa model folder on a task.

One device:
    python -m finetune --task sst-2 --data_dir glue/SST-2 --model models/v3 --output_dir ft/sst2
Many (DeepSpeed; ZeRO stage and precision from the JSON, batch sizes from the flags):
    deepspeed finetune/main.py --ds_config ds_configs/finetune_bf16.json --task mnli \\
        --data_dir glue/MNLI --model models/v3 --output_dir ft/mnli --batch_size 32
Your own table, no code:
    python -m finetune --task custom --train a.tsv --dev b.tsv --text_cols sentence \\
        --label_col label --model models/v3 --output_dir ft/mine
With SiFT: add --sift [--sift_lambda 1 --sift_step_size 1e-4 --sift_init_noise 1e-2].
"""
import logging
import sys

if __package__ in (None, ""):
    # Run as a script (deepspeed finetune/main.py), sys.path[0] is finetune/ itself: its
    # module names (config, data, metrics, ...) must not shadow top-level packages, and
    # the repository root makes the `finetune` package importable.
    from pathlib import Path

    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

from finetune.config import parse_args  # noqa: E402
from finetune.data import DataError  # noqa: E402
from finetune.trainer import Trainer  # noqa: E402


def main(argv=None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        Trainer(config).train()
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
