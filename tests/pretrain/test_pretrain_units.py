"""Single-process tests of the pretrain components: masking, data order, batch and
precision resolution, configs and recipes, GDES gradients, AUC, conversion folding."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from pretrain_helpers import REPO, TINY_MODEL

from deberta import DebertaConfig, load_tokenizer
from training.checkpoint import CHECKPOINT_FILE, LATEST, CheckpointManager
from pretrain.config import TrainConfig, parse_args
from pretrain.data import TrainOrder
from pretrain.masking import IGNORE, Masker, MaskingConfig
from pretrain.metrics import AUC_BINS, auc_from_histograms
from pretrain.objectives import objective_class
from pretrain.objectives.rtd import ReplacedTokenDetection, RTDOptions, SharedWordEmbedding
from pretrain.recipes import RECIPES


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPO / "tests" / "assets" / "spm.model")


def _sequence(tokenizer, length=256):
    text = "The committee met on Tuesday to discuss the extraordinarily complicated budget negotiations. " * 20
    ids = tokenizer.encode(text)[: length - 2]
    return np.array([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id])


# --- masking ---------------------------------------------------------------------------
def test_masking_is_a_function_of_seed_and_index(tokenizer):
    ids = _sequence(tokenizer)
    masker = Masker(MaskingConfig(), tokenizer, seed=3)
    a, b = masker(ids, 17), Masker(MaskingConfig(), tokenizer, seed=3)(ids, 17)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(masker(ids, 18)[1], a[1])
    assert not np.array_equal(Masker(MaskingConfig(), tokenizer, seed=4)(ids, 17)[1], a[1])
    assert not np.array_equal(masker(ids, 17, stream=1)[1], a[1])


@pytest.mark.parametrize("max_ngram", [1, 3])
def test_masking_rates_and_whole_words(tokenizer, max_ngram):
    ids = _sequence(tokenizer)
    masker = Masker(MaskingConfig(max_ngram=max_ngram, whole_word=True), tokenizer, seed=0)  # words at n = 1 too
    actions, per_sequence = Counter(), []
    for i in range(300):
        masked, labels = masker(ids, i)
        targets = labels != IGNORE
        assert not targets[0] and not targets[-1]  # [CLS], [SEP] never
        assert np.array_equal(labels[targets], ids[targets])
        assert np.array_equal(masked[~targets], ids[~targets])
        per_sequence.append(targets.sum())
        actions["mask"] += (masked[targets] == tokenizer.mask_token_id).sum()
        actions["keep"] += (masked[targets] == ids[targets]).sum()
        actions["total"] += targets.sum()
        # whole words: a target token's word is a target entirely
        for p in np.flatnonzero(targets):
            if p + 1 < len(ids) - 1 and not tokenizer.is_word_start(int(ids[p + 1])):
                assert targets[p + 1], (i, p)
    budget = round(0.15 * (len(ids) - 2))
    assert max(per_sequence) <= budget and np.mean(per_sequence) > 0.85 * budget
    assert abs(actions["mask"] / actions["total"] - 0.8) < 0.03
    assert abs(actions["keep"] / actions["total"] - 0.1) < 0.03  # (random draws rarely hit the original)


def test_masking_config_validation():
    with pytest.raises(ValueError, match="mask_prob"):
        MaskingConfig(mask_prob=0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MaskingConfig(replace_with_mask=0.9, replace_with_random=0.2)


# --- data order ------------------------------------------------------------------------
def _step_samples(world, accumulation, micro, steps, start=0):
    per_step = []
    iterators = [TrainOrder(1000, 7, micro, accumulation, r, world).micro_batches(start) for r in range(world)]
    for _ in range(steps):
        samples = []
        for it in iterators:
            for _ in range(accumulation):
                samples += next(it)
        per_step.append(sorted(samples))
    return per_step


def test_global_order_does_not_depend_on_the_number_of_ranks():
    one = _step_samples(world=1, accumulation=4, micro=8, steps=40)  # 40 x 32 samples: crosses an epoch
    assert one == _step_samples(world=2, accumulation=2, micro=8, steps=40)
    assert one == _step_samples(world=4, accumulation=1, micro=8, steps=40)
    assert one == _step_samples(world=4, accumulation=2, micro=4, steps=40)
    assert one[10:] == _step_samples(world=2, accumulation=2, micro=8, steps=30, start=10 * 32)
    order = TrainOrder(1000, 7, 8, 1, 0, 1)
    epochs = [[order.sequence(p) for p in range(e * 1000, (e + 1) * 1000)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(1000))  # each sequence once per epoch
    assert epochs[0] != epochs[1]  # reshuffled


# --- configuration -------------------------------------------------------------------
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_parses(recipe):
    config = parse_args(["--data_dir", "x", "--recipe", recipe, "--lr", "1e-5"])
    assert isinstance(config, TrainConfig) and config.optimizer.lr == 1e-5  # flags win over the recipe
    assert config.run.objective == RECIPES[recipe]["objective"]
    assert config.model_config().hidden_size == DebertaConfig.from_preset(RECIPES[recipe]["model_config"]).hidden_size


def test_model_overrides_and_validation(capsys):
    config = parse_args(["--data_dir", "x", "--set_model", TINY_MODEL])
    model = config.model_config()
    assert (model.hidden_size, model.embedding_size, model.num_hidden_layers, model.emd_layers) == (64, 64, 2, 2)
    for flags, field in ((["--max_steps", "0"], "max_steps"),
                         (["--objective", "rtd", "--embedding_sharing", "tied"], "embedding_sharing"),
                         (["--embedding_sharing", "gdes"], "embedding_sharing"),  # an RTD flag, MLM run
                         (["--objective", "nowhere:Objective"], "nowhere")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--data_dir", "x", *flags])
        assert exit_info.value.code == 2
        assert field in capsys.readouterr().err


# --- objectives ------------------------------------------------------------------------
def _rtd(**options):
    return ReplacedTokenDetection(RTDOptions(**options), _tiny())


def _tiny(**overrides):
    return DebertaConfig.from_preset("deberta-v3-base", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=32,
                                     position_buckets=8, **overrides)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    original = torch.randint(5, 100, (2, 16), generator=g)
    labels = torch.full_like(original, -100)
    labels[:, 3:6] = original[:, 3:6]
    inputs = original.clone()
    inputs[:, 3:6] = 4
    return dict(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels, original_ids=original)


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return model.generator.deberta.embeddings.word_embeddings.weight.grad, \
        getattr(model.discriminator.deberta.embeddings.word_embeddings, "delta", None)


def test_gdes_disentangles_the_embedding_gradients():
    torch.manual_seed(0)
    model = _rtd()
    assert objective_class("rtd") is ReplacedTokenDetection
    shared = model.discriminator.deberta.embeddings.word_embeddings
    assert isinstance(shared, SharedWordEmbedding) and torch.equal(shared.delta, torch.zeros_like(shared.delta))
    assert torch.equal(shared.weight, model.generator.deberta.embeddings.word_embeddings.weight)
    assert model.generator.config.num_hidden_layers == 1 and model.discriminator.config.emd_layers == 0
    names = [n for n, _ in model.named_parameters()]
    assert names.count("generator.deberta.embeddings.word_embeddings.weight") == 1
    assert "discriminator.deberta.embeddings.word_embeddings.delta" in names
    assert "discriminator.deberta.embeddings.word_embeddings.weight" not in names

    batch = _batch()
    # The discriminator's loss: no gradient into the generator's table, only into delta.
    loss = model.discriminator(batch["original_ids"], labels=torch.zeros(2, 16, dtype=torch.long)).loss
    generator_grad, delta = _grads(model, loss)
    assert generator_grad is None or generator_grad.abs().max() == 0
    assert delta.grad is not None and delta.grad.abs().max() > 0
    # The generator's loss: into its table, not into delta.
    loss = model.generator(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    generator_grad, delta = _grads(model, loss)
    assert generator_grad.abs().max() > 0 and (delta.grad is None or delta.grad.abs().max() == 0)


def test_shared_embedding_trains_the_generator_table_from_both_losses():
    torch.manual_seed(0)
    model = _rtd(embedding_sharing="shared")
    assert model.discriminator.deberta.embeddings.word_embeddings.delta is None
    loss = model.discriminator(_batch()["original_ids"], labels=torch.zeros(2, 16, dtype=torch.long)).loss
    generator_grad, _ = _grads(model, loss)
    assert generator_grad is not None and generator_grad.abs().max() > 0
    separate = _rtd(embedding_sharing="none")
    assert not isinstance(separate.discriminator.deberta.embeddings.word_embeddings, SharedWordEmbedding)


def test_rtd_labels_and_loss():
    torch.manual_seed(0)
    model = _rtd(rtd_lambda=50.0)
    batch = _batch()
    torch.manual_seed(5)
    loss, parts = model(**batch)
    assert parts["mlm_count"] == 6 and parts["rtd_count"] == 32
    assert 0 <= parts["replaced"].item() <= 6  # only masked positions can be replaced
    figures = model.summarize(parts, training=True)
    assert loss.item() == pytest.approx(figures["mlm_loss"] + 50.0 * figures["rtd_loss"], rel=1e-5)
    assert figures["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert figures["replaced_fraction"] == parts["replaced"].item() / 32
    model.eval()
    _, parts = model(**batch)  # evaluation adds the AUC histograms of every real token
    assert parts["auc_replaced"].sum() + parts["auc_original"].sum() == 32
    assert 0 <= model.summarize(parts, training=False)["rtd_auc"] <= 1 or parts["auc_replaced"].sum() == 0


# --- metrics ---------------------------------------------------------------------------
def test_auc_from_histograms_matches_the_rank_statistic():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(4000, generator=g) < 0.3
    scores = torch.sigmoid(torch.randn(4000, generator=g) + 1.5 * labels)
    pos, neg = scores[labels], scores[~labels]
    exact = ((pos[:, None] > neg[None, :]).double().mean()).item()
    approx = auc_from_histograms(torch.histc(pos, AUC_BINS, 0, 1), torch.histc(neg, AUC_BINS, 0, 1))
    assert approx == pytest.approx(exact, abs=2e-3) and 0.7 < exact < 0.95


# --- checkpoints and conversion --------------------------------------------------------
def test_latest_skips_incomplete_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2, rank=0, world=1)
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = tmp_path / f"step_{step:08d}"
        folder.mkdir()
        if complete:
            (folder / CHECKPOINT_FILE).write_text("{}")
    (tmp_path / ".tmp-step_00000020").mkdir()
    assert manager.latest().name == "step_00000010"  # no pointer: newest complete
    (tmp_path / LATEST).write_text("step_00000005\n")
    assert manager.latest().name == "step_00000005"
    manager.clean_incomplete()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "step_00000005", "step_00000010"]


def test_export_folds_the_gdes_delta_and_rebuilds_from_the_description():
    torch.manual_seed(0)
    objective = _rtd()
    with torch.no_grad():
        objective.discriminator.deberta.embeddings.word_embeddings.delta.normal_()
    rebuilt = ReplacedTokenDetection.from_description(json.loads(json.dumps(objective.describe())))
    rebuilt.load_state_dict(objective.state_dict())
    models = rebuilt.export_models()
    assert sorted(models) == ["", "generator"]
    discriminator, generator = models[""], models["generator"]
    word = discriminator.deberta.embeddings.word_embeddings
    assert isinstance(word, torch.nn.Embedding)  # a plain table: E_gen + delta
    expected = objective.generator.deberta.embeddings.word_embeddings.weight + \
        objective.discriminator.deberta.embeddings.word_embeddings.delta
    assert torch.equal(word.weight, expected)
    ids = _batch()["original_ids"]
    with torch.no_grad():
        assert torch.allclose(discriminator(ids).logits, objective.discriminator.eval()(ids).logits)
        assert torch.allclose(generator(ids).logits, objective.generator.eval()(ids).logits)
