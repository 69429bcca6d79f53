"""Model folders: our native format, Hugging Face DeBERTa / DeBERTa-v2, official state dicts.

A native folder holds
    config.json        {"format": "deberta-pipeline-model", "format_version": 1,
                        "head": "<head name>", "config": {DebertaConfig fields}}
    model.safetensors  weights under our (= the official v2) names, backbone under "deberta."
    tokenizer files    spm.model, or vocab.json + merges.txt

``load_model`` also reads Hugging Face folders (config.json with ``model_type`` "deberta" or
"deberta-v2", model.safetensors [sharded] or pytorch_model.bin) and official releases
(pytorch.model.bin with model_config.json). Weights that the model lacks or that the file
lacks are an error listing them; a head is only ever re-initialised when the caller asks
for a different head than the folder's, and that is logged.

The released DeBERTa-v3 repositories keep both official pretraining heads in their
pytorch_model.bin (``mask_predictions.*``, the discriminator's RTD head, and
``lm_predictions.*``): ``read_folder`` returns both under those names. Their generator,
pytorch_model.generator.bin, is a bare state dict: ``read_weights_file``.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_file, atomic_write
from .errors import InputError
from .model import DebertaConfig, DebertaModel, DebertaPreTrained, build_model

logger = logging.getLogger(__name__)

NATIVE_FORMAT = "deberta-pipeline-model"
NATIVE_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OFFICIAL_WEIGHTS_FILE = "pytorch.model.bin"
OFFICIAL_CONFIG_FILE = "model_config.json"
# The released v3 repositories keep the RTD generator beside the discriminator, without a config.
RELEASE_GENERATOR_FILE = "pytorch_model.generator.bin"
BACKBONE_PREFIX = "deberta."
# config.json key of what finetuning recorded: task, label names, step, results.
FINETUNE_RECORD = "finetune"

# Hugging Face architecture suffixes <-> our heads.
HF_HEAD_SUFFIXES = {
    "Model": "backbone",
    "ForMaskedLM": "masked_lm",
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForQuestionAnswering": "question_answering",
    "ForMultipleChoice": "multiple_choice",
}
# The official pretraining heads, by our head names. A released v3 pytorch_model.bin carries
# both: the discriminator's RTD head (mask_predictions) and an MLM head (lm_predictions).
HEAD_PREFIXES = {"masked_lm": "lm_predictions.", "replaced_token_detection": "mask_predictions."}


class CheckpointError(InputError, ValueError):
    """A model folder that cannot be loaded as asked."""


# ---------------------------------------------------------------------------------------
# Native folders
# ---------------------------------------------------------------------------------------
def _canonical_state(model: DebertaPreTrained) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if isinstance(model, DebertaModel):  # a bare backbone: store it as a head model would
        state = {BACKBONE_PREFIX + k: v for k, v in state.items()}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _write_json_atomic(path: Path, values: dict) -> None:
    atomic_write(path, json.dumps(values, indent=2) + "\n")


def save_model(model: DebertaPreTrained, folder: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write a native model folder; each file goes to a temporary name and is renamed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / WEIGHTS_FILE) as tmp:
        save_file(_canonical_state(model), str(tmp), metadata={"format": NATIVE_FORMAT})
    if tokenizer is not None:
        tokenizer.save(folder)
    _write_json_atomic(folder / CONFIG_FILE, {
        "format": NATIVE_FORMAT, "format_version": NATIVE_FORMAT_VERSION, "head": model.head,
        "config": model.config.to_dict(), **(extra or {})})
    return folder


def read_config(path: str | Path) -> tuple[DebertaConfig, str]:
    """(config, head) of a native, Hugging Face or official folder, without loading its weights.

    A native folder's config.json says everything. Hugging Face and official folders need
    the weight names too (the head, the v1 layout, whether decoder positions are stored):
    safetensors files and a sharded index give them without reading any tensor, and a
    pytorch_model.bin is memory-mapped (a zip-format file: only its index is read).
    """
    config, head, _ = _read_folder(Path(path), weights=False)
    return config, head


def read_folder(path: str | Path) -> tuple[DebertaConfig, str, dict[str, torch.Tensor]]:
    """(config, head, state dict in native names) of a native, Hugging Face or official folder."""
    return _read_folder(Path(path), weights=True)


def _read_folder(path: Path, weights: bool):
    if not path.exists():
        raise FileNotFoundError(f"{path}: model folder not found (give a folder written by save_model, "
                                f"pretrain.convert or deberta.convert, a Hugging Face DeBERTa folder, or an "
                                f"official release)")
    config_path = path / CONFIG_FILE
    if config_path.is_file():
        values = _read_json(config_path)
        if values.get("format") == NATIVE_FORMAT:
            if values.get("format_version") != NATIVE_FORMAT_VERSION:
                raise CheckpointError(f"{config_path}: format_version {values.get('format_version')} is not "
                                      f"supported (this code reads version {NATIVE_FORMAT_VERSION})")
            try:
                config = DebertaConfig.from_dict(values["config"])
            except (TypeError, ValueError) as error:
                raise CheckpointError(f"{config_path}: {error}") from None
            return config, values["head"], _load_safetensors(path / WEIGHTS_FILE) if weights else None
        if values.get("model_type") in ("deberta", "deberta-v2"):
            state = _read_hf_weights(path) if weights else _hf_weight_names(path)
            config = _config_from_reference(values, state, config_path)
            return config, _hf_head(values, state), reference_to_native(state, config) if weights else None
        raise CheckpointError(f"{config_path}: neither a native model folder (format={NATIVE_FORMAT!r}) nor a "
                              f"Hugging Face DeBERTa one (model_type 'deberta' or 'deberta-v2')")
    if (path / OFFICIAL_WEIGHTS_FILE).is_file() and (path / OFFICIAL_CONFIG_FILE).is_file():
        values = _read_json(path / OFFICIAL_CONFIG_FILE)
        state = _torch_load(path / OFFICIAL_WEIGHTS_FILE, mmap=not weights)
        # Official configs do not name the version; v2 introduced the separate projections.
        model_type = "deberta" if any(k.endswith("attention.self.in_proj.weight") for k in state) else "deberta-v2"
        values = {**values, "model_type": model_type}
        config = _config_from_reference(values, state, path / OFFICIAL_CONFIG_FILE)
        return config, _hf_head(values, state), reference_to_native(state, config) if weights else None
    hint = ""
    if (path / "latest").is_file() or (path / "checkpoint.json").is_file():  # training/checkpoint.py's layout
        hint = (f"; it is a pretraining checkpoint: write a model folder from it with `python -m pretrain.convert "
                f"{path if (path / 'latest').is_file() else path.parent} --output DIR`")
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE}, and no official {OFFICIAL_WEIGHTS_FILE} with "
                            f"{OFFICIAL_CONFIG_FILE}{hint}")


def read_weights_file(file: str | Path, like: DebertaConfig) -> tuple[DebertaConfig, str, dict[str, torch.Tensor]]:
    """(config, head, state dict in native names) of a bare weights file: a state dict under
    the official or Hugging Face names, without a config, such as the released v3
    repositories' pytorch_model.generator.bin (the official MaskedLanguageModel: ``deberta.*``
    and ``lm_predictions.lm_head.*``). Its config is ``like`` (the model it was released
    with) with what the weights show: depth, width, intermediate size, vocabulary, embedding
    size, and the enhanced mask decoder where absolute positions are stored."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"weights file not found: {file}")
    # Memory-mapped: tensors are read when copied into a model, never when only the config is asked for.
    state = _load_safetensors(file) if file.suffix == ".safetensors" else _torch_load(file, mmap=True)
    if any(k.startswith(("embeddings.", "encoder.")) for k in state):
        state = {(BACKBONE_PREFIX + k if k.startswith(("embeddings.", "encoder.")) else k): v for k, v in state.items()}

    def shape(name: str) -> tuple:
        if name not in state:
            raise CheckpointError(f"{file}: no {name}: not a DeBERTa state dict")
        return tuple(state[name].shape)

    vocab_size, embedding_size = shape(BACKBONE_PREFIX + "embeddings.word_embeddings.weight")
    hidden = shape(BACKBONE_PREFIX + "embeddings.LayerNorm.weight")[0]
    layers = {int(m.group(1)) for k in state if (m := re.match(r"^deberta\.encoder\.layer\.(\d+)\.", k))}
    values = {**like.to_dict(), "vocab_size": vocab_size, "embedding_size": embedding_size, "hidden_size": hidden,
              "num_hidden_layers": len(layers),
              "intermediate_size": shape(BACKBONE_PREFIX + "encoder.layer.0.intermediate.dense.weight")[0]}
    if hidden != like.hidden_size:  # heads of the same size as the model's
        values.update(num_attention_heads=hidden // like.attention_head_size,
                      attention_head_size=like.attention_head_size)
    positions = BACKBONE_PREFIX + "embeddings.position_embeddings.weight"
    if positions in state:
        values["max_position_embeddings"] = shape(positions)[0]
    values["emd_layers"] = 2 if positions in state and not like.position_biased_input else 0
    try:
        config = DebertaConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{file}: {error}") from None
    return config, _hf_head({}, state), reference_to_native(state, config)


