"""``shard`` writes the bytes it always has: a change to reading, normalising, encoding,
splitting or packing that moves a single byte fails here, however fast it is.

The expected hashes were recorded from the shard code of commit 69f107f on the same
generated input (fixed tokenizer tests/assets/spm.model); a deliberate change of the
format must record them again and say why.
"""
from __future__ import annotations

import hashlib
import json
import random
import unicodedata

import numpy as np
import pytest

from data_prep import normalize_text
from data_prep.encoding import DIGEST_BYTES, EncodedBatch, single_core_encoder, valid_documents
from deberta.tokenizer import load_tokenizer

from data_prep_helpers import TINY_SPM, run_cli

WORDS = ("the", "of", "and", "people", "government", "naïve", "Straße", "東京", "café", "e\u0301te\u0301",
         "zzqx", "1789", "Union,", "liberty.", "œuvre", "—", "“quoted”", "ﬁne", "Ångström", "x²")

# sha256 of the .bin and .idx files, in name order, and of the manifest without paths.
EXPECTED_SHARDS = "66598d995100920a48b4c6358f90eb096c112c38e1b19cbf21376e099f79368a"
EXPECTED_MANIFEST = "e168fa3bad9ef693c1fd484a204187df0d6309b8fd6706267641a222f37add70"


def _document(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 12)):
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        lines.append(line + rng.choice(("", "", "", "  ", "\t", " \u3000")))   # trailing blanks are cut
    return "\n".join(lines)


def write_corpus(folder) -> None:
    """About 1.5 MB in four files: text with blank and trailing space, CRLF line ends, NFD
    letters, invalid UTF-8, documents that encode to nothing, and JSON lines."""
    rng = random.Random(14)
    folder.mkdir()
    for number in range(2):
        documents = [_document(rng) for _ in range(700)]
        documents[100] = "\u200b"                              # no token after encoding
        documents[200] = "broken \udcff byte"                   # written as a lone 0xff
        text = "\n\n \n".join(documents) + "\n"
        data = text.encode("utf-8", "surrogateescape")
        (folder / f"part-{number}.txt").write_bytes(data)
    (folder / "crlf.txt").write_bytes("\r\n\r\n".join(_document(rng) for _ in range(300)).replace("\n", "\r\n")
                                      .encode())
    records = [{"text": _document(rng)} for _ in range(300)]
    records[10] = {"text": "lone \ud800 surrogate"}
    records[20] = {"text": "\u200b"}
    (folder / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def _manifest_digest(manifest: dict, inputs) -> str:
    """The manifest's content without the absolute paths of this run's folders."""
    kept = {key: manifest[key] for key in ("settings", "vocab_size", "special_ids", "dtype", "counts", "splits")}
    kept["problems"] = [{**p, "where": p["where"].replace(str(inputs), "IN")} for p in manifest["problems"]]
    kept["inputs"] = [{"name": i["path"].rsplit("/", 1)[-1], "bytes": i["bytes"]} for i in manifest["inputs"]]
    kept["tokenizer"] = manifest["tokenizer"]["files"]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def test_shard_writes_the_recorded_bytes(tmp_path):
    inputs, output = tmp_path / "in", tmp_path / "data"
    write_corpus(inputs)
    run_cli("shard", "--input", f"{inputs}/*", "--tokenizer", TINY_SPM, "--output", output, "--seq_len", 64,
            "--valid_fraction", 0.3, "--shard_size_mb", 0.25, "--piece_size_mb", 0.25, "--workers", 2,
            "--progress_interval", 1000)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["problems"] == {"empty_document": 3, "invalid_utf8": 3}
    shards = sorted([*output.glob("*.bin"), *output.glob("*.idx")])
    assert len(shards) == 2 * sum(len(split["shards"]) for split in manifest["splits"].values()) > 8
    digest = hashlib.sha256()
    for path in shards:
        digest.update(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    assert digest.hexdigest() == EXPECTED_SHARDS
    assert _manifest_digest(manifest, inputs) == EXPECTED_MANIFEST


@pytest.mark.parametrize("valid_fraction", [0.0, 0.005, 0.3, 0.5, 1 - 2**-53])
def test_split_rule_on_a_batch_is_the_exact_integer_rule(valid_fraction):
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, size=(4096, DIGEST_BYTES), dtype=np.uint8)
    threshold = valid_fraction * 2.0**64
    # Digests whose leading number sits right at the threshold, where a float comparison would err.
    for row, leading in enumerate(int(threshold) + offset for offset in (-2, -1, 0, 1, 2)):
        if 0 <= leading < 2**64:
            digests[row, :8] = np.frombuffer(leading.to_bytes(8, "little"), dtype=np.uint8)
    expected = [int.from_bytes(bytes(d[:8]), "little") < threshold for d in digests]
    assert valid_documents(digests.tobytes(), valid_fraction).tolist() == expected


def _normalize_line_by_line(text: str) -> str:
    """The definition of normalize_text, line by line (it takes shortcuts)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", "\n".join(line.rstrip() for line in text.split("\n")).strip())


def test_normalize_text_keeps_its_definition():
    rng = random.Random(0)
    pieces = ["a", " ", "\n", "\n\n", "\r", "\r\n", "\t", "\u3000", "\x85", "e\u0301", "\x1c", "\u2028", "\xa0", "Straße"]
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert normalize_text(text) == _normalize_line_by_line(text), repr(text)


def test_arrays_and_lists_from_the_tokenizer_give_the_same_batch():
    """Ids as arrays per document (SentencePiece >= 0.2.1) or as Python lists (older ones, and
    Hugging Face tokenizers) become the same batch."""
    texts = [_document(random.Random(n)) for n in range(50)] + ["\u200b", "zzqx 東京"]
    batch = single_core_encoder(str(TINY_SPM))(texts)
    from_lists = EncodedBatch.from_lists(load_tokenizer(TINY_SPM).spm.encode(texts))
    assert batch.lengths.dtype == from_lists.lengths.dtype == np.dtype("<u4")
    assert batch.lengths.tolist() == from_lists.lengths.tolist() and batch.lengths[-2] == 0
    assert batch.ids.tolist() == from_lists.ids.tolist() and len(batch.ids) == batch.lengths.sum() > 1000
