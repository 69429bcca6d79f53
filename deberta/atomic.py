"""Writes that are never seen half-done: the one helper for model folders, checkpoints,
manifests and run files.

A file is written under a temporary name unique to the process, flushed to disk, and
renamed over the final name (a rename within one folder is atomic on POSIX): a reader
sees the old file or the new one, never a mix, and a process killed mid-write leaves at
most a ``*.tmp.PID`` file that the next writer ignores.

    atomic_write(path, "text")            # str or bytes
    with atomic_file(path) as tmp:        # for writers that want a path (safetensors, torch.save)
        save_file(state, str(tmp))
    with atomic_folder(folder) as tmp:    # a whole folder (a model folder) replaced at once
        save_model(model, tmp)
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path) -> Path:
    """Unique per process, so that two processes never write into one temporary file."""
    return path.with_name(f"{path.name}.tmp.{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the folder entry itself is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it is synced and renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    The old folder is first renamed aside, then the new one into place, then the old one
    removed: a process killed in between leaves either the old or the new folder under
    ``path`` (or, in the instant between the two renames, the old one under its aside
    name ``.PATH.old.PID``), never a mix of their files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    aside = path.with_name(f".{path.name}.old.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, aside)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
