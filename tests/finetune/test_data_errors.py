"""Inputs that go wrong get a message naming the file and row, or a printed truncation count."""
import re

import pytest

from finetune import FinetuneConfig, Trainer
from finetune.data import DataError
from finetune.main import main

FAST = dict(micro_batch_size=4, max_steps=1, progress_bar=False, tensorboard=False, max_seq_length=32)


def trainer(tmp_path, **fields) -> Trainer:
    return Trainer(FinetuneConfig.create(output_dir=str(tmp_path / "out"), **{**FAST, **fields}))


def test_unknown_label_in_dev_names_file_and_line(tmp_path, tiny_model, write_tsv):
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [("good", 1), ("bad", 0)])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [("fine", 1), ("meh", 2)])
    with pytest.raises(DataError, match=r"dev\.tsv, line 3: label '2' is not one of the labels \['0', '1'\]"):
        trainer(tmp_path, task="sst-2", data_dir=str(tmp_path), model=tiny_model)


def test_missing_column_lists_what_the_file_has(tmp_path, tiny_model, write_tsv):
    write_tsv(tmp_path / "train.tsv", ["text", "label"], [("good", 1), ("bad", 0)])
    write_tsv(tmp_path / "dev.tsv", ["text", "label"], [("good", 1)])
    with pytest.raises(DataError, match=r"train\.tsv: no column 'sentence' .*the file has \['label', 'text'\]"):
        trainer(tmp_path, task="sst-2", data_dir=str(tmp_path), model=tiny_model)


@pytest.mark.parametrize("content, message", [("", "the file is empty"),
                                              ("sentence\tlabel\n", "the file has no data rows")])
def test_empty_files(tmp_path, tiny_model, content, message):
    (tmp_path / "train.tsv").write_text(content)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match=f"train.tsv: {message}"):
        trainer(tmp_path, task="sst-2", data_dir=str(tmp_path), model=tiny_model)


def test_short_row_and_bad_number(tmp_path, tiny_model, write_tsv):
    (tmp_path / "train.tsv").write_text("text\tscore\nfine\t1.0\nno score here\n")
    with pytest.raises(DataError, match=r"train\.tsv, line 3: 1 fields but the header has 2"):
        trainer(tmp_path, task="custom", train=str(tmp_path / "train.tsv"), dev=str(tmp_path / "train.tsv"),
                text_cols="text", label_col="score", regression=True, model=tiny_model)
    write_tsv(tmp_path / "bad.tsv", ["text", "score"], [("fine", "1.0"), ("odd", "high")])
    with pytest.raises(DataError, match=r"bad\.tsv, line 3: label 'high' in column 'score' is not a number"):
        trainer(tmp_path, task="custom", train=str(tmp_path / "bad.tsv"), dev=str(tmp_path / "bad.tsv"),
                text_cols="text", label_col="score", regression=True, model=tiny_model)


def test_unknown_ner_tag_in_dev(tmp_path, tiny_model):
    (tmp_path / "train.txt").write_text("John B-PER\nran O\n\n")
    (tmp_path / "dev.txt").write_text("Mary B-PER\n\nParis B-LOC\nsleeps O\n")
    with pytest.raises(DataError, match=r"dev\.txt, line 3: tag 'B-LOC' does not occur in the training data"):
        trainer(tmp_path, task="ner", data_dir=str(tmp_path), model=tiny_model)


def test_long_sequences_are_truncated_with_a_count(tmp_path, tiny_model, write_tsv, capsys):
    long_text = " ".join(["word"] * 100)
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [(long_text, 1), ("short", 0), (long_text, 0)])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [("short", 1)])
    t = trainer(tmp_path, task="sst-2", data_dir=str(tmp_path), model=tiny_model)
    assert re.search(r"train\.tsv: truncated 2 of 3 sequences to max_seq_length=32 tokens \(longest: \d{3}\)",
                     capsys.readouterr().out)
    assert max(len(f["input_ids"]) for f in t.train_split.features) == 32
    t.train()


def test_long_ner_sentence_predicts_o_for_words_that_do_not_fit(tmp_path, tiny_model, capsys):
    sentence = "".join(f"w{i} O\n" for i in range(40)) + "Paris B-LOC\n"
    (tmp_path / "train.txt").write_text(sentence + "\n")
    (tmp_path / "dev.txt").write_text(sentence)
    t = trainer(tmp_path, task="ner", data_dir=str(tmp_path), model=tiny_model)
    assert "words beyond max_seq_length are predicted 'O'" in capsys.readouterr().out
    t.train()
    lines = (tmp_path / "out" / "predictions_dev.txt").read_text().split()
    assert lines[-3:] == ["Paris", "B-LOC", "O"]


def test_absolute_positions_cap_the_length(tmp_path, write_tsv, spm_model):
    from deberta import DebertaConfig, build_model, load_tokenizer, save_model

    config = DebertaConfig(vocab_size=1001, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, position_biased_input=True, max_position_embeddings=16,
                           position_buckets=4, max_relative_positions=16)
    save_model(build_model(config, "backbone"), tmp_path / "model", load_tokenizer(spm_model))
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [("good", 1), ("bad", 0)])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [("good", 1)])
    with pytest.raises(ValueError, match="max_seq_length 32 exceeds the model's max_position_embeddings=16"):
        trainer(tmp_path, task="sst-2", data_dir=str(tmp_path), model=str(tmp_path / "model"))


@pytest.mark.parametrize("fields, message", [
    (dict(task="mrpcc"), "--task='mrpcc' is invalid"),
    (dict(precision="fp8"), "precision='fp8'; allowed"),
    (dict(task="custom"), "--task custom needs --text_cols"),
    (dict(warmup_ratio=1.5), r"warmup_ratio=1.5 must be a fraction in \[0, 1\)"),
    (dict(learning_rate=0.0), "lr=0.0 must be > 0"),
    (dict(nonsense=1), r"unknown finetuning settings \['nonsense'\]"),
    (dict(sift_lambda=0.0), "--sift_lambda=0.0 is invalid"),
])
def test_config_is_validated(fields, message):
    base = dict(task="sst-2", model="m", output_dir="o", data_dir="d")
    with pytest.raises(ValueError, match=message):
        FinetuneConfig.create(**{**base, **fields})


def test_command_line_reports_data_errors(tmp_path, tiny_model, capsys):
    code = main(["--task", "sst-2", "--data_dir", str(tmp_path), "--model", tiny_model,
                 "--output_dir", str(tmp_path / "out")])
    assert code == 1
    assert f"error: training file not found: {tmp_path / 'train.tsv'}" in capsys.readouterr().err
