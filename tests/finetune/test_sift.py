"""SiFT as the official implementation does it: the divergence, where the perturbation
enters (the normalised input, before the LayerNorm's weight and bias, normalised again),
the summed probe and its normalised ascent step, and the effect on a model's gradients."""
import torch
import torch.nn.functional as F

from deberta import load_model
from finetune.sift import CountedRows, EmbeddingPerturbation, SiFT, squared_difference, symmetric_kl


def _normalise(x, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def test_symmetric_kl_value_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.randn(5, 3, requires_grad=True)
    p, q = F.softmax(logits, -1), F.softmax(target, -1)
    per_row = (q * (q.log() - p.log())).sum(-1) + (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(symmetric_kl(logits, target, reduction="none"), per_row)
    value = symmetric_kl(logits, target)
    assert torch.allclose(value, per_row.mean())
    assert symmetric_kl(target, target).item() == 0.0
    value.backward()
    # Each side's gradient pulls it towards the other (reference distribution held fixed):
    # the gradients of the official sum of two cross entropies.
    assert torch.allclose(logits.grad, (p - q).detach() / 5, atol=1e-6)
    assert torch.allclose(target.grad, (q - p).detach() / 5, atol=1e-6)


def test_counted_rows_sum_and_average_the_counted_rows_only():
    logits, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    rows = mask.flatten().bool()
    expected = symmetric_kl(logits.flatten(0, 1)[rows], target.flatten(0, 1)[rows], reduction="none")
    counted = CountedRows(symmetric_kl(logits, target, reduction="none"), mask.flatten().float())
    assert torch.allclose(counted.sum(), expected.sum()) and torch.allclose(counted.mean(), expected.mean())
    nothing = CountedRows(counted.values, torch.zeros(8))
    assert nothing.sum().item() == 0.0 and nothing.mean().item() == 0.0


def test_regression_divergence_is_the_squared_difference_per_row():
    perturbed, clean = torch.tensor([[1.5], [0.0], [2.0]]), torch.tensor([[1.0], [0.0], [-1.0]])
    assert torch.equal(squared_difference(perturbed, clean), torch.tensor([0.25, 0.0, 9.0]))


def test_perturbation_enters_the_normalised_input_before_the_layernorm_affine():
    torch.manual_seed(0)
    layer_norm = torch.nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():  # a gain and shift far from the identity: the affine must be visible
        layer_norm.weight.copy_(torch.tensor([3.0, -2.0, 0.5, 4.0, 1.0, -1.5]))
        layer_norm.bias.copy_(torch.tensor([1.0, 0.0, -2.0, 0.5, 3.0, -1.0]))
    perturbation = EmbeddingPerturbation(layer_norm, init_noise=0.1, step_size=0.01)
    x = torch.randn(2, 3, 6) * 7 + 2
    delta = torch.randn(2, 3, 6) * 0.3
    perturbation.active, perturbation.delta = True, delta.clone()
    perturbed = layer_norm(x)
    w, b = layer_norm.weight.detach(), layer_norm.bias.detach()
    # The official: delta on the normalised input, normalised again, then weight and bias.
    official = w * _normalise(_normalise(x) + delta) + b
    assert torch.allclose(perturbed, official, atol=1e-4)
    # Not the output plus delta (after the affine), nor the gain applied to delta only.
    clean = F.layer_norm(x, (6,), w, b, 1e-5)
    assert (perturbed - (clean + delta)).abs().max() > 0.1
    assert (perturbed - (clean + w * delta)).abs().max() > 1e-2
    # The same delta perturbs a rescaled input alike: the perturbation is scale-invariant.
    assert torch.allclose(layer_norm(x * 10), perturbed, atol=1e-4)
    perturbation.active = False
    assert torch.equal(layer_norm(x), clean)


def test_zero_perturbation_gives_the_clean_outputs_exactly(tiny_model):
    model = load_model(tiny_model, head="sequence_classification", num_labels=3)  # eval mode: no dropout
    torch.manual_seed(1)
    batch = dict(input_ids=torch.randint(5, 900, (3, 10)), attention_mask=torch.ones(3, 10, dtype=torch.long))
    clean = model(**batch).logits
    sift = SiFT(model, lam=5.0, step_size=1e-3, init_noise=1e-2)
    sift.perturbation.active = True
    sift.perturbation.delta = torch.zeros(3, 10, model.config.hidden_size)
    assert torch.equal(model(**batch).logits, clean)
    sift.perturbation.delta = torch.full((3, 10, model.config.hidden_size), 0.05)
    assert not torch.equal(model(**batch).logits, clean)


def test_initial_noise_and_the_normalised_ascent_step_by_hand():
    layer_norm = torch.nn.LayerNorm(3)
    perturbation = EmbeddingPerturbation(layer_norm, init_noise=0.1, step_size=0.01)
    perturbation.active = True
    layer_norm(torch.randn(4, 5, 3))
    noise = perturbation.delta
    assert noise.shape == (4, 5, 3) and noise.abs().max() <= 0.2 and noise.requires_grad and noise.std() > 0.05
    # One token, gradient (3, -4, 1): the step is 0.01 * g / (1e-6 + max|g|) = 0.01 * g / 4.
    perturbation.delta = torch.tensor([[[0.5, 0.5, 0.5]]])
    perturbation.ascend(torch.tensor([[[3.0, -4.0, 1.0]]]))
    scale = 0.01 / (4.0 + 1e-6)
    expected = torch.tensor([[[0.5 + 3 * scale, 0.5 - 4 * scale, 0.5 + 1 * scale]]])
    assert torch.allclose(perturbation.delta, expected, atol=1e-9)
    kept = perturbation.delta.clone()
    perturbation.ascend(torch.full((1, 1, 3), float("nan")))  # a bad gradient keeps delta
    assert torch.equal(perturbation.delta, kept)


def test_the_probe_sums_over_rows_and_the_step_follows_its_normalised_gradient():
    """A hand-checkable model: logits = LayerNorm(x) @ A, one token per row."""
    torch.manual_seed(0)
    layer_norm = torch.nn.LayerNorm(4, elementwise_affine=False)
    weights = torch.randn(4, 3)
    x = torch.randn(5, 1, 4)
    clean = layer_norm(x) @ weights
    sift = SiFT(None, lam=3.0, step_size=0.02, init_noise=0.1, layer_norm=layer_norm)
    forward = lambda: layer_norm(x) @ weights  # noqa: E731
    sift.perturbation.active = True
    start = torch.full((5, 1, 4), 0.05)
    sift.perturbation.delta = start.clone().requires_grad_(True)
    grad = sift.probe_gradient(forward, clean, lambda p, c: symmetric_kl(p, c, reduction="none"))
    # The same gradient by hand: the sum (not the mean) of the rows' divergences.
    delta = start.clone().requires_grad_(True)
    perturbed = F.layer_norm(x + torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5) * delta, (4,)) @ weights
    by_hand = symmetric_kl(perturbed, clean, reduction="none").sum()
    (expected,) = torch.autograd.grad(by_hand, delta)
    assert torch.allclose(grad, expected, atol=1e-7)
    # The ascent moves every token by step_size along g / max|g|.
    sift.perturbation.ascend(grad)
    step = sift.perturbation.delta - start
    assert torch.allclose(step, 0.02 * expected / (expected.abs().amax(-1, keepdim=True) + 1e-6), atol=1e-8)
    sift.perturbation.active, sift.perturbation.delta = False, None


def test_sift_loss_trains_the_model_only_through_the_adversarial_term(tiny_model):
    torch.manual_seed(0)
    model = load_model(tiny_model, head="sequence_classification", num_labels=2).train()
    batch = dict(input_ids=torch.randint(5, 900, (4, 12)), attention_mask=torch.ones(4, 12, dtype=torch.long))
    sift = SiFT(model, lam=2.0, step_size=1e-3, init_noise=1e-2)
    clean = model(**batch).logits
    adversarial = sift.loss(lambda: model(**batch).logits, clean,
                            lambda p, c: symmetric_kl(p, c, reduction="none"))
    # The probe for the ascent direction formed no parameter gradients.
    assert all(p.grad is None for p in model.parameters())
    assert adversarial.item() > 0
    adversarial.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.deberta.encoder.layer[0].attention.self.query_proj.weight.grad.abs().sum() > 0
    # The perturbed passes see detached embeddings (as the official); the embeddings learn
    # from the adversarial term only through the clean logits.
    assert model.deberta.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    model.zero_grad()
    sift.loss(lambda: model(**batch).logits, clean.detach(), lambda p, c: symmetric_kl(p, c, reduction="none")
              ).backward()
    assert model.deberta.embeddings.word_embeddings.weight.grad is None
    assert model.classifier.weight.grad.abs().sum() > 0
    # Afterwards the hook is inert: eval outputs are unperturbed and repeatable.
    model.eval()
    assert torch.equal(model(**batch).logits, model(**batch).logits)
    assert sift.perturbation.delta is None and not sift.perturbation.active


def test_every_task_gives_one_divergence_per_row_that_counts(tiny_model):
    """SiFT sums the rows for its probe and averages them for its loss: each task's
    divergence returns one value per row (classes, tokens of NER, start/end of SQuAD)."""
    from finetune.config import FinetuneConfig
    from finetune.tasks import build_task
    from deberta import load_tokenizer
    tokenizer = load_tokenizer(tiny_model)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    cases = {"sst-2": ((2, 2), 2), "sts-b": ((2, 1), 2), "ner": ((2, 4, 5), 8), "squad": ((2, 4, 2), 4),
             "race": ((2, 4), 2)}
    for task, (shape, rows) in cases.items():
        config = FinetuneConfig.create(task=task, model=tiny_model, output_dir="o", data_dir="d").run
        divergence = build_task(config, tokenizer).divergence
        clean = torch.randn(shape)
        per_row = divergence(clean + 0.5 * torch.randn(shape), clean, {"attention_mask": mask})
        same = divergence(clean, clean, {"attention_mask": mask})
        if task == "ner":  # every token has a value; the real ones count
            assert torch.equal(per_row.counted, mask.flatten().float()), task
            per_row, same = per_row.values, same.values
        assert per_row.shape == (rows,) and (per_row > 0).all(), task
        assert torch.equal(same, torch.zeros(rows)), task
