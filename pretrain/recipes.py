"""Published pretraining recipes as flag defaults (``--recipe NAME``; any flag overrides).

Sources: the DeBERTa paper (He et al., ICLR 2021, appendix table of pretraining
hyper-parameters) for the v2 MLM runs, and the DeBERTaV3 paper (He et al., ICLR 2023,
which pretrains "using the same settings as DeBERTa", 15 % masking, RTD weight 50 as in
ELECTRA, generator of half depth) for the v3 runs. All use AdamW with betas (0.9, 0.98),
eps 1e-6, weight decay 0.01, gradient clipping 1.0, 10K warmup steps, linear decay to 0,
sequence length 512.

Batch arithmetic of the paper runs: global batch 2048 = micro 8 x accumulation 1 x 256
GPUs (16 DGX-2 nodes x 16 V100) for the 1.5B model; 8192 = 32 x 1 x 256 for v3 base.
"""
from __future__ import annotations

_COMMON = dict(adam_beta1=0.9, adam_beta2=0.98, adam_eps=1e-6, weight_decay=0.01, clip_grad=1.0,
               warmup_steps=10_000, mask_prob=0.15)
_V3 = dict(_COMMON, objective="rtd", embedding_sharing="gdes", rtd_lambda=50.0)

RECIPES: dict[str, dict] = {
    "deberta-v2-xxlarge-mlm": dict(_COMMON, model_config="deberta-v2-xxlarge", objective="mlm",
                                   lr=1.5e-4, global_batch_size=2048, max_steps=1_000_000),
    "deberta-v2-xlarge-mlm": dict(_COMMON, model_config="deberta-v2-xlarge", objective="mlm",
                                  lr=1.5e-4, global_batch_size=2048, max_steps=1_000_000),
    "deberta-v3-xsmall-rtd": dict(_V3, model_config="deberta-v3-xsmall", lr=5e-4, global_batch_size=8192,
                                  max_steps=500_000),
    "deberta-v3-small-rtd": dict(_V3, model_config="deberta-v3-small", lr=5e-4, global_batch_size=8192,
                                 max_steps=500_000),
    "deberta-v3-base-rtd": dict(_V3, model_config="deberta-v3-base", lr=5e-4, global_batch_size=8192,
                                max_steps=500_000),
    "deberta-v3-large-rtd": dict(_V3, model_config="deberta-v3-large", lr=3e-4, global_batch_size=8192,
                                 max_steps=500_000),
}
