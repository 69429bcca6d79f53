"""The finetuning loop: data, model, the shared DeepSpeed engine, evaluation, best model.

    task files --Task.load--> Splits --DataLoader/Task.collate--> batches
    model folder --load_model(head=task.head)--> model --training.engine--> optimizer steps
    every epoch (or --eval_interval): evaluate dev splits; a better main metric writes
    eval_results.json, predictions_<split>.*, test-set predictions and best/

Every run goes through ``training``'s engine, one device included (a world of one without
a launcher). Each rank trains on its share of each batch and evaluates every
world_size-th feature; rank 0 gathers the outputs, scores them and writes the files.
Per optimizer step, the micro-batch losses of every rank meet in one all-reduce before
the update (``training.sync``): a non-finite loss stops every rank together, naming the step.
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from deberta import load_model, load_tokenizer, save_model
from deberta.atomic import atomic_folder
from deberta.checkpoint import read_config
from training.distributed import device, init_distributed
from training.ds_config import ConfigError, precision_of, resolve_ds_config, zero_stage
from training.engine import build_engine, gathered_parameters
from training.outputs import Outputs, Throughput, eta
from training.sync import NonFiniteLoss, StepTotals, check_finite

from .config import DEFAULT_MICRO_BATCH, FinetuneConfig
from .data import FeatureDataset, Split
from .sift import SiFT
from .tasks import build_task

LOWER_IS_BETTER = ("mse", "loss")
# Test hook: rank 0's loss counts as NaN in this (1-based) optimizer step.
INJECT_NONFINITE_ENV = "FINETUNE_INJECT_NONFINITE_AT_STEP"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: FinetuneConfig):
        self.config = config
        run = config.run
        self.output_dir = Path(run.output_dir)
        self.rank, self.world_size = init_distributed()
        self.device = device()
        self.out = Outputs(self.output_dir, self.rank, run.tensorboard)
        set_seed(run.seed)
        self._report_recipe()

        # config.json only (the weights are read once, below): a missing or unreadable folder
        # is named as such before its tokenizer is looked for.
        model_config, _ = read_config(run.model)
        self._check_lengths(model_config)
        self.tokenizer = load_tokenizer(run.model)
        self.task = build_task(run, self.tokenizer)
        train_path = self.task.train_file()
        self.task.prepare(train_path)
        self.train_split = self._load("train", train_path, labelled=True, limit=run.max_train_examples)
        self.eval_splits = [self._load(name, path, True, run.max_eval_examples)
                            for name, path in self.task.eval_files().items()]
        self.test_splits = [self._load(name, path, False, 0) for name, path in self.task.test_files().items()]

        overrides = self.task.model_overrides()
        if run.cls_dropout is not None:
            overrides["cls_dropout"] = run.cls_dropout
        model = load_model(run.model, head=self.task.head, **overrides)
        if run.init_task_model:  # the official MNLI start of MRPC, RTE and STS-B
            from .recipes import start_from_task_model  # here: `python -m finetune.recipes` imports this package
            self.out.print(start_from_task_model(model, run.init_task_model))

        self.ds_config = resolve_ds_config(config.engine, config.optimizer, self.world_size,
                                           default_micro=DEFAULT_MICRO_BATCH)
        self.batch_size = self.ds_config["train_micro_batch_size_per_gpu"]
        self.accumulation = self.ds_config["gradient_accumulation_steps"]
        self.precision = precision_of(self.ds_config)
        self.train_loader = self._train_loader()
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / self.accumulation))
        self.total_steps = run.max_steps or max(1, math.ceil(run.epochs * self.steps_per_epoch))
        self.engine = build_engine(model, self.ds_config, config.optimizer, self.total_steps)
        self.sift = SiFT(self.engine.module, run.sift_lambda, run.sift_step_size,
                         run.sift_init_noise) if run.sift else None
        self.metric_for_best = run.metric_for_best or self.task.metrics[0]
        self.best: dict | None = None
        self.inject_step = int(os.environ.get(INJECT_NONFINITE_ENV, "0"))
        self.out.write_json("finetune_config.json", config.to_dict())
        self.out.write_json("ds_config.resolved.json", self.ds_config)

    # --- set-up -------------------------------------------------------------------------
    def _load(self, name: str, path: Path, labelled: bool, limit: int) -> Split:
        split = self.task.load(name, path, labelled)
        if limit and len(split.examples) > limit:
            kept = set(range(limit))
            split.examples = split.examples[:limit]
            # Features point back at examples by position (SQuAD) or match them one to one.
            split.features = [f for i, f in enumerate(split.features) if f.get("_example", i) in kept]
        for note in split.notes:
            self.out.print(note)
        self.out.print(f"{name}: {len(split.examples)} examples, {len(split.features)} inputs from {path}")
        return split

    def _report_recipe(self) -> None:
        """Which recipe set the defaults (finetune_config.json keeps each value and source)."""
        recipe = self.config.recipe or {"name": None, "chosen": "none given"}
        self.out.print(f"recipe: {recipe['name'] or 'none'} ({recipe['chosen']})")
        if recipe.get("starts_from") and not self.config.run.init_task_model:
            self.out.print(f"recipe {recipe['name']}: the official run starts from a model finetuned on "
                           f"{recipe['starts_from']}; give --init_task_model DIR (e.g. that run's best/) to do so")

    def _check_lengths(self, model_config) -> None:
        """Absolute position embeddings cap the length; relative-only models extrapolate."""
        needed = self.config.run.max_seq_length
        if model_config.position_biased_input and needed > model_config.max_position_embeddings:
            raise ConfigError(f"--max_seq_length {needed} exceeds the model's max_position_embeddings="
                              f"{model_config.max_position_embeddings} ({self.config.run.model} uses absolute "
                              f"positions); use --max_seq_length {model_config.max_position_embeddings} or less")

    def _train_loader(self) -> DataLoader:
        dataset = FeatureDataset(self.train_split.features)
        seed = self.config.run.seed
        if self.world_size > 1:
            sampler = DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.task.collate)

    # --- training -----------------------------------------------------------------------
    def train(self) -> dict:
        run = self.config.run
        self.out.print(
            f"finetune {run.task} | {self.total_steps} steps ({self.steps_per_epoch} per epoch) of "
            f"{self.batch_size} x {self.accumulation} x {self.world_size} examples | {self.precision} | "
            f"ZeRO {zero_stage(self.ds_config)} | SiFT {'on' if self.sift else 'off'}")
        started = time.perf_counter()
        self.step, status = 0, "completed"
        try:
            self._train_loop(started)
        except NonFiniteLoss:
            status = "non-finite loss"
            raise
        finally:
            self.out.write_json("summary.json", {
                "status": status, "step": self.step, "total_steps": self.total_steps,
                "wall_seconds": round(time.perf_counter() - started, 1), "best": self.best})
            self.out.close()
        self.out.print(f"done in {time.perf_counter() - started:.0f}s; best {self.metric_for_best} = "
                       f"{self.best[self.metric_for_best]:.4f} at step {self.best['step']}")
        return self.best

    def _train_loop(self, started: float) -> None:
        run = self.config.run
        epoch, stale_evaluations, evaluated_at = 0, 0, -1
        totals, micro_in_step = StepTotals(self.device), 0
        logged_loss, logged_micro_batches = 0.0, 0
        throughput = Throughput(0.0)
        while self.step < self.total_steps:
            if isinstance(self.train_loader.sampler, DistributedSampler):
                self.train_loader.sampler.set_epoch(epoch)
            self.engine.train()
            for batch in self.train_loader:
                boundary = self.engine.is_gradient_accumulation_boundary()
                loss = self._train_micro_batch(batch)
                if self.inject_step == self.step + 1 and micro_in_step == 0 and self.rank == 0:
                    loss = loss * float("nan")
                totals.add_loss(loss)
                totals.add({"loss": loss, "micro_batches": 1, "tokens": batch["attention_mask"].sum()})
                micro_in_step += 1
                if not boundary:
                    self.engine.step()  # counts the micro-batch; no update
                    continue
                reduced = totals.reduce()  # every rank agrees before the update
                check_finite(reduced, self.step + 1, self.precision,
                             f"Lower --lr or check the data (the best model so far: {self.output_dir / 'best'}).")
                self.engine.step()
                self.step, micro_in_step = self.step + 1, 0
                logged_loss += float(reduced["loss"])
                logged_micro_batches += int(reduced["micro_batches"])
                throughput.add(int(reduced["tokens"]), 0.0)
                if self.step % run.log_interval == 0 or self.step == self.total_steps:
                    self._log_training(epoch, logged_loss / max(1, logged_micro_batches), throughput, started)
                    logged_loss, logged_micro_batches = 0.0, 0
                if run.eval_interval and self.step % run.eval_interval == 0:
                    stale_evaluations = self._evaluate_and_keep_best(self.step, epoch + 1, stale_evaluations)
                    evaluated_at = self.step
                    self.engine.train()
                if self.step >= self.total_steps or self._patience_exhausted(stale_evaluations):
                    break
            epoch += 1
            if self._patience_exhausted(stale_evaluations):
                self.out.print(f"early stopping: no improvement of {self.metric_for_best} in "
                               f"{run.early_stopping_patience} evaluations")
                break
            if not run.eval_interval and evaluated_at != self.step:
                stale_evaluations = self._evaluate_and_keep_best(self.step, epoch, stale_evaluations)
                evaluated_at = self.step
        if evaluated_at != self.step:
            self._evaluate_and_keep_best(self.step, epoch, stale_evaluations)

    def _patience_exhausted(self, stale_evaluations: int) -> bool:
        patience = self.config.run.early_stopping_patience
        return patience > 0 and stale_evaluations >= patience

    def _train_micro_batch(self, batch: dict) -> torch.Tensor:
        """Forward (with SiFT's adversarial term) and backward; the loss, detached."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        output = self.engine(**batch)
        loss = output.loss
        if self.sift is not None:
            loss = loss + self.sift.loss(lambda: self.engine(**batch).logits, output.logits,
                                         lambda perturbed, clean: self.task.divergence(perturbed, clean, batch))
        self.engine.backward(loss)
        return loss.detach().float()

    def _log_training(self, epoch: int, loss: float, throughput: Throughput, started: float) -> None:
        lr = self.engine.get_lr()[0]
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        tokens_per_s, _, _ = throughput.report()
        figures = {"step": self.step, "epoch": epoch + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "tokens_per_s": tokens_per_s}
        self.out.jsonl("metrics.jsonl", figures)
        self.out.scalars("train", {k: v for k, v in figures.items() if k not in ("step", "epoch")}, self.step)
        if self.config.run.progress_bar:
            remaining = (time.perf_counter() - started) / self.step * (self.total_steps - self.step)
            self.out.print(f"step {self.step}/{self.total_steps} | epoch {epoch + 1} | loss {loss:.4f} | lr {lr:.3g} | "
                           f"grad norm {'-' if grad_norm is None else f'{grad_norm:.3f}'} | "
                           f"{tokens_per_s:,.0f} tok/s | ETA {eta(remaining)}")

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: Split) -> tuple[list[np.ndarray], float | None]:
        """The model's outputs for every feature, in order (all ranks), and the mean loss."""
        self.engine.eval()
        indices = list(range(self.rank, len(split.features), self.world_size))
        outputs, losses = [], []
        batch_size = self.config.run.eval_batch_size
        # Every rank runs the same number of batches: ZeRO-3 gathers weights collectively.
        n_batches = math.ceil(math.ceil(len(split.features) / self.world_size) / batch_size)
        for b in range(n_batches):
            chunk = indices[b * batch_size:(b + 1) * batch_size]
            batch = self.task.collate([split.features[i] for i in chunk or [0]])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            output = self.engine(**batch)
            if not chunk:
                continue  # a filler batch, run only to keep the ranks in step
            if output.loss is not None:
                losses.append((output.loss.float().item(), len(chunk)))
            logits = output.logits.float().cpu().numpy()
            lengths = batch["attention_mask"].sum(-1).tolist()
            for i, index in enumerate(chunk):
                outputs.append((index, logits[i, :lengths[i]] if self.task.per_token_logits else logits[i]))
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, (outputs, losses))
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
            raise ValueError(f"--metric_for_best {self.metric_for_best!r} is not computed for "
                             f"{self.config.run.task}; available: {sorted(k for k in results if '/' not in k)}")
        results.update(step=step, epoch=epoch)
        self.out.print(f"eval step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()
                                                           if isinstance(v, float)))
        self.out.jsonl("eval.jsonl", results)
        self.out.scalars("eval", results, step)
        if not self._improves(results):
            return stale_evaluations + 1
        self.best = results
        test_predictions = [(split, self.task.score(split, self.predict(split)[0])[1]) for split in self.test_splits]
        if self.config.run.save_best:
            self._save_best(results)
        if self.rank == 0:
            self.out.write_json("eval_results.json", results)
            for split in self.eval_splits:
                self.task.write_predictions(split, predictions[split.name], self.output_dir)
            for split, split_predictions in test_predictions:
                self.task.write_predictions(split, split_predictions, self.output_dir)
        return 0

    def _save_best(self, results: dict) -> None:
        """OUTPUT/best replaced whole (a kill leaves the old or the new folder, never a mix)."""
        with gathered_parameters(self.engine):  # ZeRO-3: every rank takes part in the gather
            if self.rank == 0:
                with atomic_folder(self.output_dir / "best") as folder:
                    save_model(self.engine.module, folder, self.tokenizer,
                               extra={"finetune": {**self.task.metadata(), "step": results["step"],
                                                   "results": results}})

    def _improves(self, results: dict) -> bool:
        if self.best is None:
            return True
        value, best = results[self.metric_for_best], self.best[self.metric_for_best]
        return value < best if self.metric_for_best in LOWER_IS_BETTER else value > best
