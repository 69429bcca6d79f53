"""A finetuned model's label names, task and results travel into the Hugging Face export
(id2label / label2id, finetuning_task) and back into a native folder."""
import json

import pytest
import torch

from deberta import DebertaConfig, build_model, export_hf, load_model, save_model
from deberta.checkpoint import CheckpointError, read_finetune_record
from deberta.convert import main as convert
from finetune import FinetuneConfig, Trainer

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, position_buckets=16, max_relative_positions=64)
PREMISES = ["a wonderful , moving film", "great acting and a smart story", "i loved every minute of it",
            "funny , warm and beautifully made"]
HYPOTHESES = ["the film is good", "the film is bad"]


def outputs(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_finetuned_classifier_exports_its_label_names(tmp_path, tiny_model, write_tsv):
    rows = [(p, HYPOTHESES[0], "entailment") for p in PREMISES] + \
           [(p, HYPOTHESES[1], "not_entailment") for p in PREMISES]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, ["index", "sentence1", "sentence2", "label"],
                  [(i, *row) for i, row in enumerate(rows)])
    config = FinetuneConfig.create(task="rte", data_dir=str(tmp_path), model=tiny_model,
                                   output_dir=str(tmp_path / "out"), max_steps=2, micro_batch_size=4,
                                   max_seq_length=32, progress_bar=False, tensorboard=False)
    Trainer(config).train()
    best, hf, back = tmp_path / "out" / "best", tmp_path / "hf", tmp_path / "back"
    record = json.loads((best / "config.json").read_text())["finetune"]
    assert record["task"] == "rte" and record["labels"] == ["entailment", "not_entailment"]

    assert convert([str(best), str(hf), "--to", "hf"]) == 0
    written = json.loads((hf / "config.json").read_text())
    assert written["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert written["label2id"] == {"entailment": 0, "not_entailment": 1}
    assert written["finetuning_task"] == "rte" and written["finetune"] == record  # results and step too

    exported = transformers.AutoModelForSequenceClassification.from_pretrained(hf).eval()
    assert exported.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert exported.config.label2id == {"entailment": 0, "not_entailment": 1}
    ours = load_model(best)
    ids = torch.randint(5, 1000, (3, 14))
    assert (outputs(exported, ids) - outputs(ours, ids)).abs().max() < 1e-5

    # Back into ours: the same outputs, and the record kept.
    assert convert([str(hf), str(back), "--to", "native"]) == 0
    assert json.loads((back / "config.json").read_text())["finetune"] == record
    assert torch.equal(outputs(load_model(back), ids), outputs(load_model(hf), ids))
    assert (outputs(load_model(back), ids) - outputs(ours, ids)).abs().max() < 1e-5


def test_tagger_labels_regressor_placeholders_and_a_new_head(tmp_path):
    tags = ["O", "B-PER", "I-PER"]
    tagger = build_model(DebertaConfig(**TINY, num_labels=3), "token_classification")
    save_model(tagger, tmp_path / "ner", extra={"finetune": {"task": "ner", "labels": tags, "step": 4}})
    assert convert([str(tmp_path / "ner"), str(tmp_path / "ner_hf"), "--to", "hf"]) == 0
    exported = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "ner_hf")
    assert exported.config.id2label == dict(enumerate(tags)) and exported.config.finetuning_task == "ner"
    # A new head (the backbone alone) leaves the labels behind.
    assert convert([str(tmp_path / "ner"), str(tmp_path / "bare"), "--to", "hf", "--head", "backbone"]) == 0
    bare = json.loads((tmp_path / "bare" / "config.json").read_text())
    assert "finetune" not in bare and "finetuning_task" not in bare

    # A regressor names no labels: transformers' placeholder, the task still recorded.
    regressor = build_model(DebertaConfig(**TINY, num_labels=1), "sequence_classification")
    export_hf(regressor, tmp_path / "stsb", finetune={"task": "sts-b", "labels": None})
    written = json.loads((tmp_path / "stsb" / "config.json").read_text())
    assert written["id2label"] == {"0": "LABEL_0"} and written["finetuning_task"] == "sts-b"
    assert read_finetune_record(tmp_path / "stsb") == {"task": "sts-b", "labels": None}

    with pytest.raises(CheckpointError, match="names 2 labels .* 3 outputs"):
        export_hf(tagger, tmp_path / "bad", finetune={"labels": ["O", "B-PER"]})
    with pytest.raises(CheckpointError, match="repeats a label"):
        export_hf(tagger, tmp_path / "bad", finetune={"labels": ["O", "O", "B-PER"]})


def test_label_names_of_a_transformers_folder_are_kept(tmp_path):
    """A classifier saved by transformers itself: its id2label names reach our folder."""
    config = transformers.DebertaV2Config(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, relative_attention=True, position_buckets=16,
                                          max_relative_positions=64, pos_att_type="p2c|c2p",
                                          id2label={0: "negative", 1: "positive"}, finetuning_task="sst-2")
    transformers.DebertaV2ForSequenceClassification(config).save_pretrained(tmp_path / "hf")
    assert read_finetune_record(tmp_path / "hf") == {"task": "sst-2", "labels": ["negative", "positive"]}
    assert convert([str(tmp_path / "hf"), str(tmp_path / "ours"), "--to", "native"]) == 0
    assert read_finetune_record(tmp_path / "ours") == {"task": "sst-2", "labels": ["negative", "positive"]}
    # transformers' placeholders are no label names.
    plain = transformers.DebertaV2ForSequenceClassification(
        transformers.DebertaV2Config(**{**config.to_dict(), "id2label": {0: "LABEL_0", 1: "LABEL_1"},
                                        "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "finetuning_task": None}))
    plain.save_pretrained(tmp_path / "plain")
    assert read_finetune_record(tmp_path / "plain") is None
    (tmp_path / "plain" / "config.json").write_text(json.dumps(
        {**json.loads((tmp_path / "plain" / "config.json").read_text()), "id2label": {"0": "a", "2": "b"}}))
    with pytest.raises(CheckpointError, match="number the outputs 0..1"):
        read_finetune_record(tmp_path / "plain")
