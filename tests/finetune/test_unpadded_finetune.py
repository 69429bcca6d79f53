"""--unpadded finetuning: packed batches train and evaluate to the padded run's numbers."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deberta import DebertaConfig, build_model, load_tokenizer, save_model
from finetune import FinetuneConfig, Trainer
from finetune.data import example_outputs, pack_batch, pad_batch

SPM_MODEL = Path(__file__).resolve().parents[1] / "assets" / "spm.model"
TINY = dict(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, position_buckets=16, max_relative_positions=64)
FAST = dict(micro_batch_size=4, eval_batch_size=5, lr=1e-3, progress_bar=False, tensorboard=False,
            max_seq_length=64, save_best=False, save_interval=0)


@pytest.fixture(scope="module")
def model_without_dropout(tmp_path_factory) -> str:
    """Dropout off, so that the two runs can agree to float precision."""
    folder = tmp_path_factory.mktemp("tiny_no_dropout")
    torch.manual_seed(0)
    config = DebertaConfig(**TINY, conv_kernel_size=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    save_model(build_model(config, "masked_lm"), folder, load_tokenizer(SPM_MODEL))
    return str(folder)


def train_both(tmp_path, **fields) -> tuple[dict, dict]:
    results = []
    for unpadded in (False, True):
        out = tmp_path / ("unpadded" if unpadded else "padded")
        Trainer(FinetuneConfig.create(output_dir=str(out), unpadded=unpadded, **{**FAST, **fields})).train()
        results.append(json.loads((out / "eval_results.json").read_text()))
    return results[0], results[1]


def assert_same_results(padded, unpadded):
    assert padded.keys() == unpadded.keys()
    for name, value in padded.items():
        if isinstance(value, float):
            assert unpadded[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
        else:
            assert unpadded[name] == value, name


def test_pack_batch_lays_sequences_end_to_end():
    features = [{"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "attention_mask": [1, 1, 1], "labels": 1},
                {"input_ids": [2, 3], "token_type_ids": [0, 1], "attention_mask": [1, 1], "labels": 0}]
    batch = pack_batch(features)
    assert batch["input_ids"].tolist() == [2, 7, 3, 2, 3]
    assert batch["token_type_ids"].tolist() == [0, 0, 0, 0, 1]
    assert batch["cu_seqlens"].tolist() == [0, 3, 5] and batch["cu_seqlens"].dtype == torch.int32
    assert batch["max_seqlen"] == 3 and batch["labels"].tolist() == [1, 0]
    assert "attention_mask" not in batch
    choices = [{"input_ids": [[2, 5], [2, 6, 3]], "labels": 1}]
    packed = pack_batch(choices)
    assert packed["input_ids"].tolist() == [2, 5, 2, 6, 3] and packed["num_choices"] == 2
    assert packed["cu_seqlens"].tolist() == [0, 2, 5]


def test_per_token_outputs_map_back_per_feature():
    features = [{"input_ids": [1, 2, 3], "labels": [-100, 4, -100]}, {"input_ids": [5], "labels": [-100]}]
    padded, packed = pad_batch(features, 0), pack_batch(features)
    assert packed["labels"].tolist() == [-100, 4, -100, -100]
    padded["attention_mask"] = (padded["input_ids"] != 0).long()
    logits = np.arange(6.0).reshape(2, 3)  # padded [B, L]; its real tokens are packed [0, 1, 2, 3]
    from_padded = example_outputs(padded, logits, per_token=True)
    from_packed = example_outputs(packed, np.array([0.0, 1.0, 2.0, 3.0]), per_token=True)
    assert [o.tolist() for o in from_padded] == [[0, 1, 2], [3]]
    assert [o.tolist() for o in from_packed] == [[0, 1, 2], [3]]


def test_sentence_classification_same_metrics(tmp_path, model_without_dropout, sentiment_files):
    padded, unpadded = train_both(tmp_path, task="sst-2", data_dir=str(sentiment_files),
                                  model=model_without_dropout, max_steps=4)
    assert_same_results(padded, unpadded)


def test_token_classification_same_metrics(tmp_path, model_without_dropout, conll_files):
    padded, unpadded = train_both(tmp_path, task="ner", data_dir=str(conll_files), model=model_without_dropout,
                                  max_steps=3)
    assert_same_results(padded, unpadded)


def test_multiple_choice_same_metrics(tmp_path, model_without_dropout, race_files):
    padded, unpadded = train_both(tmp_path, task="race", data_dir=str(race_files), model=model_without_dropout,
                                  max_steps=2)
    assert_same_results(padded, unpadded)


def test_question_answering_window_logits_map_back(tmp_path, model_without_dropout, squad_file):
    """Each SQuAD window's start/end logits come back the same: the packed QA loss differs
    from the padded one by design (no padding in its softmax), so the models are compared
    before training."""
    config = FinetuneConfig.create(output_dir=str(tmp_path / "out"), task="squad2", train=str(squad_file),
                                   dev=str(squad_file), model=model_without_dropout, unpadded=True,
                                   **{**FAST, "max_seq_length": 32, "doc_stride": 8, "max_steps": 1})
    trainer = Trainer(config)
    split = trainer.eval_splits[0]
    packed_outputs, _ = trainer.predict(split)
    trainer.task.config.unpadded = False
    padded_outputs, _ = trainer.predict(split)
    assert len(packed_outputs) == len(split.features) > len(split.examples)  # several windows per example
    lengths = {len(o) for o in packed_outputs}
    assert len(lengths) > 1  # windows of different lengths in one batch
    for packed, padded in zip(packed_outputs, padded_outputs):
        np.testing.assert_allclose(packed, padded, atol=1e-5, rtol=1e-4)
    # SiFT's divergence over the positions of each window: the same packed as padded
    features = split.features[:5]
    packed_batch, padded_batch = pack_batch(features), pad_batch(features, 0)
    real = padded_batch["attention_mask"].bool()
    clean, perturbed = torch.randn(real.sum(), 2), torch.randn(real.sum(), 2)

    def padded_logits(packed):
        logits = torch.randn(*real.shape, 2)  # whatever the padding holds must not count
        logits[real] = packed
        return logits

    torch.testing.assert_close(trainer.task.divergence(perturbed, clean, packed_batch),
                               trainer.task.divergence(padded_logits(perturbed), padded_logits(clean), padded_batch))


def test_the_attention_backend_is_chosen_at_finetuning(tmp_path, model_without_dropout, sentiment_files):
    """--attention_backend overrides the model folder's kernel (eager here), for the run and
    in the best model it writes, with eager's results; an unknown kernel is named."""
    def backend_of(folder) -> str:
        return json.loads((Path(folder) / "config.json").read_text())["config"]["attention_backend"]

    assert backend_of(model_without_dropout) == "eager"
    fields = dict(task="sst-2", data_dir=str(sentiment_files), model=model_without_dropout, max_steps=4)
    results = {}
    for backend in ("eager", "sdpa"):
        out = tmp_path / backend
        Trainer(FinetuneConfig.create(output_dir=str(out), unpadded=True, attention_backend=backend,
                                      **{**FAST, **fields, "save_best": True})).train()
        results[backend] = json.loads((out / "eval_results.json").read_text())
        assert backend_of(out / "best") == backend
    assert_same_results(results["eager"], results["sdpa"])
    with pytest.raises(ValueError, match="--attention_backend='flash' is invalid; allowed: eager, sdpa, triton"):
        FinetuneConfig.create(output_dir=str(tmp_path / "x"), attention_backend="flash", **fields)
