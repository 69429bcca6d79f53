"""The verified stamp: a full check of the shards is recorded beside the data, keyed by the
manifest and every shard file's size and mtime, so that pretraining restarts do not read
the data again; any rewrite of a file makes the stamp stale. ``verify`` also catches ids
outside the vocabulary in a shard whose manifest was made to match it."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from data_prep.checks import VERIFIED_STAMP, is_stamped, stamp_key, write_stamp
from data_prep.cli import main

SPM_MODEL = Path(__file__).resolve().parents[1] / "assets" / "spm.model"


@pytest.fixture
def data(tmp_path) -> Path:
    rng = random.Random(0)
    words = "falcon meadow quartz lantern harbor ember willow canyon".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(120)) + "\n")
    output = tmp_path / "data"
    assert main(["shard", "--input", str(corpus), "--tokenizer", str(SPM_MODEL), "--output", str(output),
                 "--seq_len", "32", "--valid_fraction", "0.1"]) == 0
    return output


def test_verify_writes_a_stamp_that_a_rewrite_makes_stale(data, capsys):
    assert main(["verify", str(data)]) == 0
    assert "pretraining will not read it all again" in capsys.readouterr().out
    key = stamp_key(data)
    assert json.loads((data / VERIFIED_STAMP).read_text())["key"] == key and is_stamped(data, key)
    shard = data / "train-00000.bin"
    status = shard.stat()
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))  # rewritten with the same bytes
    assert stamp_key(data) != key and not is_stamped(data, stamp_key(data))
    assert main(["verify", str(data), "--quick"]) == 0  # a quick check vouches for nothing
    assert not is_stamped(data, stamp_key(data))


def test_a_stamp_goes_to_the_fallback_folder_when_the_data_folder_refuses_it(data, tmp_path):
    (data / VERIFIED_STAMP).mkdir()  # a name that cannot be written as a file: the write really fails
    key = stamp_key(data)
    written = write_stamp(data, key, tmp_path / "run")
    assert written == tmp_path / "run" / f"data{VERIFIED_STAMP}"
    assert is_stamped(data, key, tmp_path / "run") and not is_stamped(data, key)


def test_verify_catches_ids_outside_the_vocabulary_behind_a_matching_manifest(data, capsys):
    shard = data / "train-00000.bin"
    ids = np.memmap(shard, dtype="<u2", mode="r+")
    ids[40] = 4000  # the test vocabulary has 1001 ids
    ids.flush()
    del ids
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(data)]) == 1
    err = capsys.readouterr().err
    assert f"{shard}: holds token id 4000, outside the vocabulary of 1001" in err
    assert not (data / VERIFIED_STAMP).exists()
