"""The pretraining loop: data -> objective -> DeepSpeed engine(s), with evaluation,
checkpoints, preemption and non-finite-loss handling. ``pretrain/main.py`` only calls
``main()``. The loop knows objectives only through ``pretrain.objectives.Objective``.

One optimizer step = ``accumulation`` micro-batches on every rank:
    samples per step (G) = micro x accumulation x ranks
    tokens per step      = G x seq_len (less padding)
Per step, the objective's metric tensors, the token count and two flags (a non-finite
loss, a SIGTERM on some rank) cross the ranks in one all-reduce and reach the host in one
copy (``training.sync``), so every rank takes the same decision before the update: stop on
a non-finite loss (fp32/bf16; fp16 lets the loss scaler skip the step), or save and exit 0
on SIGTERM.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from data_prep import ShardedDataset
from deberta import load_tokenizer
from deberta.errors import InputError, run_command
from training.distributed import device, init_distributed, shutdown
from training.ds_config import ConfigError, precision_of, resolve_ds_config, zero_stage
from training.engine import build_engine, loss_scale, parameter_count, release_engine
from training.checkpoint import CheckpointManager, check_same_run
from training.outputs import Outputs, Throughput, eta
from training.sync import BAD_INPUT, BadInput, NonFiniteLoss, StepAgreement, StepTotals, stop_requested

from .checkpoint import UNIVERSAL_CHECKPOINT_NOTE, run_identity, tokenizer_digest
from .config import TrainConfig, parse_args
from .data import (BAD_SEQUENCE, TRAIN_STREAM, VALID_STREAM, MaskedSequences, TrainOrder, check_shards, train_loader,
                   valid_batches)
from .init_weights import build_objective
from .masking import Masker

# Test hook: rank 0 records a NaN loss in this (1-based) step, before the objective runs it.
INJECT_NONFINITE_ENV = "PRETRAIN_INJECT_NONFINITE_AT_STEP"


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        run = config.run
        self.rank, self.world = init_distributed()
        self.device = device()
        self.output_dir = Path(run.output_dir)
        self.out = Outputs(self.output_dir, self.rank, run.tensorboard)

        # Data and tokenizer, checked against each other and against the model.
        train = ShardedDataset(config.data.data_dir, "train")
        check_shards(config.data.data_dir, config.data.verify_data, self.output_dir, self.out.print)
        if run.tokenizer:
            train.check_tokenizer(run.tokenizer)  # another vocabulary would misread the ids
        tokenizer_path = run.tokenizer or str(train.tokenizer_dir)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.model_config = config.model_config(log=self.out.print)
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
        if self.model_config.position_biased_input and self.seq_len > self.model_config.max_position_embeddings:
            raise ConfigError(f"{config.data.data_dir} holds sequences of {self.seq_len} tokens, more than the model's "
                              f"{self.model_config.max_position_embeddings} absolute positions; set --set_model "
                              f"max_position_embeddings={self.seq_len}, or shard the data with a smaller --seq_len")

        # Objective and engines. Every rank builds the same initial weights from the seed.
        torch.manual_seed(run.seed)
        # --init_model / --init_generator: released weights, read only when the run starts.
        self.objective = build_objective(config, self.model_config, self.tokenizer, tokenizer_path,
                                         self.output_dir / "checkpoints", self.out.print)
        # A fixed number of MLM outputs per sequence: the same shapes every step.
        self.objective.max_predictions = config.masking.max_predictions(self.seq_len)
        if run.activation_checkpointing:
            for module in self.objective.modules():
                if hasattr(module, "gradient_checkpointing_enable"):
                    module.gradient_checkpointing_enable()
        self.ds_config = resolve_ds_config(config.engine, config.optimizer, self.world,
                                           load_universal=config.checkpoint.universal_checkpoint)
        self.global_batch = self.ds_config["train_batch_size"]
        self.micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.accumulation = self.ds_config["gradient_accumulation_steps"]
        self.precision = precision_of(self.ds_config)
        self.engines = {name: build_engine(module, self.ds_config,
                                           dataclasses.replace(config.optimizer,
                                                               **self.objective.optimizer_overrides(name)),
                                           run.max_steps, config.engine)
                        for name, module in self.objective.engine_modules().items()}
        torch.manual_seed(run.seed * 1000 + self.rank + 1)  # dropout and sampling differ across ranks

        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", config.checkpoint.keep_checkpoints,
                                             self.rank, self.world)
        self.step, self.consumed, self.skipped, self.tokens_seen = 0, 0, 0, 0
        self.last_eval: dict = {}
        self.bad_sequences = ""  # where this rank met token ids outside the vocabulary
        self.sigterm = False
        self.inject_step = int(os.environ.get(INJECT_NONFINITE_ENV, "0"))
        self.flops_per_token = self.objective.flops_per_token(self.seq_len, config.masking.mask_prob)

    # --- state ----------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed, "skipped_steps": self.skipped,
                "tokens_seen": self.tokens_seen, "global_batch": self.global_batch, "world_size": self.world,
                "zero_stage": zero_stage(self.ds_config), "precision": self.precision, "seed": self.config.run.seed,
                # what conversion needs to rebuild the models from the checkpoint alone
                "model": {"objective": self.config.run.objective, **self.objective.describe()},
                "config": self.config.to_dict()}

    def resume(self) -> None:
        self.checkpoints.clean_incomplete()
        dist.barrier()
        latest = self.checkpoints.latest()
        if latest is None:
            self.out.truncate_to(-1)  # the logs of an attempt that never saved a checkpoint
            self.out.print(f"starting a new run in {self.output_dir}")
            return
        # Compared before any weight is read: a changed shape is named, not a state_dict size mismatch.
        saved_tokenizer = latest / "tokenizer"
        check_same_run(
            run_identity(self.checkpoints.saved_trainer_state(latest),
                         tokenizer_digest(load_tokenizer(saved_tokenizer).files()) if saved_tokenizer.is_dir() else None),
            run_identity(self.trainer_state(), tokenizer_digest(self.tokenizer.files()) if saved_tokenizer.is_dir()
                         else None),
            latest, self.output_dir, self.config.checkpoint.force_resume, self.out.print, UNIVERSAL_CHECKPOINT_NOTE)
        state = self.checkpoints.load(self.engines, latest, self.config.checkpoint.universal_checkpoint)
        self.step, self.consumed = state["step"], state["consumed_samples"]
        self.skipped, self.tokens_seen = state["skipped_steps"], state["tokens_seen"]
        self.out.truncate_to(self.step)  # what the stopped attempt logged after its checkpoint
        self.out.print(f"resumed from {latest}: step {self.step}, {self.consumed:,} samples consumed")

    def save(self) -> Path:
        path = self.checkpoints.save(self.engines, self.step, self.trainer_state())
        if self.rank == 0:
            (path / "tokenizer").mkdir(exist_ok=True)
            self.tokenizer.save(path / "tokenizer")
        dist.barrier()
        self.out.print(f"saved checkpoint {path}")
        return path

    # --- the loop -----------------------------------------------------------------------
    def train(self) -> int:
        run = self.config.run
        self.resume()
        self.out.write_json("ds_config.resolved.json", self.ds_config)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.out.print(
            f"{run.objective} | {self.world} ranks | global batch {self.global_batch} = micro "
            f"{self.micro} x accumulation {self.accumulation} x {self.world} ranks | seq {self.seq_len} | "
            f"{self.precision} | ZeRO {zero_stage(self.ds_config)} | "
            f"{parameter_count(self.objective) / 1e6:.2f}M parameters | TensorBoard: {self.out.tensorboard_dir}")
        order = TrainOrder(len(self.train_set), run.seed, self.micro, self.accumulation, self.rank, self.world)
        batches = iter(train_loader(self.train_set, order, self.consumed, self.config.data,
                                    pin_memory=self.device.type == "cuda"))
        if self.step == 0:
            self.evaluate()
        throughput, started, start_step = Throughput(self.flops_per_token), time.perf_counter(), self.step
        exit_code, bad_input = 0, None
        try:
            while self.step < run.max_steps:
                figures, stop = self.train_step(batches, throughput)
                if stop:
                    self.out.print(f"SIGTERM: saving at step {self.step} and exiting")
                    self.save()
                    break
                if self.step % run.log_interval == 0 or self.step == run.max_steps:
                    rate = (time.perf_counter() - started) / max(1, self.step - start_step)
                    self.log_progress(figures, throughput, rate * (run.max_steps - self.step))
                if self.step % run.eval_interval == 0 or self.step == run.max_steps:
                    self.evaluate()
                if self.step % self.config.checkpoint.save_interval == 0 or self.step == run.max_steps:
                    self.save()
        except NonFiniteLoss as error:
            self.out.print(f"ERROR: {error}")
            exit_code = 1
        except BadInput as error:
            bad_input, exit_code = self._bad_input_error(error), 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.out.write_json("summary.json", {
            "status": ("bad input" if bad_input else "non-finite loss") if exit_code else
                      ("preempted" if self.sigterm else "completed"),
            "step": self.step, "max_steps": run.max_steps, "consumed_samples": self.consumed,
            "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped,
            "wall_seconds": round(time.perf_counter() - started, 1), "last_eval": self.last_eval,
            "checkpoint": str(self.checkpoints.latest()), "tensorboard": str(self.out.tensorboard_dir)})
        self.out.print(f"run summary: {self.output_dir / 'summary.json'}")
        self.out.close()
        if bad_input:
            raise bad_input
        return exit_code

    def close(self) -> None:
        """Release the engines (``training.engine.release_engine``); the trainer is done."""
        for engine in self.engines.values():
            release_engine(engine)

    def _on_sigterm(self, signum, frame):
        self.sigterm = True

    def train_step(self, batches, throughput: Throughput) -> tuple[dict, bool]:
        """One optimizer step of ``accumulation`` micro-batches: (reported figures, stop requested)."""
        agreement = StepAgreement(self.device, self.step + 1, self.precision,
                                  f"Last checkpoint: {self.checkpoints.latest() or 'none'}. Lower --lr, check the "
                                  f"data, or resume from the checkpoint with another --seed.", lambda: self.sigterm)
        waited, micro_batches = time.perf_counter(), []
        for _ in range(self.accumulation):
            batch = next(batches)
            bad = self._note_bad_sequences(self.train_set, batch.pop(BAD_SEQUENCE))
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            micro_batches.append(batch)
            agreement.record({"tokens": batch["attention_mask"].sum(), "micro_batches": 1, BAD_INPUT: bad})
        agreement.record({"data_wait": time.perf_counter() - waited})
        if self.inject_step == self.step + 1 and self.rank == 0:
            agreement.record({"loss": torch.tensor(float("nan"))})
        skipped_before = {name: engine.skipped_steps for name, engine in self.engines.items()}
        self.objective.train_step(micro_batches, self.engines, agreement)
        reduced = agreement.result
        self.step += 1
        self.consumed += self.global_batch
        tokens = int(reduced["tokens"])
        self.tokens_seen += tokens
        throughput.add(tokens, float(reduced["data_wait"]) / self.world)
        overflowed = [name for name, engine in self.engines.items() if engine.skipped_steps > skipped_before[name]]
        if overflowed:
            self.skipped += 1
            scales = ", ".join(f"{name or 'model'} {loss_scale(self.engines[name])}" for name in overflowed)
            self.out.print(f"step {self.step}: fp16 overflow, update skipped, loss scale now {scales} "
                           f"({self.skipped} skipped so far)")
        figures = self.objective.summarize(reduced, training=True)
        lrs = {f"{name}_lr" if name else "lr": engine.get_lr()[0] for name, engine in self.engines.items()}
        self.out.jsonl("metrics.jsonl", {"step": self.step, **figures, **lrs, "samples": self.consumed,
                                         "skipped": bool(overflowed)})
        return figures, stop_requested(reduced)

    def _note_bad_sequences(self, dataset: MaskedSequences, flags: torch.Tensor) -> int:
        """The loader's flags (a CPU tensor: no device sync) of sequences whose ids were outside the
        vocabulary; this rank remembers where they are, and the agreement stops every rank."""
        bad = flags[flags >= 0].tolist()
        if bad and not self.bad_sequences:
            self.bad_sequences = dataset.describe_bad(bad)
        return len(bad)

    def _bad_input_error(self, error: BadInput) -> InputError:
        """The rank that met the bad sequences names their shard; rank 0 says that another did."""
        if self.bad_sequences:
            found = InputError(f"{error}: {self.bad_sequences}")
            found.every_rank = False
            return found
        return InputError(f"{error} (the rank that met them names the shard); run `python -m data_prep verify "
                          f"{self.config.data.data_dir}`")

    def engine_figures(self) -> dict:
        """Learning rate, gradient norm (after the last update; None where DeepSpeed does not
        compute one) and fp16 loss scale of each engine, named after it when there are several.
        The norms may still be on the device: they come to the host together, in one copy,
        and only for the progress line."""
        figures, norms = {}, {}
        for name, engine in self.engines.items():
            prefix = f"{name}_" if name else ""
            figures[prefix + "lr"] = engine.get_lr()[0]
            norms[prefix + "grad_norm"] = engine.get_global_grad_norm()
            figures[prefix + "loss_scale"] = loss_scale(engine)
        figures.update(host_values(norms))
        return figures

    def log_progress(self, figures: dict, throughput: Throughput, remaining_s: float) -> None:
        tokens_per_s, tflops, data_wait = throughput.report()
        engines = self.engine_figures()
        self.out.scalars("train", {**figures, **engines, "skipped_steps": self.skipped, "tokens_per_s": tokens_per_s,
                                   "model_tflops": tflops, "data_wait_fraction": data_wait}, self.step)
        shown = {k: v for k, v in engines.items() if v is not None}
        self.out.print(
            f"step {self.step}/{self.config.run.max_steps} | "
            + " | ".join(f"{k} {v:.4f}" for k, v in figures.items()) + " | "
            + " | ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in shown.items())
            + f" | skipped {self.skipped} | {tokens_per_s:,.0f} tok/s | {tflops:.3f} TFLOP/s | "
            f"data wait {data_wait:.0%} | samples {self.consumed:,} | ETA {eta(remaining_s)}")

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self) -> dict:
        if self.valid_set is None or len(self.valid_set) == 0:
            return {}
        totals = StepTotals(self.device)
        for engine in self.engines.values():
            engine.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        # The objective's sampling (RTD's generator) draws from a private, fixed stream: the
        # same validation replacements every time, and the training RNG is left untouched.
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.run.seed + 7919 * (self.rank + 1))
            for batch in valid_batches(self.valid_set, self.config.data, self.micro, self.rank, self.world):
                bad = self._note_bad_sequences(self.valid_set, batch.pop(BAD_SEQUENCE))
                batch = {k: v.to(self.device) for k, v in batch.items()}
                totals.add({**self.objective.eval_batch(batch, self.engines), BAD_INPUT: bad})
        for engine in self.engines.values():
            engine.train()
        reduced = totals.reduce()
        if float(reduced.get(BAD_INPUT, 0)):
            raise self._bad_input_error(BadInput(f"evaluation at step {self.step}: {int(reduced[BAD_INPUT])} "
                                                 f"sequence(s) with token ids outside the vocabulary"))
        result = {"step": self.step, **self.objective.summarize(reduced, training=False)}
        self.out.jsonl("eval.jsonl", result)
        self.out.scalars("eval", result, self.step)
        self.out.print("eval step {step}: ".format(**result) +
                       " | ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "step"))
        self.last_eval = result
        return result


def host_values(values: dict) -> dict:
    """Scalars that may be device tensors (or None, or numbers) as floats, in one copy."""
    on_device = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    copied = dict(zip(on_device, torch.stack([v.detach().double().reshape(()) for v in on_device.values()]).tolist())) \
        if on_device else {}
    return {k: copied[k] if k in copied else (None if v is None else float(v)) for k, v in values.items()}


def main(argv=None) -> None:
    """Exit codes: 0 done (or saved on SIGTERM), 1 non-finite loss or unusable data, 2 bad settings
    or a checkpoint that cannot be resumed as asked. Errors are one line (``deberta.errors``)."""
    sys.exit(run_command(_run, argv, also=(ValueError,)))


def _run(argv: list[str]) -> int:
    config = parse_args(argv)
    try:
        return _train(config)
    finally:
        shutdown()


def _train(config: TrainConfig) -> int:
    # A function of its own: the trainer is gone (its engines released) before ``shutdown``.
    # Not after an error: the rank then reports first, before the launcher's SIGTERM to the
    # survivors of a dead rank arrives, and its process ends anyway.
    trainer = Trainer(config)
    exit_code = trainer.train()
    trainer.close()
    return exit_code
