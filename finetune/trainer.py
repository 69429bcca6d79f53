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

Runs resume (``finetune.checkpoint``): every --save_interval steps, and at the end of the
step in which SIGTERM arrived, the whole state goes to OUTPUT/checkpoints; the same command
run again continues from the newest checkpoint and ends with the same figures and weights
as a run that was never stopped. All the work of a step (its update, progress line,
evaluation, best model) is done before it is saved, so resuming after step N repeats none
of it, and the logs are cut back to step N (``Outputs.truncate_to``).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from deberta import load_model, load_tokenizer, save_model
from deberta.atomic import atomic_folder
from deberta.checkpoint import read_config
from training.distributed import device, init_distributed
from training.ds_config import ConfigError, precision_of, resolve_ds_config, zero_stage
from training.engine import build_engine, gathered_parameters, release_engine
from training.outputs import Outputs, Throughput, eta
from training.sync import NonFiniteLoss, StepTotals, check_finite, stop_requested

from .checkpoint import (CHECKPOINT_FILE, CheckpointManager, EpochOrder, ResumeError, StopSignal, check_same_run,
                         run_settings)
from .config import DEFAULT_MICRO_BATCH, FinetuneConfig
from .data import FeatureDataset, Split, example_outputs, real_tokens
from .sift import SiFT
from .tasks import build_task

