"""Writes that are never seen half-done: the one helper for model folders, checkpoints,
manifests and run files.

A file is written under a temporary name unique to the process, flushed to disk, and
renamed over the final name (a rename within one folder is atomic on POSIX): a reader
sees the old file or the new one, never a mix, and a process killed mid-write leaves at
most a ``*.tmp.PID`` file that the next writer ignores.

    atomic_write(path, "text")            # str or bytes
    with atomic_file(path) as tmp:        # for writers that want a path (safetensors, torch.save)
        save_file(state, str(tmp))
"""
from __future__ import annotations

import contextlib
import os
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
