"""Fixtures of the pretrain tests: tiny shards of the shared corpus."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pretrain_helpers import REPO, cpu_env, explain

CORPUS_FILES = ("inaugural.txt", "state_union.txt")  # ~3 MB, ~0.9 M tokens at this vocabulary


@pytest.fixture(scope="session")
def corpus_shards(tmp_path_factory) -> Path:
    """The shared corpus's inaugural and State of the Union texts, sharded with the test tokenizer."""
    corpus = REPO.parent / "shared" / "data" / "corpus"
    if not corpus.is_dir():
        pytest.skip(f"shared corpus not found at {corpus}")
    output = tmp_path_factory.mktemp("pretrain_data") / "data"
    command = [sys.executable, "-m", "data_prep", "shard", "--tokenizer", str(REPO / "tests" / "assets" / "spm.model"),
               "--output", str(output), "--seq_len", "64", "--valid_fraction", "0.05"]
    for name in CORPUS_FILES:
        command += ["--input", str(corpus / name)]
    result = subprocess.run(command, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)
    return output
