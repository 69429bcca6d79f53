"""Continued pretraining: a run's initial weights from model folders.

    --init_model DIR        the MLM model, or the RTD discriminator
    --init_generator PATH   the RTD generator: a model folder, or a bare weights file such as
                            the released v3 repositories' pytorch_model.generator.bin

Every folder format the library reads is accepted (native, Hugging Face DeBERTa / DeBERTa-v2,
official). The architecture comes from the folder; ``--set_model`` may only change the
runtime fields in ``RUNTIME_FIELDS`` (dropout, attention backend, the initialisation of
heads the folder lacks), and ``--model_config`` is not read. A head the folder lacks is
initialised fresh and logged; weights the folder has and the model does not use are logged.

The tokenizer of the data must be the model's: the two vocabularies (every id's piece and
the special tokens' ids) are compared, not the files.

Weights are read only when a run starts: a run that resumes takes its weights from its
checkpoint and reads only the architecture here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from deberta import DebertaConfig, load_tokenizer
from deberta.checkpoint import (BACKBONE_PREFIX, CONFIG_FILE, HEAD_PREFIXES, OFFICIAL_WEIGHTS_FILE,
                                RELEASE_GENERATOR_FILE, read_config, read_folder, read_weights_file)
from deberta.model import DebertaPreTrained
from deberta.tokenizer import Tokenizer

Log = Callable[[str], None]

# DebertaConfig fields that --set_model may change on a model read from a folder: they
# change neither the shapes nor the function of the stored weights.
RUNTIME_FIELDS = ("attention_backend", "hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout",
                  "cls_dropout", "initializer_range")
GENERATOR_FOLDER = "generator"  # where pretrain.convert writes an RTD run's generator


def folder_model_config(init_model: str, overrides: dict) -> DebertaConfig:
    """The architecture of ``init_model`` with the runtime ``overrides`` (--set_model,
    --attention_backend) applied; any other override is refused, naming it."""
    refused = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if refused:
        raise ValueError(f"--init_model {init_model}: the architecture comes from the folder; --set_model may "
                         f"only change {', '.join(RUNTIME_FIELDS)}, not {', '.join(refused)}")
    config, _ = read_config(init_model)
    return config.replace(**overrides) if overrides else config


@dataclass
class Source:
    """A model read from a folder or a weights file: its config, head and (unless only the
    architecture was asked for) its state dict in native names."""
    path: str
    config: DebertaConfig
    head: str
    state: Optional[dict]


def read_source(path: str | Path, like: DebertaConfig | None = None, weights: bool = True) -> Source:
    """A model folder of any format; or a bare weights file (``like`` then gives the config
    fields its weights cannot tell, see ``deberta.checkpoint.read_weights_file``)."""
    path = Path(path)
    if path.is_file():
        if like is None:
            raise ValueError(f"{path}: a weights file without a config; give a model folder")
        config, head, state = read_weights_file(path, like)
        return Source(str(path), config, head, state if weights else None)
    if weights:
        config, head, state = read_folder(path)
        return Source(str(path), config, head, state)
    config, head = read_config(path)
    return Source(str(path), config, head, None)


def find_generator(init_model: str, init_generator: str) -> Optional[Path]:
    """--init_generator when given; else the released layout's pytorch_model.generator.bin
    beside the model, or the generator/ folder that pretrain.convert writes; else None."""
    if init_generator:
        path = Path(init_generator)
        if not path.exists():
            raise FileNotFoundError(f"--init_generator {init_generator}: not found")
        return path
    for candidate in (Path(init_model) / RELEASE_GENERATOR_FILE, Path(init_model) / GENERATOR_FOLDER):
        if candidate.is_file() or (candidate / CONFIG_FILE).is_file() or (candidate / OFFICIAL_WEIGHTS_FILE).is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------
def vocabulary(tokenizer: Tokenizer) -> tuple[dict, list]:
    """(special token ids, the piece of every id): what decides how ids are read."""
    pieces = []
    for token_id in range(tokenizer.vocab_size):
        try:
            pieces.append(tokenizer.id_to_token(token_id))
        except (KeyError, IndexError):
            pieces.append(None)
    return dict(tokenizer.special_ids), pieces


def tokenizer_name(tokenizer: Tokenizer) -> str:
    return ", ".join(str(p) for p in tokenizer.files().values())


def check_vocabulary(model_path: str | Path, data_tokenizer: Tokenizer, data_tokenizer_name: str, log: Log) -> None:
    """Refuse a model whose tokenizer is not the data's (compared by vocabulary), naming both.
    A folder without a tokenizer that this library reads cannot be compared: logged."""
    try:
        model_tokenizer = load_tokenizer(model_path)
    except (FileNotFoundError, ValueError) as error:
        log(f"warning: {model_path} holds no tokenizer this library reads ({error}); the data's tokenizer "
            f"{data_tokenizer_name} (vocab {data_tokenizer.vocab_size}) is assumed to be the model's")
        return
    ours, theirs = vocabulary(data_tokenizer), vocabulary(model_tokenizer)
    if ours == theirs:
        return
    if ours[0] != theirs[0]:
        difference = f"special token ids {theirs[0]} in the model's, {ours[0]} in the data's"
    elif len(ours[1]) != len(theirs[1]):
        difference = f"vocabulary sizes {len(theirs[1])} (model) and {len(ours[1])} (data)"
    else:
        token_id = next(i for i, (a, b) in enumerate(zip(ours[1], theirs[1])) if a != b)
        difference = f"id {token_id} is {theirs[1][token_id]!r} for the model, {ours[1][token_id]!r} for the data"
    raise ValueError(f"the data's tokenizer {data_tokenizer_name} is not the tokenizer of the model {model_path} "
                     f"({tokenizer_name(model_tokenizer)}): {difference}. Tokenize the data with the model's "
                     f"tokenizer (python -m data_prep shard --tokenizer {tokenizer_name(model_tokenizer)} ...)")


# ---------------------------------------------------------------------------------------
# Weights into a model
# ---------------------------------------------------------------------------------------
def load_into(model: DebertaPreTrained, source: Source, log: Log, what: str, skip: tuple[str, ...] = ()) -> None:
    """``source``'s weights into ``model`` (names in ``skip`` are left to the caller).

    Every backbone weight of the model must be in the source. The head is loaded when the
    source has all of its weights, and initialised fresh (logged) when it has none of them;
    weights of the source that the model does not use are logged."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    state = {k: v for k, v in source.state.items() if not k.startswith(skip)}
    backbone = [k for k in own if k.startswith(BACKBONE_PREFIX)]
    head = [k for k in own if not k.startswith(BACKBONE_PREFIX)]
    missing = [k for k in backbone if k not in state]
    if missing:
        raise ValueError(f"{source.path}: the {what} ({model.head}) needs weights the folder lacks: {missing}")
    head_found = [k for k in head if k in state]
    if head_found and len(head_found) != len(head):
        raise ValueError(f"{source.path}: the {model.head} head of the {what} is incomplete; missing "
                         f"{sorted(set(head) - set(head_found))}")
    load = backbone + head_found
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})" for k in load
             if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{source.path}: weights of another shape than the {what}'s: {wrong}")
    model.load_state_dict({k: state[k] for k in load}, strict=False)
    if not head_found and head:
        log(f"{what}: {source.path} has no {model.head} head ({HEAD_PREFIXES.get(model.head, '')}*): "
            f"initialised fresh")
    unused = sorted(set(state) - set(own))
    if unused:
        log(f"{what}: weights of {source.path} not used: {summarize_names(unused)}")
    log(f"{what}: {len(load)} tensors loaded from {source.path}" + (" (its head included)" if head_found else ""))