def load_model(path: str | Path, head: str | None = None, **config_overrides) -> DebertaPreTrained:
    """The model of a native, Hugging Face or official folder, with its head.

    ``head`` other than the folder's puts a new, freshly initialised head on the stored
    backbone (finetuning a pretrained model); every backbone weight must still be there.
    ``config_overrides`` change non-shape fields such as dropout or num_labels. The model
    comes back in eval mode.
    """
    config, stored_head, state = read_folder(path)
    if config_overrides:
        config = config.replace(**config_overrides)
    head = head or stored_head
    model = build_model(config, head)
    if head != stored_head:
        kept = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        dropped = sorted(set(state) - set(kept))
        if dropped:
            logger.info("%s: head %r replaced by %r; unused weights: %s", path, stored_head, head, dropped)
        state = kept
    if isinstance(model, DebertaModel):
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{path}: {error}") from None
    missing = list(result.missing_keys)
    if isinstance(model, DebertaModel):  # its keys carry no prefix; all are backbone weights
        missing = [BACKBONE_PREFIX + k for k in missing]
    if head != stored_head and not isinstance(model, DebertaModel):
        fresh = [k for k in missing if not k.startswith(BACKBONE_PREFIX)]
        missing = [k for k in missing if k.startswith(BACKBONE_PREFIX)]
        logger.info("%s: new %s head, initialised: %s", path, head, fresh)
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not match the {head} model; missing from the folder: "
                              f"{missing}; in the folder but not in the model: {list(result.unexpected_keys)}")
    return model.eval()  # like from_pretrained; call .train() to finetune


