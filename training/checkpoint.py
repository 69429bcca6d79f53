"""Run-state checkpoints that commit atomically and resume exactly, for pretraining and
finetuning alike.

Layout under ``OUTPUT/checkpoints/``::

    step_00001000/            one complete checkpoint (a DeepSpeed checkpoint folder)
        mp_rank_00_model_states.pt, *optim_states.pt ...   DeepSpeed's files
        rng_rank_00000.pt ...  the RNG states of every rank (python, numpy, torch, cuda)
        checkpoint.json        written last inside: step, samples, world size, files
    latest                     the name of the newest complete checkpoint
    .tmp-step_00002000/        a save in progress (removed when found on start)

A save writes into ``.tmp-step_N``; after every rank has written its files (barrier),
rank 0 writes ``checkpoint.json``, renames the folder to ``step_N`` and only then
replaces ``latest`` (itself through a temporary file and a rename). A save killed at any
moment therefore leaves ``latest`` on the previous complete checkpoint.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from deberta.atomic import atomic_write, fsync_dir
from deberta.errors import InputError, SettingsError, UserError

CHECKPOINT_FILE = "checkpoint.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
STEP_DIR = re.compile(r"^step_(\d+)$")
UNIVERSAL_SUFFIX = "_universal"
FORMAT_VERSION = 1

# Test hook: rank 0 SIGKILLs itself inside the save of this step, after the files are
# written and before the commit, so tests can check that a killed save loses nothing.
KILL_IN_SAVE_ENV = "PRETRAIN_KILL_IN_SAVE_AT_STEP"


class ResumeError(SettingsError, RuntimeError):
    """A checkpoint that cannot be resumed from as asked."""


class DamagedCheckpoint(InputError):
    """A complete checkpoint whose files changed after the save (truncated, overwritten)."""


class SaveError(UserError):
    """A checkpoint that could not be written (a full disk, a quota); the previous one stays."""

    every_rank = False  # the rank that could not write says so


def describe_write_error(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"{error.filename}: {error.strerror}" if error.filename else (error.strerror or str(error))
    # torch's zip writer: "[enforce fail at inline_container.cc:...] ... file write failed" and the like
    detail = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return f"a write failed, most likely for lack of space: {detail}"


def check_same_run(saved: dict, current: dict, checkpoint: Path, output_dir: Path, force: bool, log,
                   note: str = "") -> None:
    """Refuse to resume ``checkpoint`` (or to redo a completed run) with changed settings,
    naming each as ``name old -> new`` (``force``: only log them); ``note`` ends the message.
    A name on one side only is a field that this version of the code added or dropped since
    the checkpoint was written, not a change of the run."""
    changed = [f"{name} {saved[name]!r} -> {current[name]!r}" for name in sorted(set(saved) & set(current))
               if saved[name] != current[name]]
    if not changed:
        return
    listing = ", ".join(changed)
    if force:
        log(f"--force_resume: resuming {checkpoint} with changed settings: {listing}")
        return
    raise ResumeError(f"{checkpoint} was trained with other settings ({listing}); resuming would mix two runs. "
                      f"Start a new run with another --output_dir than {output_dir}, or resume anyway with "
                      f"--force_resume{note}")


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def engine_tag(tag: str, engine_name: str) -> str:
    """Where an objective's engine keeps its DeepSpeed files inside checkpoint ``tag``."""
    return f"{tag}/{engine_name}" if engine_name else tag


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    """Saves and restores the engine, the trainer's counters and every rank's RNG."""

    def __init__(self, directory: str | Path, keep: int, rank: int, world: int):
        self.directory = Path(directory)
        self.keep, self.rank, self.world = keep, rank, world

    # --- discovery ----------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir()
                 if p.is_dir() and STEP_DIR.match(p.name) and (p / CHECKPOINT_FILE).is_file()]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Optional[Path]:
        pointer = self.directory / LATEST
        if pointer.is_file():
            path = self.directory / pointer.read_text(encoding="utf-8").strip()
            if (path / CHECKPOINT_FILE).is_file():
                return path
        complete = self.complete()  # no pointer (or a dangling one): the newest complete folder
        return complete[-1] if complete else None

    def clean_incomplete(self) -> None:
        """Rank 0, at start: remove what killed saves left behind."""
        if self.rank != 0 or not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.name.startswith(TMP_PREFIX) or (path.is_dir() and STEP_DIR.match(path.name)
                                                     and not (path / CHECKPOINT_FILE).is_file()):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()

    # --- save ---------------------------------------------------------------------
    def save(self, engines: dict, step: int, trainer_state: dict) -> Path:
        """``engines``: name -> DeepSpeed engine; the one named "" writes into the checkpoint
        folder itself, any other into a sub-folder of its name."""
        tag = tag_of(step)
        final, tmp = self.directory / tag, self.directory / (TMP_PREFIX + tag)
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        dist.barrier()
        try:
            for name, engine in engines.items():
                engine.save_checkpoint(str(self.directory), tag=engine_tag(tmp.name, name),
                                       client_state={"trainer": trainer_state}, save_latest=False)
            torch.save(rng_state(), tmp / f"rng_rank_{self.rank:05d}.pt")
        except (OSError, RuntimeError) as error:  # torch's writer reports a full disk as a RuntimeError
            raise SaveError(f"saving the checkpoint of step {step} into {tmp} failed ({describe_write_error(error)}). "
                            f"Nothing already saved is touched: {self.latest() or 'no checkpoint'} is still the "
                            f"latest; free space (or raise the quota) and run the same command again to resume "
                            f"from it") from error
        dist.barrier()
        if self.rank == 0:
            if os.environ.get(KILL_IN_SAVE_ENV) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            atomic_write(tmp / CHECKPOINT_FILE, json.dumps(
                {"format_version": FORMAT_VERSION, "step": step, "world_size": self.world,
                 "trainer": trainer_state, "files": files}, indent=1) + "\n")
            if final.exists():  # a checkpoint of this step from an earlier attempt
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.directory)
            atomic_write(self.directory / LATEST, tag + "\n")
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    # --- load ---------------------------------------------------------------------
    def saved_trainer_state(self, path: Path) -> dict:
        """The trainer state recorded with checkpoint ``path`` (its checkpoint.json), read without
        loading any weight: what a resume compares with its own settings first."""
        info = self._info(path)
        # Rank 0 compares every file's size with the record (one stat per file, not one per
        # file and rank) and tells the others, so that all stop together, before any load.
        problem = [self._size_problem(path, info["files"]) if self.rank == 0 else None]
        if dist.is_initialized() and self.world > 1:
            dist.broadcast_object_list(problem, src=0)
        if problem[0]:
            raise self.damaged(path, problem[0])
        return info["trainer"]

    def _info(self, path: Path) -> dict:
        try:
            info = json.loads((path / CHECKPOINT_FILE).read_text(encoding="utf-8"))
            _ = info["files"], info["trainer"], info["world_size"]
        except (ValueError, KeyError, TypeError) as error:
            raise self.damaged(path, f"{path / CHECKPOINT_FILE} is not readable ({error})") from None
        return info

    @staticmethod
    def _size_problem(path: Path, files: dict) -> Optional[str]:
        for name, size in files.items():
            found = (path / name).stat().st_size if (path / name).is_file() else None
            if found != size:
                return f"{path / name}: {'missing' if found is None else f'{found} bytes'}, saved with {size}"
        return None

    def damaged(self, path: Path, what: str) -> DamagedCheckpoint:
        earlier = [p for p in self.complete() if p != path and int(STEP_DIR.match(p.name).group(1)) <
                   int(STEP_DIR.match(path.name).group(1))] if STEP_DIR.match(path.name) else []
        fallback = (f"it takes {earlier[-1].name}, the newest checkpoint before it" if earlier
                    else "there is no earlier checkpoint (training starts anew)")
        return DamagedCheckpoint(f"checkpoint {path} is damaged: {what}. Move it aside (mv {path} {path}.damaged) "
                                 f"and run the same command again: {fallback}")

    def load(self, engines: dict, path: Path, universal: bool) -> dict:
        """Restore the engines and RNG from ``path``; returns the trainer state saved with it."""
        info = self._info(path)
        if info.get("format_version") != FORMAT_VERSION:
            raise ResumeError(f"{path / CHECKPOINT_FILE}: format_version {info.get('format_version')}, "
                              f"this code reads {FORMAT_VERSION}")
        same_topology = info["world_size"] == self.world
        universal_path = path.with_name(path.name + UNIVERSAL_SUFFIX)
        convert = (f"  python -m deepspeed.checkpoint.ds_to_universal --input_folder {path} "
                   f"--output_folder {universal_path} --inject_missing_state")
        if not same_topology and not universal:
            raise ResumeError(
                f"{path} was written by {info['world_size']} ranks and this run has {self.world}. ZeRO "
                f"partitions optimizer state by rank, so it cannot be loaded as it is. Either run with "
                f"{info['world_size']} ranks, or convert it to a DeepSpeed universal checkpoint:\n{convert}\n"
                f"and resume with --universal_checkpoint true (keep the global batch; RNG streams restart).")
        if universal and not universal_path.is_dir():
            raise ResumeError(f"--universal_checkpoint true: {universal_path} not found; create it with\n{convert}")
        tag = (universal_path if universal else path).name
        try:
            for name, engine in engines.items():
                loaded, client = engine.load_checkpoint(str(self.directory), tag=engine_tag(tag, name),
                                                        load_optimizer_states=True, load_lr_scheduler_states=True)
                if loaded is None:
                    raise ResumeError(f"DeepSpeed could not load the checkpoint of engine {name or 'model'!r} in "
                                      f"{path}")
            if not universal:
                set_rng_state(torch.load(path / f"rng_rank_{self.rank:05d}.pt", weights_only=False))
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            if isinstance(error, ResumeError):
                raise
            # Files of the right size that do not read back (overwritten in place).
            detail = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise self.damaged(path, f"a file does not read back ({type(error).__name__}: {detail})") from error
        return client["trainer"] if client and "trainer" in client else info["trainer"]