def summarize_names(names: list[str]) -> str:
    """Backbone names in full, the others grouped by their module (``mask_predictions.*``), with counts."""
    groups: dict[str, int] = {}
    for name in names:
        key = name if name.startswith(BACKBONE_PREFIX) or "." not in name else name.split(".")[0] + ".*"
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" if n > 1 else k for k, n in groups.items())


def folding_delta(target: torch.Tensor, base: torch.Tensor, steps: int = 16) -> tuple[torch.Tensor, int, float]:
    """A delta with base + delta == target in float32, element by element, where one exists.

    target - base rounds; base + (target - base) can then miss target by an ulp. As
    d -> fl(base + d) is monotone, the delta of each missing element is moved one ulp at a
    time towards target. Returns (delta, elements still missing, their largest error).
    A table that was itself computed as base + delta (GDES training) always has an exact
    delta within a few ulps of target - base (exact subtraction where the two are close)."""
    target, base = target.float(), base.float()
    delta = target - base
    for _ in range(steps):
        folded = base + delta
        low, high = folded < target, folded > target
        if not (low.any() or high.any()):
            break
        delta = torch.where(low, torch.nextafter(delta, torch.full_like(delta, float("inf"))), delta)
        delta = torch.where(high, torch.nextafter(delta, torch.full_like(delta, float("-inf"))), delta)
    error = (base + delta - target).abs()
    # Where no float32 delta hits target exactly, keep the closest one found.
    fallback = target - base
    closer = (base + fallback - target).abs() < error
    delta = torch.where(closer, fallback, delta)
    error = (base + delta - target).abs()
    missing = error > 0
    return delta, int(missing.sum()), float(error.max()) if missing.any() else 0.0


