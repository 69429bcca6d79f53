"""deberta.checkpoint.read_config: a model folder's config and head without its weights
(finetuning checks the sequence length before it loads the model once)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import deberta.checkpoint as checkpoint
from deberta import load_model
from deberta.checkpoint import export_hf, read_config, read_folder


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Any attempt to load tensors fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("read_config loaded weights")
    monkeypatch.setattr(checkpoint, "load_file", refuse)
    monkeypatch.setattr(checkpoint, "_read_hf_weights", refuse)


def test_native_folder_reads_config_json_only(tmp_path, tiny_model, no_weight_loading):
    folder = tmp_path / "native"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").write_bytes(b"not read")
    config, head = read_config(folder)
    stored = json.loads((folder / "config.json").read_text())
    assert head == stored["head"] == "masked_lm"
    assert config.to_dict() == stored["config"]


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_hugging_face_folder_reads_weight_names_only(tmp_path, tiny_model, layout):
    folder = export_hf(load_model(tiny_model), tmp_path / "hf")
    expected = read_folder(folder)[:2]
    state = load_file(str(folder / "model.safetensors"))
    if layout == "sharded":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {name: "model-00001-of-00001.safetensors" for name in state}}))
    elif layout == "bin":
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")  # zip format: memory-mapped, not read
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "load_file", lambda *a, **k: pytest.fail("read_config loaded weights"))
        patch.setattr(checkpoint, "_read_hf_weights", lambda *a, **k: pytest.fail("read_config loaded weights"))
        config, head = read_config(folder)
    assert (config, head) == expected and head == "masked_lm"
    assert read_folder(folder)[:2] == expected  # the full reader agrees in every layout


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        read_config(tmp_path / "nothing")
