"""End to end: text -> shards -> text, determinism across processes, resume, verify, bad input."""
from __future__ import annotations

import gzip
import json
import pickle
import shutil

import numpy as np
import pytest

from data_prep import ShardedDataset, normalize_text
from data_prep.shard_format import KILL_AFTER_COMMITS_ENV
from deberta.tokenizer import load_tokenizer

from data_prep_helpers import TINY_SPM, blank_line_documents, folder_bytes, run_cli

SMALL = ("inaugural.txt", "state_union.txt")          # 2.9 MB, 124 documents


def shard(inputs, output, *extra, **kwargs):
    return run_cli("shard", *[a for i in inputs for a in ("--input", i)], "--tokenizer", TINY_SPM,
                   "--output", output, "--progress_interval", 1000, *extra, **kwargs)


@pytest.fixture(scope="module")
def small_corpus(corpus, tmp_path_factory):
    """Two corpus files, linked (not copied) into a folder of their own."""
    folder = tmp_path_factory.mktemp("small_corpus")
    for name in SMALL:
        (folder / name).symlink_to(corpus / name)
    return folder


def test_round_trip_text_to_shards_to_text(small_corpus, tmp_path):
    shard([f"{small_corpus}/*.txt"], tmp_path / "data", "--seq_len", 64, "--valid_fraction", 0,
          "--shard_size_mb", 0.1, "--piece_size_mb", 0.25)
    tokenizer = load_tokenizer(TINY_SPM)
    documents = [normalize_text(d) for name in SMALL for d in blank_line_documents(small_corpus / name)]
    ds = ShardedDataset(tmp_path / "data", "train")
    assert ds.num_documents == len(documents) and len(ds.manifest["splits"]["train"]["shards"]) > 5
    for d, text in enumerate(documents):
        ids = tokenizer.encode(text)
        assert ds.document(d).tolist() == ids
        assert tokenizer.decode(ds.document(d)) == tokenizer.decode(ids)
    # The sequences: [CLS] 62 tokens [SEP], consecutive cuts of the concatenated documents.
    stream = np.concatenate([np.asarray(tokenizer.encode(t)) for t in documents])
    assert len(ds) == -(-len(stream) // 62) and ds.num_tokens == len(stream)
    for i in (0, 1, len(ds) // 2, len(ds) - 1):
        sequence = ds[i]
        assert sequence[0] == tokenizer.cls_token_id and sequence[-1] == tokenizer.sep_token_id
        assert sequence[1:-1].tolist() == stream[i * 62:(i + 1) * 62].tolist()
        assert len(sequence) == (64 if i < len(ds) - 1 else len(stream) - i * 62 + 2)
    assert isinstance(ds[0].base, np.memmap) or isinstance(ds[0], np.memmap)      # a view, no copy
    assert ds[-1].tolist() == ds[len(ds) - 1].tolist()
    with pytest.raises(IndexError):
        ds[len(ds)]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[5].tolist() == ds[5].tolist()
    ds.check_tokenizer(TINY_SPM)


def test_split_is_by_document_content(small_corpus, tmp_path):
    shard([f"{small_corpus}/*.txt"], tmp_path / "data", "--seq_len", 128, "--valid_fraction", 0.3)
    tokenizer = load_tokenizer(TINY_SPM)
    documents = [normalize_text(d) for name in SMALL for d in blank_line_documents(small_corpus / name)]
    train, valid = ShardedDataset(tmp_path / "data", "train"), ShardedDataset(tmp_path / "data", "valid")
    seen = [tokenizer.decode(ds.document(d)) for ds in (train, valid) for d in range(ds.num_documents)]
    assert sorted(seen) == sorted(tokenizer.decode(tokenizer.encode(t)) for t in documents)
    assert 0.15 < valid.num_documents / len(documents) < 0.45


def test_one_process_two_workers_and_two_mpi_ranks_write_the_same_bytes(corpus, tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    common = ("--seq_len", 128, "--shard_size_mb", 1, "--valid_fraction", 0.01, "--dedup")
    inputs = [f"{corpus}/*.txt"]
    shard(inputs, tmp_path / "one", *common)
    shard(inputs, tmp_path / "workers", *common, "--workers", 2, "--piece_size_mb", 1)
    shard(inputs, tmp_path / "mpi", *common, "--piece_size_mb", 0.5, launcher=("mpiexec", "-n", "2"))
    reference = folder_bytes(tmp_path / "one")
    assert len([name for name in reference if name.endswith(".bin")]) > 5
    assert folder_bytes(tmp_path / "workers") == reference
    assert folder_bytes(tmp_path / "mpi") == reference


@pytest.fixture(scope="module")
def corpus_with_copies(corpus, tmp_path_factory):
    """Three files where the inaugural addresses appear three times."""
    folder = tmp_path_factory.mktemp("copies")
    (folder / "a.txt").symlink_to(corpus / "inaugural.txt")
    (folder / "b.txt").symlink_to(corpus / "webtext.txt")
    (folder / "c.txt").write_bytes(((corpus / "inaugural.txt").read_bytes().rstrip(b"\n") + b"\n\n") * 2)
    return folder


def test_dedup_keeps_the_first_copy(corpus_with_copies, tmp_path):
    result = shard([f"{corpus_with_copies}/*.txt"], tmp_path / "data", "--dedup", "--valid_fraction", 0,
                   "--seq_len", 128)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    documents = [normalize_text(d) for name in ("a.txt", "b.txt", "c.txt")
                 for d in blank_line_documents(corpus_with_copies / name)]
    first_copies = list(dict.fromkeys(documents))
    copies = len(documents) - len(first_copies)
    assert copies >= 2 * 59                            # the inaugural addresses, twice more
    assert manifest["counts"]["duplicates_removed"]["documents"] == copies
    assert f"duplicates removed: {copies} documents" in result.stderr
    tokenizer = load_tokenizer(TINY_SPM)
    train = ShardedDataset(tmp_path / "data")
    assert [train.document(d).tolist() for d in range(train.num_documents)] == \
        [tokenizer.encode(text) for text in first_copies]


RESUME_ARGS = ("--dedup", "--seq_len", 128, "--shard_size_mb", 0.2, "--piece_size_mb", 1)


@pytest.fixture(scope="module")
def clean_run(corpus_with_copies, tmp_path_factory):
    output = tmp_path_factory.mktemp("clean") / "data"
    shard([f"{corpus_with_copies}/*.txt"], output, *RESUME_ARGS)
    return folder_bytes(output)


# Commits of this job: 1-2 tokenizer and plan, 3-37 five pieces encoded (7 files each),
# 38-39 dedup partitions, 40-54 dedup applied to each piece, 55 the shard plan, then
# .bin/.idx pairs from 56 on.
@pytest.mark.parametrize("kill_after", [2, 10, 38, 45, 60])
def test_killed_job_resumes_to_the_same_bytes(corpus_with_copies, clean_run, tmp_path, kill_after):
    inputs = [f"{corpus_with_copies}/*.txt"]
    killed = shard(inputs, tmp_path / "data", *RESUME_ARGS, check=False,
                   env={KILL_AFTER_COMMITS_ENV: str(kill_after)})
    assert killed.returncode == -9
    assert not (tmp_path / "data" / "manifest.json").exists()
    if kill_after == 60:        # killed between a shard's .bin and its .idx
        assert (tmp_path / "data" / "train-00002.bin").exists()
        assert not (tmp_path / "data" / "train-00002.idx").exists()
    verify = run_cli("verify", tmp_path / "data", check=False)
    assert verify.returncode == 1 and "did not finish" in verify.stderr
    shard(inputs, tmp_path / "data", *RESUME_ARGS)
    assert folder_bytes(tmp_path / "data") == clean_run
    again = shard(inputs, tmp_path / "data", *RESUME_ARGS)
    assert "already complete" in again.stderr


@pytest.fixture(scope="module")
def prepared(small_corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("prepared") / "data"
    shard([f"{small_corpus}/*.txt"], output, "--seq_len", 128, "--shard_size_mb", 0.2)
    return output


def test_verify_passes_on_intact_data_and_inspect_decodes(prepared):
    assert "OK" in run_cli("verify", prepared).stdout
    report = run_cli("inspect", prepared, "--decode", 2).stdout
    assert "train:" in report and "--- train sequence 1 (128 tokens) ---" in report
    assert "[CLS] " in report and " [SEP]" in report


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "flip_index"])
def test_verify_names_a_damaged_shard(prepared, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    victim = data / ("train-00001.idx" if damage == "flip_index" else "train-00001.bin")
    content = bytearray(victim.read_bytes())
    if damage in ("flip", "flip_index"):
        content[len(content) // 2] ^= 0x01
        victim.write_bytes(bytes(content))
    elif damage == "truncate":
        victim.write_bytes(bytes(content[:-10]))
    else:
        victim.unlink()
    result = run_cli("verify", data, check=False)
    assert result.returncode == 1
    expected = {"flip": "sha256 differs", "flip_index": "sha256 differs", "truncate": "truncated",
                "remove": "missing"}[damage]
    assert str(victim) in result.stderr and expected in result.stderr


def test_verify_catches_a_tokenizer_that_does_not_match(prepared, small_corpus, tmp_path):
    other = tmp_path / "other_tok"
    run_cli("tokenizer", "--input", f"{small_corpus}/inaugural.txt", "--vocab_size", 300, "--output", other)
    other_tokenizer = load_tokenizer(other)
    assert [other_tokenizer.special_ids[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")] == \
        [0, 1, 2, 3, 300]
    result = run_cli("verify", prepared, "--tokenizer", other / "spm.model", check=False)
    assert result.returncode == 1 and "does not match the manifest" in result.stderr
    with pytest.raises(ValueError, match="not the one"):
        ShardedDataset(prepared).check_tokenizer(other / "spm.model")
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    shutil.copyfile(other / "spm.model", data / "tokenizer" / "spm.model")
    result = run_cli("verify", data, check=False)
    assert result.returncode == 1 and "not the tokenizer this data was made with" in result.stderr


def test_tokenizer_copies_an_existing_model(tmp_path):
    run_cli("tokenizer", "--from", TINY_SPM, "--output", tmp_path / "tok")
    assert (tmp_path / "tok" / "spm.model").read_bytes() == TINY_SPM.read_bytes()


def test_other_settings_refuse_an_existing_output(prepared, small_corpus):
    result = shard([f"{small_corpus}/*.txt"], prepared, "--seq_len", 256, check=False)
    assert result.returncode == 1 and "seq_len" in result.stderr and "--overwrite" in result.stderr


# --- bad input ------------------------------------------------------------------------

def _write_bad_inputs(folder):
    import datasets
    import pyarrow
    import pyarrow.parquet

    (folder / "a.txt").write_bytes(b"good doc one\nsecond line\n\nbad \xff\xfe bytes here\n\n \n\nlast doc\n")
    (folder / "b.jsonl").write_text('{"text": "json doc one"}\n{"text": broken\n{"title": "no text"}\n'
                                    '{"text": ""}\n{"text": "json doc \\ud800 two"}\n')
    (folder / "c.txt.gz").write_bytes(gzip.compress(b"a gz document\n\nwhose end is lost\n")[:30])
    pyarrow.parquet.write_table(pyarrow.table({"text": ["parquet one", None, "parquet three"]}),
                                folder / "d.parquet", row_group_size=2)
    datasets.Dataset.from_dict({"text": ["hf one", "hf two"]}).save_to_disk(str(folder / "e_hf"))
    (folder / "f.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gz json"}\n'))


def test_bad_input_is_reported_and_loses_nothing(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_bad_inputs(inputs)
    output = tmp_path / "data"
    common = ("--seq_len", 16, "--valid_fraction", 0)

    failed = shard([f"{inputs}/*"], output, *common, check=False)
    assert failed.returncode == 1
    assert f"{inputs}/c.txt.gz" in failed.stderr and "--allow_unreadable" in failed.stderr
    assert not (output / "manifest.json").exists()
    done_pieces = sorted((output / ".work" / "pieces").glob("*.json"))
    assert len(done_pieces) == 6          # every readable piece is kept for the next run

    # The user repairs the file; the next run encodes only that piece.
    (inputs / "c.txt.gz").write_bytes(gzip.compress(b"a gz document\n\nwhose end is found\n"))
    resumed = shard([f"{inputs}/*"], output, *common)
    assert "[encode] 1/1 " in resumed.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["problems"] == {"broken_json": 1, "empty_document": 2, "invalid_utf8": 2,
                                              "missing_text_field": 1}
    where = {(p["kind"], p["where"]) for p in manifest["problems"]}
    assert {("invalid_utf8", f"{inputs}/a.txt:4"), ("broken_json", f"{inputs}/b.jsonl:2"),
            ("missing_text_field", f"{inputs}/b.jsonl:3"), ("empty_document", f"{inputs}/b.jsonl:4"),
            ("invalid_utf8", f"{inputs}/b.jsonl:5"), ("empty_document", f"{inputs}/d.parquet: row 1")} == where
    tokenizer = load_tokenizer(TINY_SPM)
    train = ShardedDataset(output)
    texts = [tokenizer.decode(train.document(d)) for d in range(train.num_documents)]
    assert texts[:4] == ["good doc one second line", tokenizer.decode(tokenizer.encode("bad \ufffd\ufffd bytes here")),
                         "last doc", "json doc one"]
    assert texts[5:] == ["a gz document", "whose end is found", "parquet one", "parquet three",
                         "hf one", "hf two", "gz json"]
    assert "json doc" in texts[4] and "two" in texts[4]


def test_unreadable_input_can_be_left_out(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_bad_inputs(inputs)
    result = shard([f"{inputs}/*"], tmp_path / "data", "--seq_len", 16, "--allow_unreadable")
    assert "left out" in result.stderr and "c.txt.gz" in result.stderr
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["counts"]["problems"]["unreadable_file"] == 1
    assert [p["path"] for p in manifest["skipped_pieces"]] == [str(inputs / "c.txt.gz")]
    assert run_cli("verify", tmp_path / "data").returncode == 0
