"""Finetuning DeBERTa model folders: GLUE, SuperGLUE, XNLI, ANLI, SQuAD 1.1/2.0, RACE, NER and custom tables.

    python -m finetune --task sst-2 --data_dir glue/SST-2 --model models/v3 --output_dir ft/sst2

``FinetuneConfig`` holds the run's sections (the task's ``TaskConfig``, and the optimizer
and engine settings shared with pretraining), ``Trainer(config).train()`` runs it on the
shared training core (``training``) and ``close()`` releases its engine, and tasks live in
``finetune.tasks`` behind a registry.
"""
from .config import FinetuneConfig
from .trainer import Trainer

__all__ = ["FinetuneConfig", "Trainer"]
