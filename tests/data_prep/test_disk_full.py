"""A disk that fills up while ``shard`` writes: the job ends with one line naming the shard
it could not write, keeps everything finished before, and the same command, with space
again, ends with the same bytes as a run that never failed. The full disk is a file-size
limit on the real process (RLIMIT_FSIZE, SIGXFSZ ignored: the write fails with EFBIG)."""
from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPM_MODEL = REPO / "tests" / "assets" / "spm.model"  # 256 KB: the limit must let its copy through


def limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def shard(corpus: Path, output: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "data_prep", "shard", "--input", str(corpus), "--tokenizer",
                           str(SPM_MODEL), "--output", str(output), "--seq_len", "64", "--piece_size_mb", "0.05"],
                          env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size(limit) if limit else None)


@pytest.mark.slow
def test_a_full_disk_during_a_shard_write_loses_nothing(tmp_path):
    rng = random.Random(0)
    words = "falcon meadow quartz lantern harbor ember willow canyon river stone".split()
    corpus = tmp_path / "corpus.txt"  # ~0.8 MB: a 1 MB .bin, pieces of ~100 KB
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(2500)) + "\n")
    output = tmp_path / "data"

    full = shard(corpus, output, limit=400_000)
    assert full.returncode == 1, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert lines[0].startswith(f"error: {output / 'train-00000.bin'}: File too large; free space")
    assert not list(output.glob("*.bin")) and not (output / "manifest.json").exists()
    pieces = -(-corpus.stat().st_size // int(0.05 * 2**20))
    assert len(list((output / ".work" / "pieces").glob("*.json"))) == pieces  # every piece encoded is kept

    again = shard(corpus, output)
    assert again.returncode == 0, again.stderr
    clean = shard(corpus, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    for name in ("train-00000.bin", "train-00000.idx", "valid-00000.bin", "manifest.json"):
        assert (output / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
