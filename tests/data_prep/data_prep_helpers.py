"""Helpers of the data_prep tests: the real corpus, running the CLI, comparing folders.

(Not a package: a tests/data_prep/__init__.py would shadow the data_prep package itself.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "corpus"
TINY_SPM = REPO / "tests" / "assets" / "spm.model"


def run_cli(*args, env: dict | None = None, check: bool = True, launcher: tuple = ()) -> subprocess.CompletedProcess:
    """``python -m data_prep ARGS`` from the repository root, as a user would run it."""
    environment = {**os.environ, **(env or {})}
    result = subprocess.run([*launcher, sys.executable, "-m", "data_prep", *map(str, args)], cwd=REPO,
                            env=environment, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"data_prep {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by relative path, for byte-for-byte comparisons."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def blank_line_documents(path: Path) -> list[str]:
    """The documents of a .txt as a simple whole-file reader sees them (an oracle for the
    piece-wise reader)."""
    documents, lines = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            lines.append(line)
        elif lines:
            documents.append("\n".join(lines))
            lines = []
    if lines:
        documents.append("\n".join(lines))
    return documents
