"""Model folders: native round trips, official state dicts, EMD against the reference
layers, strict weight matching, and the conversion command."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from deberta import CheckpointError, DebertaConfig, build_model, export_hf, load_model, save_model
from deberta.checkpoint import native_to_reference

transformers = pytest.importorskip("transformers")

TINY_V2 = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64, max_relative_positions=32, position_buckets=8, conv_kernel_size=3)
TINY_V1 = dict(TINY_V2, model_type="deberta", position_buckets=None, conv_kernel_size=0, max_relative_positions=16)
HEADS = ["backbone", "masked_lm", "replaced_token_detection", "sequence_classification",
         "token_classification", "question_answering", "multiple_choice"]


def randomised(model):
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch(multiple_choice=False):
    torch.manual_seed(6)
    ids = torch.randint(5, 120, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    if multiple_choice:
        return {"input_ids": ids[None], "attention_mask": mask[None]}
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if model.head == "backbone" else out.logits


@pytest.mark.parametrize("head", HEADS)
def test_native_round_trip(tmp_path, head, spm_model):
    from deberta import load_tokenizer

    model = randomised(build_model(DebertaConfig(**TINY_V2, emd_layers=2), head))
    save_model(model, tmp_path, load_tokenizer(spm_model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "spm.model",
                                                          "tokenizer_config.json"]
    again = load_model(tmp_path)
    assert again.head == head and again.config == model.config
    inputs = batch(head == "multiple_choice")
    assert torch.equal(logits(again, inputs), logits(model, inputs))


def test_new_head_keeps_the_backbone(tmp_path, caplog):
    model = randomised(build_model(DebertaConfig(**TINY_V2, emd_layers=2), "masked_lm"))
    save_model(model, tmp_path)
    with caplog.at_level("INFO"):
        classifier = load_model(tmp_path, head="sequence_classification", num_labels=5).eval()
    assert "lm_predictions.lm_head.bias" in caplog.text and "classifier.weight" in caplog.text
    assert classifier.classifier.out_features == 5
    with torch.no_grad():
        assert torch.equal(classifier.deberta(**batch()).last_hidden_state,
                           model.deberta(**batch()).last_hidden_state)


def test_missing_and_unexpected_weights_are_listed(tmp_path):
    save_model(build_model(DebertaConfig(**TINY_V2), "sequence_classification"), tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["deberta.encoder.layer.1.attention.self.key_proj.weight"]
    weights["deberta.encoder.extra.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path)
    assert "deberta.encoder.layer.1.attention.self.key_proj.weight" in str(error.value)
    assert "deberta.encoder.extra.weight" in str(error.value)
    # A new head, or none, does not excuse a missing backbone weight.
    for head in ("token_classification", "backbone"):
        with pytest.raises(CheckpointError, match="key_proj"):
            load_model(tmp_path, head=head)


def test_unreadable_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "deberta-pipeline-model", "format_version": 1,
                                                      "head": "backbone", "config": {"hidden_size": 30,
                                                                                     "num_attention_heads": 4}}))
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        load_model(tmp_path)


def reference_emd_logits(hf_mlm, position_embeddings, inputs, steps=2):
    """The official enhanced mask decoder run with transformers' own layers: the query is
    absolute positions + the last layer's input, passed twice through the last layer."""
    encoder = hf_mlm.deberta.encoder
    with torch.no_grad():
        hidden = hf_mlm.deberta(**inputs, output_hidden_states=True).hidden_states[-2]
        mask = encoder.get_attention_mask(inputs["attention_mask"])
        query = position_embeddings[: hidden.shape[1]] + hidden
        for _ in range(steps):
            query = encoder.layer[-1](hidden, mask, query_states=query, relative_pos=encoder.get_rel_pos(hidden),
                                      rel_embeddings=encoder.get_rel_embedding())[0]
        return hf_mlm.cls(query)


@pytest.mark.parametrize("fields", [TINY_V2, TINY_V1], ids=["v2", "v1"])
def test_official_state_dict_with_emd(tmp_path, fields):
    """An official release: pytorch.model.bin (official names: lm_predictions, absolute
    positions kept) with model_config.json. Loads with the decoder on, and its fill-mask
    logits equal the official algorithm computed with transformers' layers."""
    config = DebertaConfig(**fields, emd_layers=2)
    ours = randomised(build_model(config, "masked_lm"))
    state = native_to_reference(ours.state_dict(), config)
    # Official names: the reference backbone names (v1's fused projection) and lm_predictions.
    official = {k: v for k, v in state.items() if not k.startswith("cls.")}
    official.update({k: v for k, v in ours.state_dict().items() if k.startswith("lm_predictions.")})
    torch.save(official, tmp_path / "pytorch.model.bin")
    official_config = {k: v for k, v in config.to_dict().items()
                       if k not in ("model_type", "emd_layers", "attention_backend")}
    official_config["pos_att_type"] = "|".join(config.pos_att_type)
    (tmp_path / "model_config.json").write_text(json.dumps(official_config))

    loaded = load_model(tmp_path)
    assert loaded.head == "masked_lm" and loaded.config.emd_layers == 2
    assert loaded.config.model_type == config.model_type
    inputs = batch()
    assert (logits(loaded, inputs) - logits(ours, inputs)).abs().max() < 1e-6

    if config.model_type == "deberta-v2":  # transformers' v1 layer cannot take query states
        export = tmp_path / "hf"
        export_hf(loaded, export)
        hf_mlm = transformers.AutoModelForMaskedLM.from_pretrained(export).eval()
        expected = reference_emd_logits(hf_mlm, ours.deberta.embeddings.position_embeddings.weight, inputs)
        assert (logits(loaded, inputs) - expected).abs().max() < 1e-5


def test_conversion_command(tmp_path, spm_model):
    hf_folder, native, back = tmp_path / "hf", tmp_path / "native", tmp_path / "back"
    config = transformers.DebertaV2Config(vocab_size=1001, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64, relative_attention=True,
                                          position_buckets=8, max_relative_positions=32, pos_att_type="p2c|c2p",
                                          share_att_key=True, norm_rel_ebd="layer_norm",
                                          position_biased_input=False, num_labels=3)
    reference = transformers.DebertaV2ForSequenceClassification(config).eval()
    reference.save_pretrained(hf_folder)
    (hf_folder / "spm.model").write_bytes(spm_model.read_bytes())
    for args in ([str(hf_folder), str(native), "--to", "native"], [str(native), str(back), "--to", "hf"]):
        done = subprocess.run([sys.executable, "-m", "deberta.convert", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (native / "spm.model").is_file() and (back / "spm.model").is_file()
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(back).eval()
    ids = torch.randint(5, 1000, (2, 12))
    with torch.no_grad():
        assert (exported(ids).logits - reference(ids).logits).abs().max() < 1e-5
        assert (load_model(native).eval()(ids).logits - reference(ids).logits).abs().max() < 1e-5
    failed = subprocess.run([sys.executable, "-m", "deberta.convert", str(tmp_path / "nope"), str(back),
                             "--to", "native"], capture_output=True, text=True)
    assert failed.returncode == 1 and "nope" in failed.stderr


def test_export_refuses_what_transformers_cannot_hold(tmp_path):
    with pytest.raises(CheckpointError, match="replaced-token-detection"):
        export_hf(build_model(DebertaConfig(**TINY_V2), "replaced_token_detection"), tmp_path)
    with pytest.raises(CheckpointError, match="MultipleChoice"):
        export_hf(build_model(DebertaConfig(**TINY_V1), "multiple_choice"), tmp_path)
