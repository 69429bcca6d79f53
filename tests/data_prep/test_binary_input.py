"""Input that is not text (an executable renamed .txt, random bytes, UTF-16, a legacy code
page) is skipped and reported by ``shard`` and ``tokenizer`` instead of being encoded into
garbage tokens; text with a few undecodable bytes is still read."""
from __future__ import annotations

import gzip
import json
import os
import random
import sys
from pathlib import Path

import pytest

from data_prep import ShardedDataset
from data_prep.cli import main
from data_prep.inputs import BINARY_SHARE, SNIFF_BYTES, binary_reason

SPM_MODEL = Path(__file__).resolve().parents[1] / "assets" / "spm.model"


def text_corpus(path: Path, documents: int, seed: int) -> Path:
    rng = random.Random(seed)
    words = "harbour lantern meadow copper violin orchard thunder pebble canyon velvet".split()
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(25)) for _ in range(documents)) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture
def mixed_inputs(tmp_path) -> tuple[Path, list[Path]]:
    """A folder of .txt files: two of text, and four that are not."""
    folder = tmp_path / "in"
    folder.mkdir()
    text = [text_corpus(folder / "a.txt", 150, 0), text_corpus(folder / "b.txt", 150, 1)]
    (folder / "program.txt").write_bytes(Path(sys.executable).resolve().read_bytes()[:300_000])  # an ELF file
    (folder / "noise.txt").write_bytes(random.Random(2).randbytes(100_000))
    (folder / "wide.txt").write_bytes("a document in UTF-16\n\nand another\n".encode("utf-16") * 500)
    (folder / "packed.txt.gz").write_bytes(gzip.compress(random.Random(3).randbytes(50_000)))
    return folder, text


def test_binary_files_are_skipped_and_reported(mixed_inputs, tmp_path):
    folder, text = mixed_inputs
    output = tmp_path / "data"
    assert main(["shard", "--input", str(folder / "*.txt*"), "--tokenizer", str(SPM_MODEL), "--output", str(output),
                 "--seq_len", "64", "--valid_fraction", "0", "--piece_size_mb", "0.02"]) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["problems"] == {"binary_file": 4}  # one report per file, whatever its pieces
    reported = {Path(p["where"]).name: p["detail"] for p in manifest["problems"]}
    assert set(reported) == {"program.txt", "noise.txt", "wide.txt", "packed.txt.gz"}
    assert "NUL bytes" in reported["program.txt"] and "UTF-16" in reported["wide.txt"]
    assert all(detail.endswith("skipped") for detail in reported.values())
    # Only the two text files were encoded: every document of theirs, nothing else.
    assert ShardedDataset(output, "train").num_documents == 300


def test_the_tokenizer_skips_them_too(mixed_inputs, tmp_path, capsys):
    folder, _ = mixed_inputs
    assert main(["tokenizer", "--input", str(folder / "*.txt*"), "--vocab_size", "30",
                 "--output", str(tmp_path / "tok")]) == 0
    err = capsys.readouterr().err
    assert "4 input problem(s) binary_file" in err and (tmp_path / "tok" / "spm.model").is_file()


def test_what_counts_as_binary():
    text = "Über die Brücke gehen wir morgen früh, sagte sie.\n".encode()
    assert binary_reason(text * 2000) is None
    assert binary_reason(b"") is None
    # A legacy code page with a few accented letters stays text (they are reported per document)...
    latin1 = ("The caf\u00e9 opened at nine and closed at noon every day of the week.\n" * 900).encode("latin-1")
    assert binary_reason(latin1[:SNIFF_BYTES]) is None
    # ... one where most letters are not UTF-8 is not.
    assert "invalid UTF-8" in binary_reason(("\u0416\u0443\u0440\u043d\u0430\u043b " * 9000).encode("cp1251"))
    assert "NUL bytes" in binary_reason(b"text\0more")
    controls = bytes(range(1, 9)) * 40 + b"x" * (int(320 / BINARY_SHARE) - 400)
    assert binary_reason(controls) is not None


def test_a_character_cut_at_the_end_of_the_sample_is_not_an_error():
    head = ("\u00e9" * (SNIFF_BYTES // 2)).encode()[: SNIFF_BYTES - 1] + b"\xc3"
    assert len(head) == SNIFF_BYTES and binary_reason(head) is None


@pytest.mark.parametrize("name", ["program.txt", "noise.txt"])
def test_a_single_binary_input_leaves_nothing_to_shard(mixed_inputs, tmp_path, name, capsys):
    folder, _ = mixed_inputs
    code = main(["tokenizer", "--input", str(folder / name), "--output", str(tmp_path / "tok")])
    assert code == 1 and "no text found" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists() and os.listdir(tmp_path) == ["in"]