LOWER_IS_BETTER = ("mse", "loss")
# Test hooks. Rank 0's loss counts as NaN in this (1-based) optimizer step:
INJECT_NONFINITE_ENV = "FINETUNE_INJECT_NONFINITE_AT_STEP"
# Rank 0 SIGKILLs itself once this step's work is done, before a checkpoint of it is written:
KILL_AT_STEP_ENV = "FINETUNE_KILL_AT_STEP"
# After each of these steps (comma-separated) rank 0 waits for SIGTERM (at most HOLD_SECONDS),
# so that a test can stop a run at a step of its choosing (a Slurm requeue, a time limit):
HOLD_AT_STEPS_ENV = "FINETUNE_HOLD_AT_STEPS"
HOLD_SECONDS = 600


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: FinetuneConfig, stop: StopSignal | None = None):
        """``stop``: the SIGTERM flag of a caller that runs several trainers (--seeds); by default
        the trainer installs its own while it trains."""
        self.config = config
        self.stop = stop or StopSignal()
        run = config.run
        self.output_dir = Path(run.output_dir)
        # Once per process: runs of several seeds share the process group of the first.
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() \
            else init_distributed()
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
        if run.attention_backend is not None:
            overrides["attention_backend"] = run.attention_backend
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
        self.engine = build_engine(model, self.ds_config, config.optimizer, self.total_steps, config.engine)
        self.settings = run_settings(config, self.ds_config)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", run.keep_checkpoints, self.rank,
                                             self.world_size)
        self.sift = SiFT(self.engine.module, run.sift_lambda, run.sift_step_size,
                         run.sift_init_noise) if run.sift else None
        self.metric_for_best = run.metric_for_best or self.task.metrics[0]
        self.best: dict | None = None
        self.status = "not started"
        self.inject_step = int(os.environ.get(INJECT_NONFINITE_ENV, "0"))
        self.kill_step = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
        self.hold_steps = {int(s) for s in os.environ.get(HOLD_AT_STEPS_ENV, "").split(",") if s.strip()}

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
        """Batches in an order of (seed, epoch) only, that can start part-way into an epoch."""
        dataset = FeatureDataset(self.train_split.features)
        self.train_order = EpochOrder(len(dataset), self.config.run.seed, self.rank, self.world_size)
        # A generator of its own: each epoch's iterator draws a seed from it, and a draw from the
        # global RNG would shift dropout's stream by where in a run the epoch starts (a resume).
        return DataLoader(dataset, batch_size=self.batch_size, sampler=self.train_order, collate_fn=self.task.collate,
                          generator=torch.Generator().manual_seed(self.config.run.seed),
                          pin_memory=self.device.type == "cuda")  # pinned: copied without the host waiting

    def close(self) -> None:
        """Release the engine (``training.engine.release_engine``); the trainer is done."""
        release_engine(self.engine)

    # --- training -----------------------------------------------------------------------
    def train(self) -> dict:
        """Train (resuming from OUTPUT/checkpoints when there is one); the best evaluation.
        ``self.status`` then says how it ended: completed, preempted (saved on SIGTERM) or
        non-finite loss."""
        run = self.config.run
        with self.stop:
            position = self._resume()
            self.out.write_json("finetune_config.json", self.config.to_dict())
            self.out.write_json("ds_config.resolved.json", self.ds_config)
            self.out.print(
                f"finetune {run.task} | {self.total_steps} steps ({self.steps_per_epoch} per epoch) of "
                f"{self.batch_size} x {self.accumulation} x {self.world_size} examples | {self.precision} | "
                f"ZeRO {zero_stage(self.ds_config)} | SiFT {'on' if self.sift else 'off'} | seed {run.seed}")
            started = time.perf_counter()
            try:
                self.status = self._train_loop(position, started)
            except NonFiniteLoss:
                self.status = "non-finite loss"
                raise
            finally:
                self.out.write_json("summary.json", {
                    "status": self.status, "step": self.step, "total_steps": self.total_steps,
                    "wall_seconds": round(time.perf_counter() - started, 1), "best": self.best,
                    "settings": self.settings})
                self.out.close()
        if self.status == "preempted":
            self.out.print(f"SIGTERM: saved at step {self.step}; run the same command again to resume")
            return self.best
        if self.rank == 0:  # completed: best/ is the run's model, the optimizer state is not needed
            shutil.rmtree(self.checkpoints.directory, ignore_errors=True)
        self.out.print(f"done in {time.perf_counter() - started:.0f}s; best {self.metric_for_best} = "
                       f"{self.best[self.metric_for_best]:.4f} at step {self.best['step']}")
        return self.best

    # --- state and resume ---------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"step": self.step, "position": self.position, "best": self.best,
                "stale_evaluations": self.stale_evaluations, "evaluated_at": self.evaluated_at,
                "logged": self.logged, "world_size": self.world_size, "settings": self.settings}

    def _resume(self) -> dict:
        """Restore the newest complete checkpoint, if any; the data position to start from."""
        self.step, self.position = 0, {"epoch": 0, "consumed": 0}
        self.stale_evaluations, self.evaluated_at = 0, -1
        self.logged = {"loss": 0.0, "micro_batches": 0}  # since the last progress line
        self.checkpoints.clean_incomplete()
        dist.barrier()
        latest = self.checkpoints.latest()
        if latest is None:
            self.out.truncate_to(0)  # what an attempt stopped before its first checkpoint logged
            return self.position
        saved = json.loads((latest / CHECKPOINT_FILE).read_text(encoding="utf-8"))["trainer"]
        if saved["world_size"] != self.world_size:
            raise ResumeError(f"{latest} was written by {saved['world_size']} ranks and this run has "
                              f"{self.world_size}: ZeRO partitions the optimizer state by rank. Resume with "
                              f"{saved['world_size']} ranks, or start a new run with another --output_dir")
        check_same_run(saved["settings"], self.settings, latest, self.output_dir, self.config.run.force_resume,
                       self.out.print)
        state = self.checkpoints.load({"": self.engine}, latest, universal=False)
        self.step, self.position, self.best = state["step"], state["position"], state["best"]
        self.stale_evaluations, self.evaluated_at = state["stale_evaluations"], state["evaluated_at"]
        self.logged = state["logged"]
        self.out.truncate_to(self.step)
        self.out.print(f"resumed from {latest}: step {self.step}/{self.total_steps}, epoch "
                       f"{self.position['epoch'] + 1}, {self.position['consumed']} examples of it done")
        return self.position

    def _save(self) -> None:
        path = self.checkpoints.save({"": self.engine}, self.step, self._trainer_state())
        self.out.print(f"saved checkpoint {path}")

    # --- training -----------------------------------------------------------------------
    def _micro_batches(self, position: dict):
        """(epoch, batch, whether it ends its epoch) from ``position`` on, epoch after epoch."""
        epoch, consumed = position["epoch"], position["consumed"]
        while True:
            self.train_order.set_position(epoch, consumed)
            last = len(self.train_loader) - 1
            for i, batch in enumerate(self.train_loader):
                yield epoch, batch, i == last
            epoch, consumed = epoch + 1, 0

    def _train_loop(self, position: dict, started: float) -> str:
        """Optimizer steps until the last (or early stopping, or SIGTERM: then "preempted")."""
        run = self.config.run
        totals, micro_in_step, epoch_ended = StepTotals(self.device), 0, False
        throughput, start_step = Throughput(0.0), self.step
        self.engine.train()
        for epoch, batch, ends_epoch in self._micro_batches(position):
            boundary = self.engine.is_gradient_accumulation_boundary()
            loss, tokens = self._train_micro_batch(batch)
            if self.inject_step == self.step + 1 and micro_in_step == 0 and self.rank == 0:
                loss = loss * float("nan")
            totals.add_loss(loss)
            totals.add({"loss": loss, "micro_batches": 1, "tokens": tokens})
            micro_in_step += 1
            consumed = self.position["consumed"] + self.batch_size * self.world_size
            self.position = {"epoch": epoch + 1, "consumed": 0} if ends_epoch else {"epoch": epoch,
                                                                                    "consumed": consumed}
            epoch_ended = epoch_ended or ends_epoch
            if not boundary:
                self.engine.step()  # counts the micro-batch; no update
                continue
            reduced = totals.reduce(self.stop.requested)  # every rank agrees before the update
            check_finite(reduced, self.step + 1, self.precision,
                         f"Lower --lr or check the data (the best model so far: {self.output_dir / 'best'}).")
            self.engine.step()
            self.step, micro_in_step = self.step + 1, 0
            self.logged["loss"] += float(reduced["loss"])
            self.logged["micro_batches"] += int(reduced["micro_batches"])
            throughput.add(int(reduced["tokens"]), 0.0)
            if self.step % run.log_interval == 0 or self.step == self.total_steps:
                self._log_training(epoch, self.logged["loss"] / max(1, self.logged["micro_batches"]), throughput,
                                   started, start_step)
                self.logged = {"loss": 0.0, "micro_batches": 0}
            if (self.step % run.eval_interval == 0) if run.eval_interval else epoch_ended:
                self._evaluate_and_keep_best(self.step, epoch + 1)
                self.engine.train()
            epoch_ended = False
            self._test_hooks()
            if self.step >= self.total_steps or self._patience_exhausted(self.stale_evaluations):
                break
            if stop_requested(reduced):
                self._save()
                return "preempted"
            if run.save_interval and self.step % run.save_interval == 0:
                self._save()
        if self._patience_exhausted(self.stale_evaluations):
            self.out.print(f"early stopping: no improvement of {self.metric_for_best} in "
                           f"{run.early_stopping_patience} evaluations")
        if self.evaluated_at != self.step:
            self._evaluate_and_keep_best(self.step, self.position["epoch"] + (self.position["consumed"] > 0))
        return "completed"

    def _test_hooks(self) -> None:
        if self.rank != 0:
            return
        if self.kill_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.step in self.hold_steps:
            self.out.print(f"test hook: holding after step {self.step} until SIGTERM")
            deadline = time.monotonic() + HOLD_SECONDS
            while not self.stop.requested and time.monotonic() < deadline:
                time.sleep(0.1)

    def _patience_exhausted(self, stale_evaluations: int) -> bool:
        patience = self.config.run.early_stopping_patience
        return patience > 0 and stale_evaluations >= patience

    def _train_micro_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward (with SiFT's adversarial term) and backward; the loss, detached, and the
        number of real tokens, both on the device."""
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        output = self.engine(**batch)
        loss = output.loss
        if self.sift is not None:
            loss = loss + self.sift.loss(lambda: self.engine(**batch).logits, output.logits,
                                         lambda perturbed, clean: self.task.divergence(perturbed, clean, batch))
        self.engine.backward(loss)
        return loss.detach().float(), real_tokens(batch)

    def _log_training(self, epoch: int, loss: float, throughput: Throughput, started: float, start_step: int) -> None:
        lr = self.engine.get_lr()[0]
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        tokens_per_s, _, _ = throughput.report()
        figures = {"step": self.step, "epoch": epoch + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "tokens_per_s": tokens_per_s}
        self.out.jsonl("metrics.jsonl", figures)
        self.out.scalars("train", {k: v for k, v in figures.items() if k not in ("step", "epoch")}, self.step)
        if self.config.run.progress_bar:
            remaining = (time.perf_counter() - started) / (self.step - start_step) * (self.total_steps - self.step)
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
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            output = self.engine(**batch)
            if not chunk:
                continue  # a filler batch, run only to keep the ranks in step
            if output.loss is not None:
                losses.append((output.loss.float().item(), len(chunk)))
            logits = output.logits.float().cpu().numpy()
            outputs.extend(zip(chunk, example_outputs(batch, logits, self.task.per_token_logits)))
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

    def _evaluate_and_keep_best(self, step: int, epoch: int) -> None:
        """Evaluate every dev split; on a new best, write results, predictions and the model.
        Counts the evaluations since the last improvement (for --early_stopping_patience)."""
        self.evaluated_at = step
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
            self.stale_evaluations += 1
            return
        self.best, self.stale_evaluations = results, 0
        test_predictions = [(split, self.task.score(split, self.predict(split)[0])[1]) for split in self.test_splits]
        if self.config.run.save_best:
            self._save_best(results)
        if self.rank == 0:
            self.out.write_json("eval_results.json", results)
            for split in self.eval_splits:
                self.task.write_predictions(split, predictions[split.name], self.output_dir)
            for split, split_predictions in test_predictions:
                self.task.write_predictions(split, split_predictions, self.output_dir)

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