def _read_json(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                              f"{error.msg}); repair the file or write the folder again") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not a text file (byte {error.start}); write the folder again") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(values).__name__}, not an object of settings")
    return values


# ---------------------------------------------------------------------------------------
# Hugging Face and official folders
# ---------------------------------------------------------------------------------------
def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / WEIGHTS_FILE).is_file():
        return _load_safetensors(path / WEIGHTS_FILE)
    index = path / (WEIGHTS_FILE + ".index.json")
    if index.is_file():
        state = {}
        for shard in sorted(set(_read_json(index)["weight_map"].values())):
            state.update(_load_safetensors(path / shard))
        return state
    if (path / "pytorch_model.bin").is_file():
        return _torch_load(path / "pytorch_model.bin", mmap=False)
    raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}, sharded safetensors index or pytorch_model.bin")


def _hf_weight_names(path: Path) -> dict[str, None] | dict[str, torch.Tensor]:
    """The weight names of a Hugging Face folder (what the config derivation looks at), read
    without loading tensors where the format allows it."""
    if (path / WEIGHTS_FILE).is_file():
        try:
            with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
                return dict.fromkeys(f.keys())
        except SafetensorError as error:
            raise _damaged(path / WEIGHTS_FILE, error) from None
    index = path / (WEIGHTS_FILE + ".index.json")
    if index.is_file():
        return dict.fromkeys(_read_json(index)["weight_map"])
    if (path / "pytorch_model.bin").is_file():
        return _torch_load(path / "pytorch_model.bin", mmap=True)
    raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}, sharded safetensors index or pytorch_model.bin")


