"""What every task provides to the trainer, and the registry that maps names to tasks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data import DataError, Split, pack_batch, pad_batch
from ..sift import symmetric_kl

TASKS: dict[str, Callable[..., "Task"]] = {}


def register(*names: str):
    """Class decorator: make a task available under the given --task names."""
    def add(factory):
        for name in names:
            TASKS[name] = factory
        return factory
    return add


def build_task(config, tokenizer) -> "Task":
    return TASKS[config.task](config, tokenizer)


class Task:
    """A task turns files into features, features into batches, and outputs into metrics.

    Subclasses set ``head`` (the model head to load), ``default_files`` (file names in
    ``--data_dir`` per split; splits named ``dev*`` are evaluated and ``test*`` predicted)
    and ``metrics`` (the first is the one that picks the best checkpoint).
    """

    head: str = "sequence_classification"
    default_files: dict[str, str] = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    metrics: tuple[str, ...] = ("accuracy",)
    # Logits carry a length dimension ([L, ...] per feature), trimmed to each input's length.
    per_token_logits: bool = False

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer

    # --- files --------------------------------------------------------------------------
    def _data_path(self, split: str) -> Path | None:
        if self.config.data_dir is None or split not in self.default_files:
            return None
        return Path(self.config.data_dir) / self.default_files[split]

    def train_file(self) -> Path:
        path = Path(self.config.train) if self.config.train else self._data_path("train")
        if path is None or not path.exists():
            raise DataError(f"training file not found: {path} (give --train or a --data_dir with "
                            f"{self.default_files.get('train')})")
        return path

    def eval_files(self) -> dict[str, Path]:
        if self.config.dev:
            return {"dev": Path(self.config.dev)}
        files = {s: self._data_path(s) for s in self.default_files if s.startswith("dev")}
        missing = [str(p) for p in files.values() if p is None or not p.exists()]
        if not files or missing:
            raise DataError(f"evaluation file not found: {missing or list(self.default_files)} "
                            f"(give --dev or a --data_dir with it)")
        return files

    def test_files(self) -> dict[str, Path]:
        """Unlabelled splits to predict: --test, or the standard test files that exist."""
        if self.config.test:
            return {"test": Path(self.config.test)}
        if self.config.train or self.config.dev:  # explicit files: no implicit test set
            return {}
        files = {s: self._data_path(s) for s in self.default_files if s.startswith("test")}
        return {s: p for s, p in files.items() if p is not None and p.exists()}

    # --- to be provided by each task ------------------------------------------------------
    @property
    def num_labels(self) -> int:
        raise NotImplementedError

    def prepare(self, train_path: Path) -> None:
        """Learn what the training data defines (a label set) before any split is loaded."""

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        raise NotImplementedError

    def score(self, split: Split, outputs: list[np.ndarray]) -> tuple[dict[str, float], Any]:
        """Metrics of the outputs (one array per feature, in order) and the predictions."""
        raise NotImplementedError

    def write_predictions(self, split: Split, predictions: Any, folder: Path) -> Path:
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------
    def model_overrides(self) -> dict:
        return {"num_labels": self.num_labels} if self.head in ("sequence_classification",
                                                                "token_classification") else {}

    def metadata(self) -> dict:
        """Written into the best model's config.json, so predictions can be read back."""
        return {"task": self.config.task}

    def collate(self, features: list[dict]) -> dict:
        """Padded to the longest in the batch, or with --unpadded packed end to end."""
        if self.config.unpadded:
            return pack_batch(features)
        return pad_batch(features, self.tokenizer.pad_token_id)

    def divergence(self, perturbed: torch.Tensor, clean: torch.Tensor, batch: dict) -> torch.Tensor:
        """SiFT's distance between the outputs with and without the perturbation, one value
        per row that counts (SiFT sums them for its probe and averages them for its loss)."""
        return symmetric_kl(perturbed, clean, reduction="none")
