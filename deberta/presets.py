"""Published DeBERTa architectures as config field overrides.

Shapes are those of the official releases (github.com/microsoft/DeBERTa and the model
cards on the Hugging Face hub). v1 uses the RoBERTa GPT-2 BPE vocabulary (50265 ids with
the special tokens), v2/v3 a 128K SentencePiece vocabulary padded to 128100 ids,
mDeBERTa-v3 a 250K one (251000 ids).

``emd_layers=2`` is the official enhanced mask decoder of pretraining: two passes through
the last encoder layer with absolute positions added to the query.
"""
from __future__ import annotations

_V1 = dict(
    model_type="deberta", vocab_size=50265, max_position_embeddings=512, type_vocab_size=0,
    relative_attention=True, max_relative_positions=-1, position_buckets=-1,
    pos_att_type=("c2p", "p2c"), share_att_key=False, norm_rel_ebd="none",
    position_biased_input=False, emd_layers=2, layer_norm_eps=1e-7,
)
_V2 = dict(
    model_type="deberta-v2", vocab_size=128100, max_position_embeddings=512, type_vocab_size=0,
    relative_attention=True, max_relative_positions=-1, position_buckets=256,
    pos_att_type=("p2c", "c2p"), share_att_key=True, norm_rel_ebd="layer_norm",
    position_biased_input=False, emd_layers=2, layer_norm_eps=1e-7,
    conv_kernel_size=3, conv_act="gelu",
)
_V3 = {**_V2, "conv_kernel_size": 0, "conv_act": "tanh"}


def _shape(hidden: int, layers: int, heads: int) -> dict:
    # The feed-forward width is 4x the hidden size in every published DeBERTa.
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=4 * hidden)


PRESETS: dict[str, dict] = {
    "deberta-base": {**_V1, **_shape(768, 12, 12)},
    "deberta-large": {**_V1, **_shape(1024, 24, 16)},
    "deberta-xlarge": {**_V1, **_shape(1024, 48, 16)},
    "deberta-v2-xlarge": {**_V2, **_shape(1536, 24, 24)},
    "deberta-v2-xxlarge": {**_V2, **_shape(1536, 48, 24)},
    "deberta-v3-xsmall": {**_V3, **_shape(384, 12, 6)},
    "deberta-v3-small": {**_V3, **_shape(768, 6, 12)},
    "deberta-v3-base": {**_V3, **_shape(768, 12, 12)},
    "deberta-v3-large": {**_V3, **_shape(1024, 24, 16)},
    "mdeberta-v3-base": {**_V3, **_shape(768, 12, 12), "vocab_size": 251000},
}

# Finetuned on MNLI: the same shapes with a 3-way classification head.
for _name in ("deberta-base", "deberta-large", "deberta-xlarge", "deberta-v2-xlarge",
              "deberta-v2-xxlarge", "deberta-v3-base", "deberta-v3-large"):
    PRESETS[f"{_name}-mnli"] = {**PRESETS[_name], "num_labels": 3}

# RTD generators of DeBERTa-v3: same width as the discriminator, half its depth.
for _name in ("deberta-v3-xsmall", "deberta-v3-small", "deberta-v3-base", "deberta-v3-large",
              "mdeberta-v3-base"):
    _disc = PRESETS[_name]
    PRESETS[f"{_name}-generator"] = {**_disc, "num_hidden_layers": _disc["num_hidden_layers"] // 2}