def _damaged(file: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{file}: damaged or incomplete weights file ({type(error).__name__}: {error}); "
                           f"copy, convert or export it again")


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except SafetensorError as error:
        raise _damaged(file, error) from None


def _torch_load(file: Path, mmap: bool) -> dict[str, torch.Tensor]:
    """A pickled state dict. ``mmap``: the tensors stay on disk until touched (zip-format files,
    PyTorch >= 1.6); an older, non-zip file cannot be mapped and is loaded whole."""
    if mmap:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            pass  # the legacy (non-zip) format, or a damaged file: the full load below tells
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise _damaged(file, error) from None


def _hf_head(values: dict, state: dict) -> str:
    for architecture in values.get("architectures") or []:
        for suffix, head in HF_HEAD_SUFFIXES.items():
            if architecture in (f"Deberta{suffix}", f"DebertaV2{suffix}"):
                return head
    # Official state dicts name no architecture; their head weights tell.
    if any(k.startswith(("lm_predictions.", "cls.predictions.")) for k in state):
        return "masked_lm"
    if any(k.startswith("mask_predictions.") for k in state):
        return "replaced_token_detection"
    return "backbone"


# What the reference code assumes where a config is silent (its config classes and getattr
# defaults), which differ from our v3 defaults.
REFERENCE_DEFAULTS = dict(
    relative_attention=False, position_biased_input=True, pos_att_type=(), max_relative_positions=-1,
    position_buckets=-1, share_att_key=False, norm_rel_ebd="none", conv_kernel_size=0, conv_act="tanh",
    conv_groups=1, type_vocab_size=0, layer_norm_eps=1e-7,
)
V2_ONLY_FIELDS = ("position_buckets", "share_att_key", "norm_rel_ebd", "conv_kernel_size", "conv_act",
                  "conv_groups", "attention_head_size")


def _config_from_reference(values: dict, state: dict, source: Path) -> DebertaConfig:
    known = set(DebertaConfig.__dataclass_fields__)
    given = {k: v for k, v in values.items() if k in known and v is not None}
    if values["model_type"] == "deberta":  # v1 code ignores these fields
        given = {k: v for k, v in given.items() if k not in V2_ONLY_FIELDS}
    fields = {**REFERENCE_DEFAULTS, **given}
    if values.get("id2label"):
        fields["num_labels"] = len(values["id2label"])
    if values.get("pooler_hidden_size", fields.get("hidden_size")) != fields.get("hidden_size"):
        raise CheckpointError(f"{source}: pooler_hidden_size must equal hidden_size")
    if "emd_layers" not in values:
        # Official checkpoints keep the absolute positions the enhanced mask decoder used;
        # Hugging Face drops them on load. Keep them and the decoder where they are present.
        has_positions = any(k.endswith("embeddings.position_embeddings.weight") for k in state)
        fields["emd_layers"] = 2 if has_positions and not fields["position_biased_input"] else 0
    try:
        return DebertaConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error}") from None


_V1_LAYER = re.compile(r"^(.*attention\.self\.)(in_proj\.weight|q_bias|v_bias|pos_proj\.weight|pos_q_proj\.(weight|bias))$")
_HF_LEGACY_MLM = {
    "cls.predictions.transform.dense.": "lm_predictions.lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_predictions.lm_head.LayerNorm.",
    "cls.predictions.bias": "lm_predictions.lm_head.bias",
}


