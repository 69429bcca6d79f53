"""What makes a pretraining run the same run when it resumes: the identity its checkpoints
record and compare (``training.checkpoint`` writes and reads the checkpoints themselves)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from data_prep.shard_format import sha256_file

# Model fields a resumed run may change: they shape no weight and no optimizer state.
MAY_CHANGE = frozenset({"hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout",
                        "attention_backend"})

# What a pretraining refusal adds: the one change of a run that resuming supports.
UNIVERSAL_CHECKPOINT_NOTE = (" (the weights must still fit the model). Another number of ranks is the one supported "
                             "change: --universal_checkpoint")


def run_identity(trainer_state: dict, tokenizer_sha256: Optional[str]) -> dict:
    """What a checkpoint's run is, flat by name: objective (name and options), every model
    config field that shapes weights, tokenizer, global batch and seed. The world size is
    not in it: another one is a supported change (universal checkpoints)."""
    model = dict(trainer_state["model"])
    identity = {"objective": model.pop("objective"), "global_batch": trainer_state["global_batch"],
                "seed": trainer_state["seed"], "tokenizer sha256": tokenizer_sha256}
    for part, values in model.items():
        if isinstance(values, dict):
            identity.update({f"{part}.{name}": value for name, value in values.items() if name not in MAY_CHANGE})
        else:
            identity[part] = values
    return identity


def tokenizer_digest(files: dict[str, Path]) -> str:
    """One digest of a tokenizer's files (name and contents), short enough to show."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}:{sha256_file(files[name])}\n".encode())
    return digest.hexdigest()[:16]