# ---------------------------------------------------------------------------------------
# The objectives' initial weights
# ---------------------------------------------------------------------------------------
def build_objective(config, model_config: DebertaConfig, tokenizer: Tokenizer, tokenizer_path: str,
                    checkpoint_dir: Path, log: Log):
    """The run's objective: built from the seed, or on --init_model / --init_generator.
    A run that resumes reads only the architecture of those (its checkpoint has the weights)."""
    from training.checkpoint import CheckpointManager

    run = config.run
    if not run.init_model:
        return config.objective_class(config.objective, model_config)
    check_vocabulary(run.init_model, tokenizer, tokenizer_path, log)
    if run.init_generator and Path(run.init_generator).is_dir():
        check_vocabulary(run.init_generator, tokenizer, tokenizer_path, log)
    resuming = CheckpointManager(checkpoint_dir, keep=1, rank=0, world=1).latest()
    if resuming is not None:
        log(f"resuming from {resuming}: the weights of --init_model {run.init_model} are not read "
            f"(its architecture is)")
    else:
        log(f"continued pretraining: initial weights from {run.init_model}"
            + (f" and {run.init_generator}" if run.init_generator else "")
            + f"; the architecture is the folder's (--model_config {run.model_config} not read)")
    return config.objective_class.from_pretrained(config.objective, model_config, run.init_model,
                                                  run.init_generator, resuming is None, log)


def mlm_from_pretrained(cls, options, model_config, init_model, init_generator, weights, log):
    """MaskedLanguageModeling on a model folder: backbone, and the MLM head (decoder
    positions included) when the folder has it."""
    if init_generator:
        raise ValueError("--init_generator is for --objective rtd (MLM trains one model: --init_model)")
    objective = cls(options, model_config)
    if model_config.emd_layers == 0 and not model_config.position_biased_input:
        log(f"note: {init_model} has no absolute positions (no position_biased_input, no enhanced mask decoder): "
            f"it continues without them, as stored")
    if weights:
        load_into(objective.model, read_source(init_model), log, "MLM model")
    return objective


WORD_EMBEDDING = BACKBONE_PREFIX + "embeddings.word_embeddings."


