"""The pretraining loop: data -> objective -> DeepSpeed engine, with evaluation,
checkpoints, preemption and non-finite-loss handling. ``pretrain/main.py`` only calls
``main()``.

One optimizer step = ``accumulation`` micro-batches on every rank:
    samples per step (G) = micro x accumulation x ranks
    tokens per step      = G x seq_len (less padding)
Per step, one all-reduce carries the loss terms, accuracies, token counts and two flags
(a non-finite loss, a SIGTERM on some rank), so every rank takes the same decision
before the update: stop on a non-finite loss (fp32/bf16; fp16 lets the loss scaler skip
the step), or save and exit 0 on SIGTERM.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from data_prep import ShardedDataset
from deberta import load_tokenizer

from .checkpoint import CheckpointManager, ResumeError
from .config import TrainConfig, parse_args
from .data import TRAIN_STREAM, VALID_STREAM, MaskedSequences, TrainOrder, train_loader, valid_batches
from .engine import ConfigError, build_engine, resolve_ds_config, write_resolved_config, zero_stage
from .masking import Masker
from .metrics import AUC_BINS, Outputs, Throughput, all_reduce_sum, auc_from_histograms, eta, \
    forward_flops_per_token
from .objectives import RTDObjective, build_objective, discriminator_config, generator_config

# Test hook: rank 0 multiplies its loss by NaN in this (1-based) step.
INJECT_NONFINITE_ENV = "PRETRAIN_INJECT_NONFINITE_AT_STEP"
# Fields of the per-step reduction, summed over micro-batches and ranks.
STEP_FIELDS = ("loss", "mlm_loss", "rtd_loss", "mlm_correct", "mlm_count", "rtd_correct", "rtd_count",
               "replaced", "tokens", "micro_batches", "nonfinite", "sigterm", "data_wait")


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        run = config.run
        deepspeed.init_distributed()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(get_accelerator().device_name(), get_accelerator().current_device()) \
            if get_accelerator().device_name() == "cuda" else torch.device("cpu")
        self.output_dir = Path(run.output_dir)
        self.out = Outputs(self.output_dir, self.rank, run.tensorboard)

        # Data and tokenizer, checked against each other and against the model.
        train = ShardedDataset(config.data.data_dir, "train")
        if run.tokenizer:
            train.check_tokenizer(run.tokenizer)  # another vocabulary would misread the ids
        tokenizer_path = run.tokenizer or str(train.tokenizer_dir)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.model_config = config.model_config()
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"model vocab_size {self.model_config.vocab_size} < tokenizer vocab_size "
                              f"{self.tokenizer.vocab_size} ({tokenizer_path}): token ids would overflow the "
                              f"embedding; set --set_model vocab_size={self.tokenizer.vocab_size} or more")
        masker = Masker(config.masking, self.tokenizer, run.seed)
        pad = self.tokenizer.pad_token_id
        self.train_set = MaskedSequences(train, masker, TRAIN_STREAM, pad)
        self.valid_set = MaskedSequences(ShardedDataset(config.data.data_dir, "valid"), masker, VALID_STREAM, pad) \
            if "valid" in train.manifest["splits"] else None
        self.seq_len = self.train_set.sequences.seq_len

        # Model, engine. Every rank builds the same initial weights from the seed.
        torch.manual_seed(run.seed)
        model = build_objective(config.objective, self.model_config)
        if run.activation_checkpointing:
            for module in model.modules():
                if hasattr(module, "gradient_checkpointing_enable"):
                    module.gradient_checkpointing_enable()
        self.ds_config = resolve_ds_config(run.ds_config, run, config.optimizer, config.checkpoint, self.world)
        self.global_batch = self.ds_config["train_batch_size"]
        self.micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.accumulation = self.ds_config["gradient_accumulation_steps"]
        self.precision = "fp16" if self.ds_config["fp16"]["enabled"] else \
            "bf16" if self.ds_config["bf16"]["enabled"] else "fp32"
        self.engine = build_engine(model, self.ds_config, config.optimizer, run.max_steps)
        torch.manual_seed(run.seed * 1000 + self.rank + 1)  # dropout and sampling differ across ranks

        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", config.checkpoint.keep_checkpoints,
                                             self.rank, self.world)
        self.step, self.consumed, self.skipped, self.tokens_seen = 0, 0, 0, 0
        self.last_eval: dict = {}
        self.last_step_record: dict = {}
        self.sigterm = False
        self.inject_step = int(os.environ.get(INJECT_NONFINITE_ENV, "0"))
        self.flops_per_token = self._flops_per_token()

    # --- set-up helpers -----------------------------------------------------------
    def _flops_per_token(self) -> float:
        """Training FLOPs per token: 3 x forward (the backward pass costs about twice the forward)."""
        fraction = self.config.masking.mask_prob
        if self.config.objective.objective == "mlm":
            forward = forward_flops_per_token(self.model_config, self.seq_len, fraction, mlm_head=True)
        else:
            generator = generator_config(self.config.objective, self.model_config)
            forward = forward_flops_per_token(generator, self.seq_len, fraction, mlm_head=True) + \
                forward_flops_per_token(discriminator_config(self.model_config), self.seq_len, fraction, mlm_head=False)
        return 3 * forward

    def describe_model(self) -> dict:
        """What conversion needs to rebuild the models from the checkpoint alone."""
        info = {"objective": self.config.objective.objective, "model_config": self.model_config.to_dict()}
        if isinstance(self.engine.module, RTDObjective):
            info.update(discriminator_config=discriminator_config(self.model_config).to_dict(),
                        generator_config=generator_config(self.config.objective, self.model_config).to_dict(),
                        embedding_sharing=self.config.objective.embedding_sharing)
        return info

    def parameter_count(self) -> int:
        # ZeRO-3 leaves each rank a shard; ds_numel is the full size.
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())

    def trainer_state(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed, "skipped_steps": self.skipped,
                "tokens_seen": self.tokens_seen, "global_batch": self.global_batch, "world_size": self.world,
                "zero_stage": zero_stage(self.ds_config), "precision": self.precision, "seed": self.config.run.seed,
                "model": self.describe_model(), "config": self.config.to_dict()}

    def resume(self) -> None:
        self.checkpoints.clean_incomplete()
        dist.barrier()
        latest = self.checkpoints.latest()
        if latest is None:
            self.out.print(f"starting a new run in {self.output_dir}")
            return
        state = self.checkpoints.load(self.engine, latest, self.config.checkpoint.universal_checkpoint)
        if state["seed"] != self.config.run.seed:
            raise ResumeError(f"{latest} was trained with --seed {state['seed']}, this run has "
                              f"{self.config.run.seed}: the data order and masking would change")
        self.step, self.consumed = state["step"], state["consumed_samples"]
        self.skipped, self.tokens_seen = state["skipped_steps"], state["tokens_seen"]
        self.out.print(f"resumed from {latest}: step {self.step}, {self.consumed:,} samples consumed")

    def save(self) -> Path:
        path = self.checkpoints.save(self.engine, self.step, self.trainer_state())
        if self.rank == 0:
            self.tokenizer.save(_ensure_dir(path / "tokenizer"))
        dist.barrier()
        self.out.print(f"saved checkpoint {path}")
        return path

    # --- the loop -----------------------------------------------------------------
    def train(self) -> int:
        run = self.config.run
        self.resume()
        if self.rank == 0:
            write_resolved_config(self.ds_config, _ensure_dir(self.output_dir) / "ds_config.resolved.json")
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.out.print(
            f"{self.config.objective.objective} | {self.world} ranks | global batch {self.global_batch} = micro "
            f"{self.micro} x accumulation {self.accumulation} x {self.world} ranks | seq {self.seq_len} | "
            f"{self.precision} | ZeRO {zero_stage(self.ds_config)} | {self.parameter_count() / 1e6:.2f}M "
            f"parameters | TensorBoard: {self.out.tensorboard_dir}")
        order = TrainOrder(len(self.train_set), run.seed, self.micro, self.accumulation, self.rank, self.world)
        batches = iter(train_loader(self.train_set, order, self.consumed, self.config.data,
                                    pin_memory=self.device.type == "cuda"))
        if self.step == 0:
            self.evaluate()
        throughput, started, start_step = Throughput(self.flops_per_token), time.perf_counter(), self.step
        exit_code = 0
        try:
            while self.step < run.max_steps:
                totals = self.train_step(batches)
                throughput.add(int(totals["tokens"]), totals["data_wait"] / self.world)
                if totals["sigterm"]:
                    self.out.print(f"SIGTERM: saving at step {self.step} and exiting")
                    self.save()
                    break
                if self.step % run.log_interval == 0 or self.step == run.max_steps:
                    rate = (time.perf_counter() - started) / max(1, self.step - start_step)
                    self.log_progress(totals, throughput, rate * (run.max_steps - self.step))
                if self.step % run.eval_interval == 0 or self.step == run.max_steps:
                    self.evaluate()
                if self.step % self.config.checkpoint.save_interval == 0 or self.step == run.max_steps:
                    self.save()
        except NonFiniteLoss as error:
            self.out.print(f"ERROR: {error}")
            exit_code = 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.out.summary({
            "status": "non-finite loss" if exit_code else ("preempted" if self.sigterm else "completed"),
            "step": self.step, "max_steps": run.max_steps, "consumed_samples": self.consumed,
            "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped,
            "wall_seconds": round(time.perf_counter() - started, 1), "last_eval": self.last_eval,
            "checkpoint": str(self.checkpoints.latest()), "tensorboard": str(self.out.tensorboard_dir)})
        self.out.print(f"run summary: {self.output_dir / 'summary.json'}")
        self.out.close()
        return exit_code

    def _on_sigterm(self, signum, frame):
        self.sigterm = True

    def train_step(self, batches) -> dict:
        """One optimizer step of ``accumulation`` micro-batches; returns the reduced totals."""
        engine, local = self.engine, dict.fromkeys(STEP_FIELDS, 0.0)
        skipped_before = engine.skipped_steps
        for micro_step in range(self.accumulation):
            waited = time.perf_counter()
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
            local["data_wait"] += time.perf_counter() - waited
            loss, parts = engine(**batch)
            if self.inject_step == self.step + 1 and micro_step == 0 and self.rank == 0:
                loss = loss * float("nan")
            local["loss"] += loss.item()
            local["nonfinite"] += 0.0 if math.isfinite(loss.item()) else 1.0
            local["tokens"] += batch["attention_mask"].sum().item()
            local["micro_batches"] += 1
            for name in ("mlm_loss", "rtd_loss", "mlm_correct", "mlm_count", "rtd_correct", "rtd_count", "replaced"):
                if name in parts:
                    local[name] += float(parts[name])
            if micro_step == self.accumulation - 1:  # before the update: agree over ranks
                local["sigterm"] = float(self.sigterm)
                totals = dict(zip(STEP_FIELDS, all_reduce_sum([local[k] for k in STEP_FIELDS], self.device)))
                self._check_finite(totals["nonfinite"])
            engine.backward(loss)
            engine.step()  # the update happens in the last micro-step's call
        self.step += 1
        self.consumed += self.global_batch
        self.tokens_seen += int(totals["tokens"])
        overflowed = engine.skipped_steps > skipped_before
        if overflowed:
            self.skipped += 1
            self.out.print(f"step {self.step}: fp16 overflow, update skipped, loss scale now "
                           f"{self._loss_scale()} ({self.skipped} skipped so far)")
        self._log_step(totals, overflowed)
        return totals

    def _check_finite(self, nonfinite: float) -> None:
        """fp32/bf16: a non-finite loss in any micro-batch on any rank stops every rank
        before the update. fp16: the loss scaler skips the step instead."""
        if nonfinite and self.precision != "fp16":
            latest = self.checkpoints.latest()
            raise NonFiniteLoss(
                f"non-finite loss in step {self.step + 1} ({self.precision}); stopped before the update. "
                f"Last checkpoint: {latest or 'none'}. Lower --lr, check the data, or resume from the "
                f"checkpoint with another --seed.")

    def _loss_scale(self):
        """fp16's dynamic loss scale (None in fp32/bf16)."""
        return float(self.engine.optimizer.cur_scale) if self.precision == "fp16" else None

    def _log_step(self, totals: dict, overflowed: bool) -> None:
        micro = totals["micro_batches"]
        record = {"step": self.step, "loss": totals["loss"] / micro, "mlm_loss": totals["mlm_loss"] / micro,
                  "mlm_acc": totals["mlm_correct"] / max(1, totals["mlm_count"]),
                  "lr": self.engine.get_lr()[0], "samples": self.consumed, "skipped": overflowed}
        if self.config.objective.objective == "rtd":
            record.update(rtd_loss=totals["rtd_loss"] / micro,
                          rtd_acc=totals["rtd_correct"] / max(1, totals["rtd_count"]),
                          replaced_fraction=totals["replaced"] / max(1, totals["rtd_count"]))
        self.out.jsonl("metrics.jsonl", record)
        self.last_step_record = record

    def log_progress(self, totals: dict, throughput: Throughput, remaining_s: float) -> None:
        record = self.last_step_record
        tokens_per_s, tflops, data_wait = throughput.report()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        scale = self._loss_scale()
        self.out.scalars("train", {
            **{k: v for k, v in record.items() if k not in ("step", "skipped")},
            "grad_norm": grad_norm, "loss_scale": scale, "skipped_steps": self.skipped,
            "tokens_per_s": tokens_per_s, "model_tflops": tflops, "data_wait_fraction": data_wait}, self.step)
        parts = f"mlm {record['mlm_loss']:.3f} acc {record['mlm_acc']:.3f}"
        if "rtd_loss" in record:
            parts += f" | rtd {record['rtd_loss']:.4f} acc {record['rtd_acc']:.3f}"
        self.out.print(
            f"step {self.step}/{self.config.run.max_steps} | loss {record['loss']:.4f} | {parts} | lr "
            f"{record['lr']:.3g} | grad norm {grad_norm if grad_norm is None else f'{grad_norm:.3f}'}"
            f"{'' if scale is None else f' | scale {scale:g}'} | skipped {self.skipped} | "
            f"{tokens_per_s:,.0f} tok/s | {tflops:.3f} TFLOP/s | data wait {data_wait:.0%} | samples {self.consumed:,} | "
            f"ETA {eta(remaining_s)}")

    # --- evaluation ---------------------------------------------------------------
    def evaluate(self) -> dict:
        if self.valid_set is None or len(self.valid_set) == 0:
            return {}
        engine, rtd = self.engine, self.config.objective.objective == "rtd"
        sums = dict.fromkeys(("mlm_loss", "mlm_correct", "mlm_count", "rtd_loss", "rtd_correct", "rtd_count"), 0.0)
        positive = torch.zeros(AUC_BINS, dtype=torch.float64)
        negative = torch.zeros(AUC_BINS, dtype=torch.float64)
        engine.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        # The generator's sampling draws from a private, fixed stream: the same validation
        # replacements every time, and the training RNG is left untouched.
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.run.seed + 7919 * (self.rank + 1))
            for batch in valid_batches(self.valid_set, self.config.data, self.micro, self.rank, self.world):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                _, parts = engine(**batch)
                sums["mlm_loss"] += float(parts["mlm_loss"]) * parts["mlm_count"]
                sums["mlm_correct"] += float(parts["mlm_correct"])
                sums["mlm_count"] += parts["mlm_count"]
                if rtd:
                    sums["rtd_loss"] += float(parts["rtd_loss"]) * parts["rtd_count"]
                    sums["rtd_correct"] += float(parts["rtd_correct"])
                    sums["rtd_count"] += parts["rtd_count"]
                    scores, targets = parts["rtd_scores"].cpu(), parts["rtd_targets"].cpu().bool()
                    positive += torch.histc(scores[targets].double(), AUC_BINS, 0, 1)
                    negative += torch.histc(scores[~targets].double(), AUC_BINS, 0, 1)
        engine.train()
        names = list(sums)
        reduced = dict(zip(names, all_reduce_sum([sums[k] for k in names], self.device)))
        result = {"step": self.step, "mlm_loss": reduced["mlm_loss"] / max(1, reduced["mlm_count"]),
                  "mlm_acc": reduced["mlm_correct"] / max(1, reduced["mlm_count"])}
        if rtd:
            histograms = torch.cat([positive, negative]).to(self.device)
            dist.all_reduce(histograms)
            result.update(rtd_loss=reduced["rtd_loss"] / max(1, reduced["rtd_count"]),
                          rtd_acc=reduced["rtd_correct"] / max(1, reduced["rtd_count"]),
                          rtd_auc=auc_from_histograms(*histograms.cpu().split(AUC_BINS)))
            result["loss"] = result["mlm_loss"] + self.config.objective.rtd_lambda * result["rtd_loss"]
        else:
            result["loss"] = result["mlm_loss"]
        self.out.jsonl("eval.jsonl", result)
        self.out.scalars("eval", {k: v for k, v in result.items() if k != "step"}, self.step)
        self.out.print("eval step {step}: ".format(**result) +
                       " | ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "step"))
        self.last_eval = result
        return result


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv=None) -> None:
    """Exit codes: 0 done (or saved on SIGTERM), 1 non-finite loss, 2 bad settings or checkpoint."""
    try:
        trainer = Trainer(parse_args(argv))
        code = trainer.train()
    except (ConfigError, ResumeError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(code)
