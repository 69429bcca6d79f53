"""SiFT: the divergence, the perturbation's numerics, and its effect on a model's gradients."""
import torch
import torch.nn.functional as F

from deberta import load_model
from finetune.sift import SiFT, EmbeddingPerturbation, symmetric_kl


def test_symmetric_kl_value_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.randn(5, 3, requires_grad=True)
    p, q = F.softmax(logits, -1), F.softmax(target, -1)
    by_hand = ((q * (q.log() - p.log())).sum(-1) + (p * (p.log() - q.log())).sum(-1)).mean()
    value = symmetric_kl(logits, target)
    assert torch.allclose(value, by_hand)
    assert symmetric_kl(target, target).item() == 0.0
    value.backward()
    # Each side's gradient pulls it towards the other (reference distribution held fixed).
    assert torch.allclose(logits.grad, (p - q).detach() / 5, atol=1e-6)
    assert torch.allclose(target.grad, (q - p).detach() / 5, atol=1e-6)


def test_symmetric_kl_mask_counts_selected_rows_only():
    logits, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    rows = mask.flatten().bool()
    expected = symmetric_kl(logits.flatten(0, 1)[rows], target.flatten(0, 1)[rows])
    assert torch.allclose(symmetric_kl(logits, target, mask), expected)


def test_perturbation_noise_and_normalised_ascent():
    layer_norm = torch.nn.LayerNorm(8)
    perturbation = EmbeddingPerturbation(layer_norm, init_noise=0.1, step_size=0.01)
    x = torch.randn(2, 3, 8)
    clean = layer_norm(x)
    perturbation.active = True
    noisy = layer_norm(x)
    delta = perturbation.delta
    assert delta.shape == (2, 3, 8) and delta.abs().max() <= 0.2 and delta.requires_grad
    assert torch.allclose(noisy - clean, delta, atol=1e-6)
    grad = torch.randn(2, 3, 8)
    perturbation.ascend(grad)
    step = perturbation.delta - delta
    # Every token moves by exactly step_size along its largest gradient component.
    assert torch.allclose(step.abs().amax(-1), torch.full((2, 3), 0.01), atol=1e-6)
    assert torch.equal(torch.sign(step), torch.sign(grad))
    kept = perturbation.delta.clone()
    perturbation.ascend(torch.full((2, 3, 8), float("nan")))  # a bad gradient keeps delta
    assert torch.equal(perturbation.delta, kept)
    perturbation.active = False
    assert torch.equal(layer_norm(x), clean)


def test_sift_loss_trains_the_model_only_through_the_adversarial_term(tiny_model):
    torch.manual_seed(0)
    model = load_model(tiny_model, head="sequence_classification", num_labels=2).train()
    batch = dict(input_ids=torch.randint(5, 900, (4, 12)), attention_mask=torch.ones(4, 12, dtype=torch.long))
    sift = SiFT(model, lam=2.0, step_size=1e-3, init_noise=1e-2)
    clean = model(**batch).logits
    adversarial = sift.loss(lambda: model(**batch).logits, clean, symmetric_kl)
    # The probe for the ascent direction formed no parameter gradients.
    assert all(p.grad is None for p in model.parameters())
    assert adversarial.item() > 0
    adversarial.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.deberta.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # Afterwards the hook is inert: eval outputs are unperturbed and repeatable.
    model.eval()
    assert torch.equal(model(**batch).logits, model(**batch).logits)
    assert sift.perturbation.delta is None and not sift.perturbation.active
