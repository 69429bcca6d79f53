"""Continued pretraining (--init_model, --init_generator) from the layout of the released
DeBERTa-v3 repositories, built here from random weights:

    config.json                   a DebertaV2Config (transformers), no architectures
    pytorch_model.bin             the discriminator as the official code names it: deberta.*,
                                  mask_predictions.* (its RTD head) and lm_predictions.lm_head.*
    pytorch_model.generator.bin   the generator (the official MaskedLanguageModel: deberta.*,
                                  absolute positions for its enhanced mask decoder, lm_predictions.*)
    spm.model, tokenizer_config.json

Head names as in the official DeBERTa/apps/models/replaced_token_detection_model.py
(LMMaskPredictionHead: dense, LayerNorm, classifier) and masked_language_model.py
(EnhancedMaskDecoder.lm_head: dense, LayerNorm, bias); the backbone is transformers'
DebertaV2Model under the official ``deberta.`` prefix. As GDES trained it, the released
discriminator table is the generator's table plus a delta, summed in float32.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece
import torch
from pretrain_helpers import REPO, cpu_env, explain, read_jsonl, run_deepspeed, train_args
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from data_prep import ShardedDataset  # noqa: E402
from deberta import DebertaConfig, DebertaForMaskedLM, DebertaForReplacedTokenDetection, load_tokenizer  # noqa: E402
from deberta.checkpoint import read_config, read_weights_file, save_model  # noqa: E402
from pretrain.config import parse_args  # noqa: E402
from pretrain.data import VALID_STREAM, MaskedSequences, valid_batches  # noqa: E402
from pretrain.init_weights import build_objective, check_vocabulary, folding_delta, folder_model_config  # noqa: E402
from pretrain.masking import Masker  # noqa: E402
from pretrain.objectives.mlm import MaskedLanguageModeling  # noqa: E402
from pretrain.objectives.rtd import ReplacedTokenDetection, RTDOptions  # noqa: E402

SPM = REPO / "tests" / "assets" / "spm.model"
FIELDS = dict(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64, relative_attention=True, max_relative_positions=-1, position_buckets=32,
              pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
              type_vocab_size=0, hidden_act="gelu", layer_norm_eps=1e-7)
GENERATOR_LAYERS = 1
# One Adam step at lr 1e-12 moves a weight by about 1e-12; a weight loaded into the wrong
# place differs by about 0.05.
UNCHANGED = dict(rtol=0.0, atol=1e-10)
# The folded GDES table after that step: the step moves the generator's entries near zero by
# about 1e-12, and their sum with the delta may round to the neighbouring float32 (one ulp,
# 4e-9 at these magnitudes). Before any step the fold is exact (tested in process below).
FOLDED = dict(rtol=0.0, atol=1e-8)


def random_backbone(layers: int, seed: int) -> dict[str, torch.Tensor]:
    """transformers' DebertaV2Model with every weight moved off its initial value, under ``deberta.``."""
    torch.manual_seed(seed)
    model = transformers.DebertaV2Model(transformers.DebertaV2Config(**{**FIELDS, "num_hidden_layers": layers}))
    state = {}
    for name, value in model.state_dict().items():
        if not name.endswith("position_ids"):
            state["deberta." + name] = value + torch.randn_like(value) * 0.05
    return state


def random_tensors(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in shapes.items()}


