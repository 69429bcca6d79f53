"""The finetuning loop: data, model, optimisation, evaluation, best checkpoint.

    task files --Task.load--> Splits --DataLoader/Task.collate--> batches
    model folder --load_model(head=task.head)--> model --engine--> optimizer steps
    every epoch (or --eval_steps): evaluate dev splits; a better main metric writes
    eval_results.json, predictions_<split>.*, test-set predictions and best/

With DeepSpeed every rank trains on its share of each batch and evaluates every
world_size-th feature; rank 0 gathers the outputs, scores them and writes the files.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from deberta import load_model, load_tokenizer, read_folder, save_model

from .config import FinetuneConfig
from .data import FeatureDataset, Split
from .engine import DeepSpeedEngine, LocalEngine, init_distributed, read_ds_config
from .sift import SiFT
from .tasks import build_task

logger = logging.getLogger("finetune")

LOWER_IS_BETTER = ("mse", "loss")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.distributed = config.ds_config is not None
        if self.distributed:
            init_distributed()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        set_seed(config.seed)

        self.tokenizer = load_tokenizer(config.model)
        self.task = build_task(config, self.tokenizer)
        train_path = self.task.train_file()
        self.task.prepare(train_path)
        self.train_split = self._load("train", train_path, labelled=True, limit=config.max_train_examples)
        self.eval_splits = [self._load(name, path, True, config.max_eval_examples)
                            for name, path in self.task.eval_files().items()]
        self.test_splits = [self._load(name, path, False, 0) for name, path in self.task.test_files().items()]

        model_config, _, _ = read_folder(config.model)
        self._check_lengths(model_config)
        overrides = self.task.model_overrides()
        if config.cls_dropout is not None:
            overrides["cls_dropout"] = config.cls_dropout
        self.model = load_model(config.model, head=self.task.head, **overrides)

        # A DeepSpeed config with numbers (not "auto") for the batch sizes overrides the flags.
        ds_config = read_ds_config(config.ds_config, config, self.world_size) if self.distributed else None
        if ds_config:
            self.batch_size = ds_config["train_micro_batch_size_per_gpu"]
            self.accumulation = ds_config["gradient_accumulation_steps"]
        else:
            self.batch_size, self.accumulation = config.batch_size, config.gradient_accumulation_steps
        self.train_loader = self._train_loader()
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / self.accumulation))
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        warmup_steps = int(config.warmup_ratio * self.total_steps)
        if self.distributed:
            self.engine = DeepSpeedEngine(self.model, config, self.total_steps, warmup_steps, ds_config)
            self.precision = "bf16" if ds_config.get("bf16", {}).get("enabled") else (
                "fp16" if ds_config.get("fp16", {}).get("enabled") else "fp32")
        else:
            self.engine = LocalEngine(self.model, config, self.total_steps, warmup_steps)
            self.precision = config.precision
        self.sift = SiFT(self.engine.module, config.sift_lambda, config.sift_step_size,
                         config.sift_init_noise) if config.sift else None
        self.metric_for_best = config.metric_for_best or self.task.metrics[0]
        self.best: dict | None = None
        self.writer = None
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.output_dir)
            if config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))

    # --- set-up -------------------------------------------------------------------------
    def _load(self, name: str, path: Path, labelled: bool, limit: int) -> Split:
        split = self.task.load(name, path, labelled)
        if limit and len(split.examples) > limit:
            kept = set(range(limit))
            split.examples = split.examples[:limit]
            # Features point back at examples by position (SQuAD) or match them one to one.
            split.features = [f for i, f in enumerate(split.features) if f.get("_example", i) in kept]
        for note in split.notes:
            self.log(note)
        self.log(f"{name}: {len(split.examples)} examples, {len(split.features)} inputs from {path}")
        return split

    def _check_lengths(self, model_config) -> None:
        """Absolute position embeddings cap the length; relative-only models extrapolate."""
        needed = self.config.max_seq_length
        if model_config.position_biased_input and needed > model_config.max_position_embeddings:
            raise ValueError(f"--max_seq_length {needed} exceeds the model's max_position_embeddings="
                             f"{model_config.max_position_embeddings} (it uses absolute positions)")

    def _train_loader(self) -> DataLoader:
        dataset = FeatureDataset(self.train_split.features)
        if self.distributed:
            sampler = DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=self.config.seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(self.config.seed))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.task.collate)

    def log(self, message: str) -> None:
        if self.rank == 0:
            logger.info(message)

    # --- training -----------------------------------------------------------------------
    def train(self) -> dict:
        config = self.config
        self.log(f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch) of "
                 f"{self.batch_size} x {self.accumulation} x {self.world_size} examples, "
                 f"{self.precision}, SiFT {'on' if self.sift else 'off'}")
        progress = self._progress_bar()
        step, epoch, stale_evaluations, evaluated_at = 0, 0, 0, -1
        running_loss, running_count, started = 0.0, 0, time.time()
        while step < self.total_steps:
            if isinstance(self.train_loader.sampler, DistributedSampler):
                self.train_loader.sampler.set_epoch(epoch)
            self.engine.train()
            for batch in self.train_loader:
                running_loss += self._train_micro_batch(batch, step)
                running_count += 1
                if not self.engine.step():
                    continue
                step += 1
                if progress:
                    progress.update(1)
                if step % config.logging_steps == 0 or step == self.total_steps:
                    self._log_training(step, running_loss / running_count, progress)
                    running_loss, running_count = 0.0, 0
                if config.eval_steps and step % config.eval_steps == 0:
                    stale_evaluations = self._evaluate_and_keep_best(step, epoch + 1, stale_evaluations)
                    evaluated_at = step
                    self.engine.train()
                if step >= self.total_steps or self._patience_exhausted(stale_evaluations):
                    break
            epoch += 1
            if self._patience_exhausted(stale_evaluations):
                self.log(f"early stopping: no improvement of {self.metric_for_best} in "
                         f"{config.early_stopping_patience} evaluations")
                break
            if not config.eval_steps and evaluated_at != step:
                stale_evaluations = self._evaluate_and_keep_best(step, epoch, stale_evaluations)
                evaluated_at = step
        if evaluated_at != step:
            self._evaluate_and_keep_best(step, epoch, stale_evaluations)
        if progress:
            progress.close()
        if self.writer:
            self.writer.close()
        self.log(f"done in {time.time() - started:.0f}s; best {self.metric_for_best} = "
                 f"{self.best[self.metric_for_best]:.4f} at step {self.best['step']}")
        return self.best

    def _patience_exhausted(self, stale_evaluations: int) -> bool:
        patience = self.config.early_stopping_patience
        return patience > 0 and stale_evaluations >= patience

    def _progress_bar(self):
        if self.rank != 0 or not self.config.progress_bar:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, desc=f"finetune {self.config.task}", unit="step")

    def _train_micro_batch(self, batch: dict, step: int) -> float:
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        output = self.engine.forward(batch)
        loss = output.loss
        if self.sift is not None:
            loss = loss + self.sift.loss(lambda: self.engine.forward(batch).logits, output.logits,
                                         lambda perturbed, clean: self.task.divergence(perturbed, clean, batch))
        # fp16 overflows are the loss scaler's to skip; elsewhere a non-finite loss is a bug
        # or diverged training, and an update would only spread it into the weights.
        if self.precision != "fp16" and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step + 1}; lower --learning_rate "
                                     f"or check the inputs")
        self.engine.backward(loss)
        return loss.item()

    def _log_training(self, step: int, loss: float, progress) -> None:
        if progress:
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{self.engine.learning_rate:.2e}")
        if self.writer:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", self.engine.learning_rate, step)

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: Split) -> tuple[list[np.ndarray], float | None]:
        """The model's outputs for every feature, in order (all ranks), and the mean loss."""
        self.engine.train(False)
        indices = list(range(self.rank, len(split.features), self.world_size))
        outputs, losses = [], []
        batch_size = self.config.eval_batch_size
        # Every rank runs the same number of batches: ZeRO-3 gathers weights collectively.
        n_batches = math.ceil(math.ceil(len(split.features) / self.world_size) / batch_size)
        for b in range(n_batches):
            chunk = indices[b * batch_size:(b + 1) * batch_size]
            batch = self.task.collate([split.features[i] for i in chunk or [0]])
            batch = {k: v.to(self.engine.device) for k, v in batch.items()}
            output = self.engine.forward(batch)
            if not chunk:
                continue  # a filler batch, run only to keep the ranks in step
            if output.loss is not None:
                losses.append((output.loss.float().item(), len(chunk)))
            logits = output.logits.float().cpu().numpy()
            lengths = batch["attention_mask"].sum(-1).tolist()
            for i, index in enumerate(chunk):
                outputs.append((index, logits[i, :lengths[i]] if self.task.per_token_logits else logits[i]))
        if self.distributed:
            gathered = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, (outputs, losses))
            outputs = [o for rank_outputs, _ in gathered for o in rank_outputs]
            losses = [l for _, rank_losses in gathered for l in rank_losses]
        outputs = [logits for _, logits in sorted(outputs, key=lambda pair: pair[0])]
        mean_loss = sum(l * n for l, n in losses) / sum(n for _, n in losses) if losses else None
        return outputs, mean_loss

    def evaluate(self, split: Split) -> tuple[dict, object]:
        outputs, loss = self.predict(split)
        metrics, predictions = self.task.score(split, outputs)
        if loss is not None:
            metrics["loss"] = loss
        return metrics, predictions

    def _evaluate_and_keep_best(self, step: int, epoch: int, stale_evaluations: int) -> int:
        """Evaluate every dev split; on a new best, write results, predictions and the model.
        Returns the number of evaluations since the last improvement."""
        results, predictions = {}, {}
        for i, split in enumerate(self.eval_splits):
            metrics, predictions[split.name] = self.evaluate(split)
            prefix = "" if i == 0 else f"{split.name}/"
            results.update({prefix + k: v for k, v in metrics.items()})
        if self.metric_for_best not in results:
            raise ValueError(f"--metric_for_best {self.metric_for_best!r} is not computed for {self.config.task}; "
                             f"available: {sorted(k for k in results if '/' not in k)}")
        results.update(step=step, epoch=epoch)
        self.log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float)))
        if self.writer:
            for name, value in results.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"eval/{name}", value, step)
        if self.rank == 0:
            with open(self.output_dir / "eval_history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(results) + "\n")
        if not self._improves(results):
            return stale_evaluations + 1
        self.best = results
        test_predictions = [(split, self.task.score(split, self.predict(split)[0])[1]) for split in self.test_splits]
        if self.config.save_best:
            with self.engine.gathered_parameters():
                if self.rank == 0:
                    save_model(self.engine.module, self.output_dir / "best", self.tokenizer,
                               extra={"finetune": {**self.task.metadata(), "step": step, "results": results}})
        if self.rank == 0:
            (self.output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            for split in self.eval_splits:
                self.task.write_predictions(split, predictions[split.name], self.output_dir)
            for split, split_predictions in test_predictions:
                self.task.write_predictions(split, split_predictions, self.output_dir)
        return 0

    def _improves(self, results: dict) -> bool:
        if self.best is None:
            return True
        value, best = results[self.metric_for_best], self.best[self.metric_for_best]
        return value < best if self.metric_for_best in LOWER_IS_BETTER else value > best
