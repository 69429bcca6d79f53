"""Tokenizers against the transformers DeBERTa tokenizers on real text."""
import json
import random
import shutil

import pytest

from deberta.tokenizer import (
    GPT2BPETokenizer,
    HFJSONTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    truncate_longest_first,
)

transformers = pytest.importorskip("transformers")


def sample_texts(shared_data, n=200, seed=0):
    words = (shared_data / "corpus" / "inaugural.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    for _ in range(n):
        yield (" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))),
               " ".join(rng.choice(words) for _ in range(rng.randint(1, 30))),
               rng.randint(6, 60))


def assert_same_encodings(ours, theirs, shared_data, pairs=True):
    for first, second, max_length in sample_texts(shared_data):
        for pair in (None, second) if pairs else (None,):
            expected = theirs(first, pair, truncation=True, max_length=max_length)
            got = ours(first, pair, max_length=max_length)
            assert got["input_ids"] == expected["input_ids"], (first, pair, max_length)
            assert got["token_type_ids"] == expected["token_type_ids"]
            assert got["attention_mask"] == expected["attention_mask"]
        assert ours.decode(ours(first)["input_ids"]) == theirs.decode(theirs(first)["input_ids"],
                                                                     skip_special_tokens=True)


def hf_spm_tokenizer(tmp_path, spm_model):
    folder = tmp_path / "hf_spm"
    folder.mkdir()
    shutil.copy(spm_model, folder / "spm.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_sentencepiece_official_special_ids(spm_model):
    tokenizer = SentencePieceTokenizer(spm_model)
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token_id == 1000 and tokenizer.vocab_size == 1001  # after the 1000 pieces
    encoded = tokenizer("first part", "second part")
    assert encoded["input_ids"][0] == 1 and encoded["input_ids"][-1] == 2
    assert encoded["input_ids"].count(2) == 2


def test_sentencepiece_matches_transformers(tmp_path, spm_model, shared_data):
    assert_same_encodings(load_tokenizer(spm_model), hf_spm_tokenizer(tmp_path, spm_model), shared_data)


def test_saved_tokenizer_loads_in_transformers(tmp_path, spm_model, shared_data):
    SentencePieceTokenizer(spm_model).save(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert_same_encodings(load_tokenizer(tmp_path), theirs, shared_data)


def test_tokenizer_json_as_transformers_saves_it(tmp_path, spm_model, shared_data):
    theirs = hf_spm_tokenizer(tmp_path, spm_model)
    saved = tmp_path / "saved"
    theirs.save_pretrained(saved)
    ours = load_tokenizer(saved)
    if not isinstance(ours, HFJSONTokenizer):  # the folder also carries spm.model
        ours = HFJSONTokenizer(saved / "tokenizer.json")
    assert ours.mask_token_id == theirs.convert_tokens_to_ids("[MASK]")
    assert_same_encodings(ours, theirs, shared_data)


@pytest.fixture
def bpe_files(tmp_path, shared_data):
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train([str(shared_data / "corpus" / "inaugural.txt")], vocab_size=400, min_frequency=2,
                  special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], show_progress=False)
    folder = tmp_path / "bpe"
    folder.mkdir()
    trainer.save_model(str(folder))
    return folder


def test_gpt2_bpe_matches_transformers(bpe_files, shared_data):
    ours = load_tokenizer(bpe_files)
    assert isinstance(ours, GPT2BPETokenizer)
    assert (ours.pad_token_id, ours.cls_token_id, ours.sep_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    (bpe_files / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaTokenizer"}))
    theirs = transformers.AutoTokenizer.from_pretrained(bpe_files)
    assert theirs.convert_tokens_to_ids("[MASK]") == ours.mask_token_id
    # transformers 5 builds v1 pairs RoBERTa-style ([CLS] A [SEP] [SEP] B [SEP], all type 0);
    # the official DeBERTa code and transformers 4 use [CLS] A [SEP] B [SEP] with types 0/1,
    # as we do. Single sequences are compared with transformers, pairs with that rule.
    assert_same_encodings(ours, theirs, shared_data, pairs=False)
    for first, second, max_length in sample_texts(shared_data, n=50):
        a, b = ours.encode(first), ours.encode(second)
        truncate_longest_first(a, b, max_length - 3)
        assert ours(first, second, max_length=max_length) == {
            "input_ids": [1] + a + [2] + b + [2], "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
            "attention_mask": [1] * (len(a) + len(b) + 3)}


def test_word_starts(spm_model, bpe_files):
    for tokenizer in (load_tokenizer(spm_model), load_tokenizer(bpe_files)):
        ids = tokenizer.encode("unbelievable citizens")
        starts = [tokenizer.is_word_start(i) for i in ids]
        assert len(ids) > 2 and sum(starts[1:]) == 1  # only "citizens" starts a word after the first


def test_truncation_rule():
    first, second = list(range(10)), list(range(4))
    assert truncate_longest_first(first, second, 9) == 5
    assert (len(first), len(second)) == (5, 4)  # the longer loses first
    first, second = list(range(10)), list(range(12))
    truncate_longest_first(first, second, 7)
    assert (len(first), len(second)) == (3, 4)  # both cut: shorter keeps 7 // 2
    with pytest.raises(ValueError, match="max_length"):
        SentencePieceTokenizer.build_inputs(load_tokenizer_stub(), [1], [2], max_length=3)


def load_tokenizer_stub():
    from deberta.tokenizer import Tokenizer
    return Tokenizer({"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": 4}, 5)


def test_bad_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"vocab.json: the vocabulary lacks the special tokens"):
        load_tokenizer(tmp_path)
