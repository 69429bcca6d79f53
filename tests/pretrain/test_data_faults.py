"""Data that lies, met by pretraining: a shard altered after it was written (ids in range,
so only its hash tells) is refused at start, once, under the real launcher; token ids
outside the vocabulary stop every rank before the update, naming the shard and sequence."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pretrain_helpers import REPO, cpu_env, deepspeed_command, explain, make_word_shards, train_args

from data_prep.checks import VERIFIED_STAMP

pytestmark = pytest.mark.slow


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_an_altered_shard_is_refused_once_under_the_launcher(tmp_path):
    data = make_word_shards(tmp_path, seed=0)
    shard = data / "train-00000.bin"
    altered = bytearray(shard.read_bytes())
    altered[1001] ^= 0x01  # one bit of one token id: still a valid id, only the hash tells
    shard.write_bytes(bytes(altered))
    result = subprocess.run(deepspeed_command(train_args(data, tmp_path / "run", max_steps=2)), cwd=REPO,
                            env=cpu_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, explain(result)
    lines = error_lines(output)
    assert len(lines) == 1 and "Traceback" not in output, explain(result)
    assert f"{shard}: sha256 differs from the manifest" in lines[0]
    assert f"python -m data_prep verify {data}" in lines[0]
    assert not (data / VERIFIED_STAMP).exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_ids_outside_the_vocabulary_stop_before_the_update_naming_the_shard(tmp_path):
    data = make_word_shards(tmp_path, seed=0)
    shard = data / "train-00000.bin"
    ids = np.memmap(shard, dtype="<u2", mode="r+")
    ids[7::64] = 4321  # one id in every sequence, past the 1001 of the vocabulary
    ids.flush()
    del ids
    manifest = json.loads((data / "manifest.json").read_text())  # a manifest that matches the bad bytes
    manifest["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "pretrain/main.py",
                             *train_args(data, run, max_steps=3, save_interval=1, verify_data="sizes")],
                            cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, explain(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, explain(result)
    assert "step 1: 8 sequence(s) with token ids outside the vocabulary; stopped before the update" in lines[0]
    assert f"vocabulary of 1001 in {shard} sequence " in lines[0] and "python -m data_prep verify" in lines[0]
    # Nothing was trained on them: no step logged, no checkpoint.
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "bad input"

