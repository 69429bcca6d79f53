"""The model on a CUDA device: both backends agree with the CPU reference, and half
precision stays finite on long sequences. Skipped without a GPU."""
import pytest
import torch

from deberta import DebertaConfig, build_model

pytestmark = pytest.mark.gpu

SMALL = dict(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
             emd_layers=2)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_cuda_matches_cpu_reference(backend):
    torch.manual_seed(0)
    reference = build_model(DebertaConfig(**SMALL), "masked_lm").eval()
    model = build_model(DebertaConfig(**SMALL, attention_backend=backend), "masked_lm").eval()
    model.load_state_dict(reference.state_dict())
    model.cuda()
    ids = torch.randint(5, 1000, (2, 512))
    mask = torch.ones_like(ids)
    mask[1, 400:] = 0
    with torch.no_grad():
        expected = reference(ids, mask).logits
        fp32 = model(ids.cuda(), mask.cuda()).logits.cpu()
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                half = model(ids.cuda(), mask.cuda()).logits.float().cpu()
            assert torch.isfinite(half).all()
            assert (half - expected)[mask.bool()].abs().max() < 0.25
    assert (fp32 - expected).abs().max() < 1e-3  # TF32 matmuls allowed