def _split_in_proj(weight: torch.Tensor, num_heads: int):
    """v1's fused projection interleaves per head: rows [h*3d, h*3d+d) are head h's query,
    the next d its key, the next d its value."""
    heads = weight.view(num_heads, 3, -1, weight.shape[-1])
    return [heads[:, i].reshape(-1, weight.shape[-1]) for i in range(3)]


def reference_to_native(state: dict[str, torch.Tensor], config: DebertaConfig) -> dict[str, torch.Tensor]:
    """Hugging Face / official weight names -> ours."""
    state = dict(state)
    if any(k.startswith("embeddings.") for k in state):  # a bare base model
        state = {(BACKBONE_PREFIX + k if k.startswith(("embeddings.", "encoder.")) else k): v
                 for k, v in state.items()}
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids") or key in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            continue  # a buffer, and the output layer tied to the word embeddings
        for old, new in _HF_LEGACY_MLM.items():
            if key.startswith(old):
                key = new + key[len(old):]
        match = _V1_LAYER.match(key) if config.model_type == "deberta" else None
        if match is None:
            out[key] = value
            continue
        prefix, name = match.group(1), match.group(2)
        if name == "in_proj.weight":
            parts = _split_in_proj(value, config.num_attention_heads)
            for proj, part in zip(("query_proj", "key_proj", "value_proj"), parts):
                out[f"{prefix}{proj}.weight"] = part
        elif name == "q_bias":
            out[prefix + "query_proj.bias"] = value
        elif name == "v_bias":
            out[prefix + "value_proj.bias"] = value
        elif name == "pos_proj.weight":
            out[prefix + "pos_key_proj.weight"] = value
        else:
            out[prefix + "pos_query_proj." + name.split(".")[-1]] = value
    return out


def native_to_reference(state: dict[str, torch.Tensor], config: DebertaConfig) -> dict[str, torch.Tensor]:
    """Our weight names -> Hugging Face's (legacy MLM head names, v1's fused projection)."""
    out = {}
    for key, value in state.items():
        for hf_name, native in _HF_LEGACY_MLM.items():
            if key.startswith(native):
                key = hf_name + key[len(native):]
        out[key] = value
    if "cls.predictions.bias" in out:
        out["cls.predictions.decoder.weight"] = out[BACKBONE_PREFIX + "embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    if config.model_type == "deberta":
        for key in [k for k in out if k.endswith("attention.self.query_proj.weight")]:
            prefix = key[: -len("query_proj.weight")]
            q, k, v = (out.pop(prefix + f"{p}_proj.weight") for p in ("query", "key", "value"))
            out[prefix + "in_proj.weight"] = torch.stack(
                [t.view(config.num_attention_heads, -1, t.shape[-1]) for t in (q, k, v)], dim=1
            ).reshape(-1, q.shape[-1])
            out[prefix + "q_bias"] = out.pop(prefix + "query_proj.bias")
            out[prefix + "v_bias"] = out.pop(prefix + "value_proj.bias")
            if prefix + "pos_key_proj.weight" in out:
                out[prefix + "pos_proj.weight"] = out.pop(prefix + "pos_key_proj.weight")
            for name in ("weight", "bias"):
                if prefix + f"pos_query_proj.{name}" in out:
                    out[prefix + f"pos_q_proj.{name}"] = out.pop(prefix + f"pos_query_proj.{name}")
    return out


def hf_config(config: DebertaConfig, head: str, finetune: dict | None = None) -> dict:
    """A Hugging Face config.json for ``config`` (our extra fields ride along; HF keeps them).

    ``finetune`` is what finetuning recorded (``read_finetune_record``): its label names
    become ``id2label`` / ``label2id`` (else transformers' ``LABEL_i``), its task
    ``finetuning_task``, and the whole record rides along under "finetune".
    """
    prefix = "DebertaV2" if config.model_type == "deberta-v2" else "Deberta"
    suffix = {head: suffix for suffix, head in HF_HEAD_SUFFIXES.items()}.get(head)
    if suffix is None:
        raise CheckpointError(f"transformers has no DeBERTa class for the {head} head")
    if head == "multiple_choice" and config.model_type == "deberta":
        raise CheckpointError("transformers has no DebertaForMultipleChoice (v1)")
    values = config.to_dict()
    values.pop("attention_backend")
    values["pos_att_type"] = "|".join(config.pos_att_type)
    if config.model_type == "deberta":
        for name in V2_ONLY_FIELDS:
            values.pop(name)
    names = _label_names(config, (finetune or {}).get("labels"))
    values.update(architectures=[prefix + suffix], pooler_hidden_size=config.hidden_size, legacy=True,
                  id2label={str(i): name for i, name in enumerate(names)},
                  label2id={name: i for i, name in enumerate(names)})
    if finetune:
        if finetune.get("task"):
            values["finetuning_task"] = finetune["task"]
        values[FINETUNE_RECORD] = finetune
    return values


def _label_names(config: DebertaConfig, labels) -> list[str]:
    if labels is None:  # not a classifier, or a regressor (one output)
        return [f"LABEL_{i}" for i in range(config.num_labels)]
    labels = [str(name) for name in labels]
    if len(labels) != config.num_labels:
        raise CheckpointError(f"the finetuning record names {len(labels)} labels {labels} but the model has "
                              f"{config.num_labels} outputs; fix the \"finetune\" labels in config.json")
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"the finetuning record repeats a label name: {labels}; fix the \"finetune\" "
                              f"labels in config.json")
    return labels


