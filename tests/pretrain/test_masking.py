"""Masking as the authors' data pipeline does it (issue 9): a new mask in every epoch that is
still a function of (seed, sequence, epoch); subword-level masking at max_ngram 1; [MASK]
only for the RTD generator by default; and MLM models that keep absolute positions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pretrain_helpers import REPO

from deberta import load_tokenizer
from pretrain.config import parse_args
from pretrain.data import MaskedSequences, TrainOrder
from pretrain.masking import IGNORE, Masker, MaskingConfig
from pretrain.objectives.mlm import EMD_LAYERS, MaskedLanguageModeling
from pretrain.objectives.rtd import ReplacedTokenDetection

TINY_JSON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 vocab_size=1001, max_position_embeddings=64, position_buckets=16)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPO / "tests" / "assets" / "spm.model")


class _Sequences:
    """A stand-in for ShardedDataset: sequence i is a fixed text, shifted by i words."""

    def __init__(self, tokenizer, count=12, seq_len=256):
        words = ("The committee met on Tuesday to discuss the extraordinarily complicated budget "
                 "negotiations of the unincorporated municipalities. ").split() * 12
        self.seq_len, self.items = seq_len, []
        self.vocab_size = tokenizer.vocab_size  # ShardedDataset's, from its manifest
        for i in range(count):
            ids = tokenizer.encode(" ".join(words[i:]))[: seq_len - 2]
            self.items.append(np.array([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id], dtype=np.int32))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _continues_word(tokenizer, ids, p):
    """Token p+1 is a later piece of the word at p."""
    return p + 1 < len(ids) - 1 and not tokenizer.is_word_start(int(ids[p + 1]))


# --- dynamic masking -------------------------------------------------------------------
def test_masks_change_every_epoch_and_are_a_function_of_seed_sequence_epoch(tokenizer):
    sequences = _Sequences(tokenizer)
    data = MaskedSequences(sequences, Masker(MaskingConfig(), tokenizer, seed=5), stream=0, pad_id=0)
    again = MaskedSequences(sequences, Masker(MaskingConfig(), tokenizer, seed=5), stream=0, pad_id=0)
    for i in range(len(sequences)):
        labels = [data[(i, epoch)]["labels"] for epoch in range(6)]
        for a in range(6):
            for b in range(a):
                assert not np.array_equal(labels[a], labels[b]), f"sequence {i}: epochs {b} and {a} share a mask"
            assert np.array_equal(again[(i, a)]["labels"], labels[a])  # a function of (seed, i, epoch)
        assert np.array_equal(data[i]["labels"], labels[0])  # a bare index is epoch 0


def test_the_train_order_gives_each_visit_its_epoch_independent_of_ranks_and_resume(tokenizer):
    n, micro = 12, 3
    order = TrainOrder(n, seed=7, micro=micro, accumulation=2, rank=0, world=1)
    batches = order.micro_batches(0)
    visits = [sample for _ in range(3 * n // micro) for sample in next(batches)]  # three epochs
    assert [epoch for _, epoch in visits] == [p // n for p in range(3 * n)]
    assert all(sorted(i for i, e in visits if e == epoch) == list(range(n)) for epoch in range(3))
    # Two ranks of a step take the same samples as one rank; a resumed loader continues them.
    two = [TrainOrder(n, 7, micro, 1, rank, 2).micro_batches(18) for rank in range(2)]
    assert sorted(next(two[0]) + next(two[1])) == sorted(visits[18:24])
    assert next(order.micro_batches(24)) == visits[24:27]
    # The same sequence is masked differently in its epochs when read through the loader's keys.
    data = MaskedSequences(_Sequences(tokenizer), Masker(MaskingConfig(), tokenizer, seed=7), 0, pad_id=0)
    by_sequence = {}
    for key in visits:
        by_sequence.setdefault(key[0], []).append(data[key]["labels"])
    for masks in by_sequence.values():
        assert len(masks) == 3 and not any(np.array_equal(masks[a], masks[b]) for a in range(3) for b in range(a))


def test_validation_masks_stay_fixed(tokenizer):
    sequences = _Sequences(tokenizer)
    valid = MaskedSequences(sequences, Masker(MaskingConfig(), tokenizer, seed=5), stream=1, pad_id=0)
    train = MaskedSequences(sequences, Masker(MaskingConfig(), tokenizer, seed=5), stream=0, pad_id=0)
    first = [valid[i]["input_ids"] for i in range(len(sequences))]
    assert all(np.array_equal(valid[i]["input_ids"], first[i]) for i in range(len(sequences)))
    assert not all(np.array_equal(train[i]["input_ids"], first[i]) for i in range(len(sequences)))


# --- word grouping ---------------------------------------------------------------------
def test_max_ngram_1_masks_subwords_and_ngrams_mask_whole_words(tokenizer):
    sequences = _Sequences(tokenizer)
    assert MaskingConfig().whole_word == "auto" and not MaskingConfig().groups_words
    split = 0  # targets whose word continues past them untouched
    for setting, groups in ((MaskingConfig(), False), (MaskingConfig(max_ngram=3), True),
                            (MaskingConfig(max_ngram=3, whole_word=False), False),
                            (MaskingConfig(whole_word="true"), True)):
        masker, cut = Masker(setting, tokenizer, seed=0), 0
        for i in range(len(sequences)):
            for epoch in range(8):
                ids = sequences[i].astype(np.int64)
                _, labels = masker(ids, i, 0, epoch)
                targets = labels != IGNORE
                cut += sum(_continues_word(tokenizer, ids, p) and not targets[p + 1] for p in np.flatnonzero(targets))
                if setting.max_ngram == 1 and not groups:  # single tokens fill the budget exactly
                    assert targets.sum() == round(0.15 * (len(ids) - 2))
        assert (cut == 0) == groups, (setting, cut)
        split += cut
    assert split > 0


def test_whole_word_setting_values():
    assert MaskingConfig(whole_word=True).whole_word == "true"
    assert MaskingConfig(whole_word="False").whole_word == "false"
    with pytest.raises(ValueError, match="whole_word"):
        MaskingConfig(whole_word="sometimes")
    assert parse_args(["--data_dir", "x", "--whole_word", "true"]).masking.groups_words
    assert not parse_args(["--data_dir", "x", "--max_ngram", "3", "--whole_word", "false"]).masking.groups_words
    assert parse_args(["--data_dir", "x", "--max_ngram", "3"]).masking.groups_words


# --- [MASK] only for the RTD generator ---------------------------------------------------
def test_rtd_generator_input_is_mask_only_by_default(tokenizer, tmp_path):
    config = parse_args(["--data_dir", "x", "--objective", "rtd"])
    assert ReplacedTokenDetection.masking_defaults == {"replace_with_mask": 1.0, "replace_with_random": 0.0}
    data = MaskedSequences(_Sequences(tokenizer), Masker(config.masking, tokenizer, seed=1), 0, pad_id=0)
    count = 0
    for i in range(len(data)):
        for epoch in range(4):
            sample = data[(i, epoch)]
            targets = sample["labels"] != IGNORE
            assert (sample["input_ids"][targets] == tokenizer.mask_token_id).all(), (i, epoch)
            assert np.array_equal(sample["input_ids"][~targets], sample["original_ids"][~targets])
            count += targets.sum()
    assert count > 100
    # The same default under a recipe; flags and --config still win; MLM keeps 80/10/10.
    assert parse_args(["--data_dir", "x", "--recipe", "deberta-v3-base-rtd"]).masking.replace_with_mask == 1.0
    flags = parse_args(["--data_dir", "x", "--objective", "rtd", "--replace_with_mask", "0.8",
                        "--replace_with_random", "0.1"]).masking
    assert (flags.replace_with_mask, flags.replace_with_random) == (0.8, 0.1)
    (tmp_path / "run.yaml").write_text("objective: rtd\nreplace_with_mask: 0.5\n")
    assert parse_args(["--data_dir", "x", "--config", str(tmp_path / "run.yaml")]).masking.replace_with_mask == 0.5
    mlm = parse_args(["--data_dir", "x"]).masking
    assert (mlm.replace_with_mask, mlm.replace_with_random) == (0.8, 0.1)


# --- absolute positions of MLM models --------------------------------------------------
def _model_json(tmp_path, **fields):
    path = tmp_path / f"model{len(list(tmp_path.glob('*.json')))}.json"
    path.write_text(json.dumps({**TINY_JSON, **fields}))
    return str(path)


def test_mlm_without_position_input_gets_the_decoder_unless_told_otherwise(tmp_path):
    notes = []
    config = parse_args(["--data_dir", "x", "--model_config", _model_json(tmp_path)])
    model_config = config.model_config(log=notes.append)
    assert model_config.emd_layers == EMD_LAYERS == 2 and "enhanced mask decoder" in notes[-1]
    objective = config.objective_class(config.objective, model_config)
    assert isinstance(objective, MaskedLanguageModeling) and objective.model.config.emd_layers == 2
    assert objective.describe()["model_config"]["emd_layers"] == 2  # conversion rebuilds the same model

    # Explicit 0, in the JSON or through --set_model: kept, and said.
    for flags in (["--model_config", _model_json(tmp_path, emd_layers=0)],
                  ["--model_config", _model_json(tmp_path), "--set_model", "emd_layers=0"],
                  ["--set_model", "emd_layers=0"]):
        notes.clear()
        assert parse_args(["--data_dir", "x", *flags]).model_config(log=notes.append).emd_layers == 0, flags
        assert len(notes) == 1 and "emd_layers=0" in notes[0] and "no absolute positions" in notes[0]

    # Positions in the input: nothing to add, nothing said. A preset keeps its 2 layers.
    notes.clear()
    config = parse_args(["--data_dir", "x", "--model_config", _model_json(tmp_path, position_biased_input=True)])
    assert config.model_config(log=notes.append).emd_layers == 0 and not notes
    assert parse_args(["--data_dir", "x"]).model_config(log=notes.append).emd_layers == 2 and not notes

    # No way to decode with EMD: refused rather than trained without positions.
    config = parse_args(["--data_dir", "x", "--model_config", _model_json(tmp_path, embedding_size=16)])
    with pytest.raises(ValueError, match="no absolute positions"):
        config.model_config(log=notes.append)


def test_rtd_generator_from_a_json_config_gets_the_decoder(tmp_path):
    notes = []
    config = parse_args(["--data_dir", "x", "--objective", "rtd", "--model_config", _model_json(tmp_path)])
    objective = config.objective_class(config.objective, config.model_config(log=notes.append))
    assert objective.generator.config.emd_layers == 2 and objective.discriminator.config.emd_layers == 0
    assert "RTD generator" in notes[-1]
