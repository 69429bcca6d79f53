"""Figures the pretraining objectives report: the RTD AUC and the model FLOPs per token."""
from __future__ import annotations

import torch

from deberta import DebertaConfig

AUC_BINS = 1000


def auc_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """ROC AUC from score histograms of positives and negatives (ties within a bin count half):
    P(score of a random positive > score of a random negative)."""
    positive, negative = positive.double(), negative.double()
    if positive.sum() == 0 or negative.sum() == 0:
        return float("nan")
    negatives_below = torch.cumsum(negative, 0) - negative
    wins = (positive * (negatives_below + 0.5 * negative)).sum()
    return float(wins / (positive.sum() * negative.sum()))


def forward_flops_per_token(config: DebertaConfig, seq_len: int, target_fraction: float, mlm_head: bool) -> float:
    """Multiply-adds x 2 of one token's forward pass.

    Per layer: 2 x (4 h^2 attention projections + 2 h i feed-forward) for the weights, and
    2 x seq x h for each attention product: content scores, one per position term (c2p,
    p2c), and the weighted sum of values. The relative-position projections are per
    sequence (2S x h x h per term), spread over its tokens. The MLM output (h x vocab)
    runs only at the targets (target_fraction of tokens), through the EMD layers too.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    terms = len(config.pos_att_type) if config.relative_attention else 0
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * seq_len * h * (2 + terms)
    per_layer += 2 * terms * 2 * config.relative_span * h * h / seq_len
    flops = layers * per_layer
    if mlm_head:
        flops += config.emd_layers * per_layer + target_fraction * 2 * (h * config.embedding_size
                                                                      + config.embedding_size * config.vocab_size)
    else:  # the RTD head: dense h x h and one logit
        flops += 2 * (h * h + h)
    return flops