def lm_head(hidden: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    prefix = "lm_predictions.lm_head."
    return random_tensors({prefix + "dense.weight": (hidden, hidden), prefix + "dense.bias": (hidden,),
                           prefix + "LayerNorm.weight": (hidden,), prefix + "LayerNorm.bias": (hidden,),
                           prefix + "bias": (vocab,)}, seed)


def write_release(folder: Path, generator: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """The release layout in ``folder``; returns the tensors written, by file."""
    folder.mkdir(parents=True, exist_ok=True)
    hidden, vocab = FIELDS["hidden_size"], FIELDS["vocab_size"]
    generator_state = {**random_backbone(GENERATOR_LAYERS, seed=1), **lm_head(hidden, vocab, seed=2),
                       **random_tensors({"deberta.embeddings.position_embeddings.weight":
                                         (FIELDS["max_position_embeddings"], hidden)}, seed=3)}
    discriminator = {**random_backbone(FIELDS["num_hidden_layers"], seed=4), **lm_head(hidden, vocab, seed=5),
                     **random_tensors({"mask_predictions.dense.weight": (hidden, hidden),
                                       "mask_predictions.dense.bias": (hidden,),
                                       "mask_predictions.LayerNorm.weight": (hidden,),
                                       "mask_predictions.LayerNorm.bias": (hidden,),
                                       "mask_predictions.classifier.weight": (1, hidden),
                                       "mask_predictions.classifier.bias": (1,)}, seed=6)}
    word = "deberta.embeddings.word_embeddings.weight"
    # GDES: the discriminator's table was the generator's plus the learned delta.
    delta = random_tensors({word: (vocab, hidden)}, seed=7)[word]
    discriminator[word] = generator_state[word] + delta
    torch.save(discriminator, folder / "pytorch_model.bin")
    if generator:
        torch.save(generator_state, folder / "pytorch_model.generator.bin")
    config = transformers.DebertaV2Config(**FIELDS).to_dict()
    config.pop("architectures", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(SPM, folder / "spm.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    return {"discriminator": discriminator, "generator": generator_state}


def assert_same(model_state: dict, released: dict, names) -> None:
    for name in names:
        torch.testing.assert_close(model_state[name].float(), released[name].float(), **UNCHANGED, msg=name)


def quiet(*_):
    pass


# ---------------------------------------------------------------------------------------
# In process: reading the layout, the objectives' initial weights
# ---------------------------------------------------------------------------------------
def test_release_generator_file_reads_with_its_depth_and_decoder(tmp_path):
    write_release(tmp_path)
    discriminator, _ = read_config(tmp_path)
    config, head, state = read_weights_file(tmp_path / "pytorch_model.generator.bin", discriminator)
    assert (config.num_hidden_layers, config.hidden_size, config.emd_layers, head) == (1, 32, 2, "masked_lm")
    assert "lm_predictions.lm_head.bias" in state and discriminator.emd_layers == 0


def test_rtd_starts_from_the_release_and_gdes_folds_back_the_released_table(tmp_path):
    released = write_release(tmp_path)
    lines = []
    config = folder_model_config(str(tmp_path), {})
    objective = ReplacedTokenDetection.from_pretrained(RTDOptions(), config, str(tmp_path), "", True, lines.append)
    generator = objective.generator.state_dict()
    assert_same(generator, released["generator"], released["generator"])
    discriminator = objective.discriminator.state_dict()
    word = "deberta.embeddings.word_embeddings."
    assert_same(discriminator, released["discriminator"],
                [k for k in released["discriminator"] if not k.startswith(("lm_predictions.", word))])
    exported = objective.export_models()[""].state_dict()
    assert torch.equal(exported[word + "weight"], released["discriminator"][word + "weight"])  # exactly
    log = "\n".join(lines)
    assert "pytorch_model.generator.bin" in log and "lm_predictions.*" in log and "exactly" in log


@pytest.mark.parametrize("layout", ["official", "native", "hf_backbone"])
def test_rtd_starts_from_the_other_folder_formats(tmp_path, layout):
    released = write_release(tmp_path / "release")
    folder = tmp_path / layout
    if layout == "official":  # pytorch.model.bin + model_config.json, the generator file beside
        folder.mkdir()
        shutil.copyfile(tmp_path / "release" / "pytorch_model.bin", folder / "pytorch.model.bin")
        shutil.copyfile(tmp_path / "release" / "config.json", folder / "model_config.json")
        shutil.copyfile(tmp_path / "release" / "pytorch_model.generator.bin", folder / "pytorch_model.generator.bin")
        init_generator = ""
    elif layout == "native":  # what pretrain.convert writes: the discriminator, and generator/
        objective = ReplacedTokenDetection.from_pretrained(RTDOptions(), folder_model_config(
            str(tmp_path / "release"), {}), str(tmp_path / "release"), "", True, quiet)
        for name, model in objective.export_models().items():
            save_model(model, folder / name, load_tokenizer(SPM))
        init_generator = ""
    else:  # transformers' own folder of the backbone (no heads), the generator given explicitly
        backbone = transformers.DebertaV2Model(transformers.DebertaV2Config(**FIELDS))
        backbone.load_state_dict({k[len("deberta."):]: v for k, v in released["discriminator"].items()
                                  if k.startswith("deberta.")}, strict=False)
        backbone.save_pretrained(folder)
        init_generator = str(tmp_path / "release" / "pytorch_model.generator.bin")
    lines = []
    objective = ReplacedTokenDetection.from_pretrained(RTDOptions(), folder_model_config(str(folder), {}),
                                                       str(folder), init_generator, True, lines.append)
    assert_same(objective.generator.state_dict(), released["generator"], released["generator"])
    exported = objective.export_models()[""].state_dict()
    heads = () if layout == "hf_backbone" else ("mask_predictions.",)
    assert_same(exported, released["discriminator"],
                [k for k in released["discriminator"] if k.startswith(("deberta.", *heads))])
    if layout == "hf_backbone":
        assert any("no replaced_token_detection head" in line for line in lines), lines


def test_rtd_without_a_generator_trains_a_fresh_one_and_says_so(tmp_path):
    released = write_release(tmp_path, generator=False)
    lines = []
    objective = ReplacedTokenDetection.from_pretrained(RTDOptions(), folder_model_config(str(tmp_path), {}),
                                                       str(tmp_path), "", True, lines.append)
    assert any("FRESH generator" in line for line in lines), lines
    assert objective.generator.config.num_hidden_layers == 1  # half the discriminator's depth
    word = "deberta.embeddings.word_embeddings.weight"
    folded = objective.export_models()[""].state_dict()[word]
    assert torch.equal(folded, released["discriminator"][word])
    assert_same(objective.discriminator.state_dict(), released["discriminator"], ["mask_predictions.dense.weight"])


def test_shared_embedding_keeps_the_discriminator_table(tmp_path):
    released = write_release(tmp_path)
    lines = []
    objective = ReplacedTokenDetection.from_pretrained(RTDOptions(embedding_sharing="shared"),
                                                       folder_model_config(str(tmp_path), {}), str(tmp_path), "",
                                                       True, lines.append)
    word = "deberta.embeddings.word_embeddings.weight"
    assert torch.equal(objective.export_models()[""].state_dict()[word], released["discriminator"][word])
    assert any("not used" in line and "generator" in line for line in lines), lines


def test_mlm_starts_from_the_release_with_its_lm_head(tmp_path):
    released = write_release(tmp_path)["discriminator"]
    lines = []
    objective = MaskedLanguageModeling.from_pretrained(None, folder_model_config(str(tmp_path), {}), str(tmp_path),
                                                       "", True, lines.append)
    assert_same(objective.model.state_dict(), released, [k for k in released if not k.startswith("mask_predictions.")])
    assert any("mask_predictions.*" in line and "not used" in line for line in lines), lines
    with pytest.raises(ValueError, match="--objective rtd"):
        MaskedLanguageModeling.from_pretrained(None, folder_model_config(str(tmp_path), {}), str(tmp_path),
                                               str(tmp_path / "pytorch_model.generator.bin"), True, quiet)


def test_resuming_reads_the_architecture_only(tmp_path):
    write_release(tmp_path)
    objective = ReplacedTokenDetection.from_pretrained(RTDOptions(), folder_model_config(str(tmp_path), {}),
                                                       str(tmp_path), "", False, quiet)
    assert objective.generator.config.num_hidden_layers == GENERATOR_LAYERS  # from the generator file
    released = torch.load(tmp_path / "pytorch_model.bin")
    assert not torch.equal(objective.discriminator.state_dict()["mask_predictions.dense.weight"],
                           released["mask_predictions.dense.weight"])


def test_the_trainer_reads_initial_weights_only_when_no_checkpoint_exists(tmp_path):
    released = write_release(tmp_path / "release")
    run = SimpleNamespace(init_model=str(tmp_path / "release"), init_generator="", model_config="deberta-v3-base")
    config = SimpleNamespace(run=run, objective=RTDOptions(), objective_class=ReplacedTokenDetection)
    architecture = folder_model_config(run.init_model, {})
    name = "mask_predictions.dense.weight"
    started = build_objective(config, architecture, load_tokenizer(SPM), str(SPM), tmp_path / "checkpoints", quiet)
    assert torch.equal(started.discriminator.state_dict()[name], released["discriminator"][name])
    (tmp_path / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000001" / "checkpoint.json").write_text("{}")
    lines = []
    resumed = build_objective(config, architecture, load_tokenizer(SPM), str(SPM), tmp_path / "checkpoints",
                              lines.append)
    assert not torch.equal(resumed.discriminator.state_dict()[name], released["discriminator"][name])
    assert any("resuming" in line and "not read" in line for line in lines), lines


def test_set_model_may_change_runtime_fields_only(tmp_path):
    write_release(tmp_path)
    config = folder_model_config(str(tmp_path), {"hidden_dropout_prob": 0.0, "attention_backend": "sdpa"})
    assert (config.hidden_dropout_prob, config.attention_backend, config.hidden_size) == (0.0, "sdpa", 32)
    with pytest.raises(ValueError, match="not hidden_size"):
        folder_model_config(str(tmp_path), {"hidden_size": 64})


def test_folding_delta_is_exact_where_a_float32_delta_exists():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4000, generator=generator) * 0.05
    target = base + torch.randn(4000, generator=generator) * 0.05  # trained as base + delta
    delta, missing, _ = folding_delta(target, base)
    assert missing == 0 and torch.equal(base + delta, target)
    unrelated = torch.randn(4000, generator=generator) * 1e-4  # far smaller than base: not always reachable
    delta, missing, error = folding_delta(unrelated, base)
    errors = (base + delta - unrelated).abs()
    assert 0 < missing == int((errors > 0).sum()) and error == float(errors.max()) <= 1e-8


def another_tokenizer(folder: Path) -> Path:
    text = folder / "text.txt"
    text.write_text("\n".join(f"line {i} of another corpus with other words {i * 7}" for i in range(300)))
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spm"), vocab_size=60,
                                             user_defined_symbols=["[PAD]", "[CLS]", "[SEP]", "[MASK]"],
                                             unk_piece="[UNK]", minloglevel=2)
    return folder / "spm.model"


def test_a_tokenizer_of_another_vocabulary_is_refused_naming_both(tmp_path):
    write_release(tmp_path / "release")
    same = load_tokenizer(SPM)
    check_vocabulary(tmp_path / "release", same, str(SPM), quiet)  # the same vocabulary
    other_file = another_tokenizer(tmp_path)
    with pytest.raises(ValueError) as error:
        check_vocabulary(tmp_path / "release", load_tokenizer(other_file), str(other_file), quiet)
    assert str(other_file) in str(error.value) and str(tmp_path / "release" / "spm.model") in str(error.value)


# ---------------------------------------------------------------------------------------
# End to end: the real launcher, 2 CPU ranks, one step at a vanishing learning rate
# ---------------------------------------------------------------------------------------
def continue_args(data: Path, output: Path, release: Path, objective: str, **flags) -> list[str]:
    return train_args(data, output, objective=objective, init_model=release, set_model="", lr=1e-12,
                      warmup_steps=0, max_steps=1, eval_interval=1, save_interval=1, micro_batch_size=4,
                      eval_samples=24, **flags)


def direct_first_eval(args: list[str], models: dict, objective: str) -> dict:
    """The validation figures of the trainer, computed here from the released tensors in
    freshly built models (2 ranks' batches, each rank's sampling stream as the trainer seeds it)."""
    config = parse_args(args)
    train = ShardedDataset(config.data.data_dir, "train")
    tokenizer = load_tokenizer(train.tokenizer_dir)
    masker = Masker(config.masking, tokenizer, config.run.seed)
    valid = MaskedSequences(ShardedDataset(config.data.data_dir, "valid"), masker, VALID_STREAM, tokenizer.pad_token_id)
    sums = {"mlm": 0.0, "mlm_count": 0, "rtd": 0.0, "rtd_count": 0}
    for rank in range(2):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.run.seed + 7919 * (rank + 1))
            for batch in valid_batches(valid, config.data, config.engine.micro_batch_size, rank, 2):
                mlm_model = models["generator" if objective == "rtd" else "model"]
                generated = mlm_model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
                targets = batch["labels"] != -100
                count = int(targets.sum())
                if count:
                    sums["mlm"] += float(generated.loss.double()) * count
                    sums["mlm_count"] += count
                if objective != "rtd":
                    continue
                probs = torch.softmax(generated.logits.float() / config.objective.sampling_temperature, dim=-1)
                sampled = torch.multinomial(probs, 1).squeeze(-1) if probs.shape[0] else batch["labels"][targets]
                replaced = batch["original_ids"].clone()
                replaced[targets] = sampled
                labels = (replaced != batch["original_ids"]).long()
                judged = models["discriminator"](replaced, batch["attention_mask"], labels=labels)
                real = int(batch["attention_mask"].sum())
                sums["rtd"] += float(judged.loss.double()) * real
                sums["rtd_count"] += real
    figures = {"mlm_loss": sums["mlm"] / sums["mlm_count"]}
    if objective == "rtd":
        figures["rtd_loss"] = sums["rtd"] / sums["rtd_count"]
    return figures


def model_from(config: DebertaConfig, cls, state: dict):
    model = cls(config)
    model.load_state_dict(state)
    return model.eval()


def convert(checkpoints: Path, output: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pretrain.convert", str(checkpoints), "--output", str(output)],
                            cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)


@pytest.mark.slow
def test_rtd_continues_from_the_release_on_two_ranks(corpus_shards, tmp_path):
    released = write_release(tmp_path / "release")
    args = continue_args(corpus_shards, tmp_path / "run", tmp_path / "release", "rtd")
    result = run_deepspeed(args, timeout=400)
    assert result.returncode == 0, explain(result)
    assert "pytorch_model.generator.bin" in result.stdout and "exactly" in result.stdout, result.stdout[-3000:]
    convert(tmp_path / "run" / "checkpoints", tmp_path / "model")

    discriminator = load_file(str(tmp_path / "model" / "model.safetensors"))
    generator = load_file(str(tmp_path / "model" / "generator" / "model.safetensors"))
    assert_same(generator, released["generator"], released["generator"])
    word = "deberta.embeddings.word_embeddings.weight"
    assert_same(discriminator, released["discriminator"],
                [k for k in released["discriminator"] if not k.startswith("lm_predictions.") and k != word])
    torch.testing.assert_close(discriminator[word], released["discriminator"][word], **FOLDED)  # GDES folded

    base = DebertaConfig(**FIELDS)
    disc_state = {k: v for k, v in released["discriminator"].items() if not k.startswith("lm_predictions.")}
    models = {"generator": model_from(base.replace(num_hidden_layers=GENERATOR_LAYERS, emd_layers=2),
                                      DebertaForMaskedLM, released["generator"]),
              "discriminator": model_from(base, DebertaForReplacedTokenDetection, disc_state)}
    first = read_jsonl(tmp_path / "run" / "eval.jsonl")[0]
    assert first["step"] == 0
    expected = direct_first_eval(args, models, "rtd")
    assert first["mlm_loss"] == pytest.approx(expected["mlm_loss"], rel=1e-5)
    assert first["rtd_loss"] == pytest.approx(expected["rtd_loss"], rel=1e-5)


@pytest.mark.slow
def test_mlm_continues_from_the_release_on_two_ranks(corpus_shards, tmp_path):
    released = write_release(tmp_path / "release")["discriminator"]
    args = continue_args(corpus_shards, tmp_path / "run", tmp_path / "release", "mlm")
    result = run_deepspeed(args, timeout=400)
    assert result.returncode == 0, explain(result)
    convert(tmp_path / "run" / "checkpoints", tmp_path / "model")
    converted = load_file(str(tmp_path / "model" / "model.safetensors"))
    state = {k: v for k, v in released.items() if not k.startswith("mask_predictions.")}
    assert_same(converted, state, state)
    model = model_from(DebertaConfig(**FIELDS), DebertaForMaskedLM, state)
    first = read_jsonl(tmp_path / "run" / "eval.jsonl")[0]
    assert first["mlm_loss"] == pytest.approx(direct_first_eval(args, {"model": model}, "mlm")["mlm_loss"], rel=1e-5)


@pytest.mark.slow
def test_the_launcher_refuses_a_model_of_another_tokenizer(corpus_shards, tmp_path):
    write_release(tmp_path / "release")
    shutil.copyfile(another_tokenizer(tmp_path), tmp_path / "release" / "spm.model")
    result = run_deepspeed(continue_args(corpus_shards, tmp_path / "run", tmp_path / "release", "rtd"), timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "is not the tokenizer of the model" in output and str(tmp_path / "release" / "spm.model") in output, \
        explain(result)