def read_finetune_record(path: str | Path) -> dict | None:
    """What finetuning recorded about a folder's model: its task, label names (in output
    order), step and results; None when the folder says nothing.

    A native folder keeps the record under "finetune" in config.json, and so does a Hugging
    Face folder that ``export_hf`` wrote. Another Hugging Face folder gives the label names of
    its ``id2label`` (unless they are transformers' ``LABEL_i`` placeholders) and its
    ``finetuning_task``. Official folders record neither.
    """
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        return None
    values = _read_json(config_path)
    record = values.get(FINETUNE_RECORD)
    if record is not None:
        if not isinstance(record, dict):
            raise CheckpointError(f"{config_path}: \"finetune\" holds a JSON {type(record).__name__}, not an "
                                  f"object; remove it or write the folder again")
        return record
    if values.get("format") == NATIVE_FORMAT:
        return None
    record = {}
    if values.get("finetuning_task"):
        record["task"] = values["finetuning_task"]
    id2label = values.get("id2label") or {}
    try:
        labels = [id2label[key] for key in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        raise CheckpointError(f"{config_path}: id2label keys must be output numbers, got {sorted(id2label)}") from None
    if sorted(int(key) for key in id2label) != list(range(len(labels))):
        raise CheckpointError(f"{config_path}: id2label must number the outputs 0..{len(labels) - 1}, got "
                              f"{sorted(id2label, key=int)}")
    if labels != [f"LABEL_{i}" for i in range(len(labels))]:
        record["labels"] = labels
    return record or None


def export_hf(model: DebertaPreTrained, folder: str | Path, tokenizer=None, finetune: dict | None = None) -> Path:
    """Write a folder that ``transformers.AutoModel*.from_pretrained`` loads; ``finetune`` (the
    record of ``read_finetune_record``) names its labels and records its task and results."""
    if model.head == "replaced_token_detection":
        raise CheckpointError("transformers has no replaced-token-detection DeBERTa class; export the backbone "
                              "(load_model(path, head='backbone')) or keep the native format")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = hf_config(model.config, model.head, finetune)
    state = native_to_reference(_canonical_state(model), model.config)
    if model.head == "backbone":
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items()}
    # Tied tensors must be separate storage for safetensors.
    state = {k: v.clone() if k.startswith("cls.predictions.decoder") else v for k, v in state.items()}
    with atomic_file(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)
    _write_json_atomic(folder / CONFIG_FILE, values)
    return folder
