"""Units: the shard format, packing, and reading documents in pieces."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.inputs import PieceReader, ProblemLog, find_inputs, normalize_text, plan_pieces
from data_prep.shard_format import INDEX_MAGIC, Packing, ShardIndex, smallest_uint_dtype
from data_prep.tokenizer_training import MAX_SENTENCE_BYTES, bottom_k_sample, training_sentences

from data_prep_helpers import blank_line_documents


def test_smallest_dtype_holds_the_vocabulary():
    assert smallest_uint_dtype(256) == np.uint8
    assert smallest_uint_dtype(257) == np.uint16
    assert smallest_uint_dtype(65536) == np.uint16
    assert smallest_uint_dtype(128001) == np.uint32


def test_packing_budgets_cls_and_sep():
    packing = Packing(seq_len=6, cls_id=1, sep_id=2)
    text = np.arange(10, 20, dtype=np.uint16)        # 10 tokens, 4 per sequence
    packed = packing.pack(text, np.dtype(np.uint16))
    assert packing.num_sequences(len(text)) == 3
    assert packed.tolist() == [1, 10, 11, 12, 13, 2, 1, 14, 15, 16, 17, 2, 1, 18, 19, 2]
    with pytest.raises(ValueError, match="no room"):
        Packing(2, 1, 2)


def test_index_round_trip_and_damage(tmp_path):
    index = ShardIndex(2, 8, 5, 3, 30, 18, 2, 48, np.array([31, 40], dtype="<u8"))
    path = tmp_path / "x.idx"
    path.write_bytes(index.to_bytes())
    read = ShardIndex.read(path)
    assert read.num_sequences == 3 and read.document_starts.tolist() == [31, 40]
    path.write_bytes(index.to_bytes()[:-3])
    with pytest.raises(ValueError, match="announces"):
        ShardIndex.read(path)
    path.write_bytes(b"NOTMAGIC" + index.to_bytes()[len(INDEX_MAGIC):])
    with pytest.raises(ValueError, match="magic"):
        ShardIndex.read(path)


def _documents_of_pieces(path, piece_bytes):
    pieces = plan_pieces(find_inputs([str(path)]), piece_bytes)
    texts = []
    for piece in pieces:
        texts += [text for _, text in PieceReader(piece, "text", ProblemLog(), path.parent).documents()]
    return len(pieces), [normalize_text(t) for t in texts]


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 5, 7, 16, 1000])
def test_text_pieces_read_each_document_once(tmp_path, piece_bytes):
    # Blank lines of several kinds, CRLF, leading and trailing blank lines, a long line.
    text = ("\n\nfirst doc\nstill first\n\n  \t \nsecond\r\n\r\nthird " + "x" * 50 +
            "\n \n\n\nfourth\nend\n\n")
    path = tmp_path / "docs.txt"
    path.write_bytes(text.encode())
    _, whole = _documents_of_pieces(path, 1 << 30)
    assert whole == ["first doc\nstill first", "second", "third " + "x" * 50, "fourth\nend"]
    count, pieced = _documents_of_pieces(path, piece_bytes)
    assert pieced == whole and count == -(-len(text) // piece_bytes)


def test_pieces_of_a_real_file_match_a_whole_file_reader(corpus):
    path = corpus / "inaugural.txt"
    expected = [normalize_text(d) for d in blank_line_documents(path)]
    count, pieced = _documents_of_pieces(path, 50_000)
    assert count > 10 and pieced == expected


def test_jsonl_pieces_read_each_line_once(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"text": "document {i}"}}\n' for i in range(50)))
    _, pieced = _documents_of_pieces(path, 37)
    assert pieced == [f"document {i}" for i in range(50)]


def test_normalize_text():
    assert normalize_text("  a \r\nb\t \rc  \n\n") == "a\nb\nc"
    assert normalize_text("e\u0301") == "\u00e9"          # NFC


def test_training_sentences_cut_long_lines():
    long_line = " ".join(f"Sentence number {i} is here." for i in range(400))   # ~11 KB on one line
    sentences = list(training_sentences([long_line + "\nshort paragraph"]))
    assert all(len(s.encode()) <= MAX_SENTENCE_BYTES for s in sentences)
    assert " ".join(sentences[:-1]) == long_line and sentences[-1] == "short paragraph"
    giant_word = "y" * 10_000
    assert "".join(training_sentences([giant_word])) == giant_word


def test_bottom_k_sample_is_reproducible_and_order_free():
    sentences = [f"s{i}" for i in range(1000)]
    sample = bottom_k_sample(sentences, 100, seed=0)
    assert len(sample) == 100
    assert bottom_k_sample(reversed(sentences), 100, seed=0) == sample
    assert bottom_k_sample(sentences, 100, seed=1) != sample