def rtd_from_pretrained(cls, options, model_config, init_model, init_generator, weights, log):
    """ReplacedTokenDetection on a discriminator folder and a generator (--init_generator, or
    found beside the discriminator; else a fresh one, logged). With embedding sharing the
    discriminator's table is kept: GDES starts its delta at (discriminator table - generator
    table), so that the folded table is the discriminator's; ``shared`` trains the
    discriminator's table in both models (the generator's own is not used, logged)."""
    from .objectives.rtd import generator_config

    if init_generator and options.generator_config:
        raise ValueError(f"--init_generator {init_generator} and --generator_config {options.generator_config}: "
                         f"the generator's architecture comes from its weights; give one of the two")
    path = None if options.generator_config else find_generator(init_model, init_generator)
    generator = None
    if path is not None:
        generator = read_source(path, like=model_config, weights=weights)
        runtime = {name: getattr(model_config, name) for name in RUNTIME_FIELDS}
        generator_architecture = generator.config.replace(**runtime)
        log(f"generator from {path} ({generator_architecture.num_hidden_layers} layers, hidden "
            f"{generator_architecture.hidden_size})")
    else:
        generator_architecture = generator_config(options, model_config)
        if generator_architecture.emd_layers == 0 and not generator_architecture.position_biased_input \
                and generator_architecture.embedding_size == generator_architecture.hidden_size:
            generator_architecture = generator_architecture.replace(emd_layers=2)  # as the official MLM
        where = f"--generator_config {options.generator_config}" if options.generator_config else \
            f"no --init_generator, and neither {Path(init_model) / RELEASE_GENERATOR_FILE} nor " \
            f"{Path(init_model) / GENERATOR_FOLDER}/ exists"
        log(f"generator: {where}: a FRESH generator with random weights "
            f"({generator_architecture.num_hidden_layers} layers, hidden {generator_architecture.hidden_size}, "
            f"emd_layers {generator_architecture.emd_layers}) is trained beside the discriminator of {init_model}")
    objective = cls(options, model_config, generator=generator_architecture)
    if not weights:
        return objective
    sharing = options.embedding_sharing
    if generator is not None:
        load_into(objective.generator, generator, log, "generator")
    discriminator = read_source(init_model)
    load_into(objective.discriminator, discriminator, log, "discriminator",
              skip=(WORD_EMBEDDING,) if sharing != "none" else ())
    if sharing == "none":
        return objective
    table = discriminator.state.get(WORD_EMBEDDING + "weight")
    generator_table = objective.generator.deberta.embeddings.word_embeddings.weight
    if table is None:
        raise ValueError(f"{init_model}: no {WORD_EMBEDDING}weight: not a DeBERTa model folder")
    if tuple(table.shape) != tuple(generator_table.shape):
        raise ValueError(f"{init_model}: word embedding {tuple(table.shape)}, the generator's "
                         f"{tuple(generator_table.shape)}: embedding sharing needs one shape "
                         f"(or --embedding_sharing none)")
    with torch.no_grad():
        if sharing == "gdes" and generator is None:
            # A fresh generator starts from the discriminator's table: the delta starts at zero.
            generator_table.copy_(table.to(generator_table.dtype))
            objective.discriminator.deberta.embeddings.word_embeddings.delta.zero_()
            log(f"discriminator: GDES delta zero; the fresh generator's word embedding starts as the discriminator's "
                f"table of {init_model}, which the folded table therefore gives exactly")
        elif sharing == "gdes":
            delta, missing, error = folding_delta(table, generator_table)
            objective.discriminator.deberta.embeddings.word_embeddings.delta.copy_(delta)
            log("discriminator: GDES delta = its word embedding - the generator's; folded back it gives the "
                + ("table of the folder exactly" if not missing else
                   f"table of the folder except {missing} elements that no float32 delta reaches (largest "
                   f"error {error:.3g})"))
        else:
            generator_table.copy_(table.to(generator_table.dtype))
            log("embedding_sharing shared: one word embedding for both, the discriminator's from "
                f"{init_model}" + (f" (the generator's own from {generator.path} is not used)" if generator else ""))
    return objective
