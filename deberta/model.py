"""DeBERTa v1, v2 and v3 in one file: the config, then the blocks in the order data flows.

    input ids -> DebertaEmbeddings -> DebertaEncoder (DebertaLayer x N, with the nGiE
    convolution beside layer 0) -> a head (MLM with the enhanced mask decoder, RTD,
    sequence / token classification, span QA, multiple choice)

Weight names follow the official release and Hugging Face's DeBERTa-v2 (``deberta.``,
``encoder.layer.N.attention.self.query_proj``, ``lm_predictions.lm_head``, ...), so v2/v3
checkpoints load as they are and v1's fused projection needs one small adapter
(deberta/checkpoint.py).

v1 versus v2/v3 is ``model_type``: v1 ("deberta") has no key bias and an unbiased c2p
position projection, and none of v2's additions (log buckets, shared key, relative
embedding LayerNorm, convolution). Otherwise the computations are the same.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import ATTENTION_BACKENDS, Packing, get_backend
from .presets import PRESETS

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
MODEL_TYPES = ("deberta", "deberta-v2")
POSITION_TERMS = ("c2p", "p2c")
REL_EMBEDDING_NORMS = ("none", "layer_norm")


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------
@dataclass
class DebertaConfig:
    """Every architecture field of the official and Hugging Face DeBERTa configs.

    Defaults are DeBERTa-v3-base. ``from_preset`` gives the published shapes.
    """

    model_type: str = "deberta-v2"  # "deberta" (v1) or "deberta-v2" (v2 and v3)
    vocab_size: int = 128100
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    attention_head_size: Optional[int] = None  # None: hidden_size // num_attention_heads
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    pad_token_id: int = 0
    embedding_size: Optional[int] = None  # None: hidden_size; else projected up to it
    position_biased_input: bool = False  # add absolute positions to the input (BERT-style)
    # Disentangled attention
    relative_attention: bool = True
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    # The next three default (None) to v3's values, or to "absent" for v1.
    position_buckets: Optional[int] = None  # log-bucketed distances (v3: 256); <= 0: none
    pos_att_type: tuple = ("p2c", "c2p")
    share_att_key: Optional[bool] = None  # positions projected by the content key/query weights
    norm_rel_ebd: Optional[str] = None  # "layer_norm" on the relative embeddings, or "none"
    talking_head: bool = False  # an unreleased v1 option; refused below
    # nGiE: a convolution beside the first layer (v2)
    conv_kernel_size: int = 0
    conv_act: str = "tanh"
    conv_groups: int = 1
    # Enhanced mask decoder: passes through the last layer with absolute positions added
    emd_layers: int = 0
    # Heads
    num_labels: int = 2
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    cls_dropout: Optional[float] = None  # None: hidden_dropout_prob
    # Runtime choice, not architecture
    attention_backend: str = "eager"

    def __post_init__(self):
        v1 = self.model_type == "deberta"
        if self.position_buckets is None:
            self.position_buckets = -1 if v1 else 256
        if self.share_att_key is None:
            self.share_att_key = not v1
        if self.norm_rel_ebd is None:
            self.norm_rel_ebd = "none" if v1 else "layer_norm"
        if isinstance(self.pos_att_type, str):
            self.pos_att_type = tuple(t.strip() for t in self.pos_att_type.lower().split("|") if t.strip())
        self.pos_att_type = tuple(self.pos_att_type or ())
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.attention_head_size is None and isinstance(self.num_attention_heads, int) \
                and self.num_attention_heads > 0:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"DebertaConfig.num_attention_heads={self.num_attention_heads} is invalid; "
                                 f"allowed: a divisor of hidden_size={self.hidden_size} "
                                 f"(or set attention_head_size)")
            self.attention_head_size = self.hidden_size // self.num_attention_heads
        self.norm_rel_ebd = str(self.norm_rel_ebd).lower()
        self.validate()

    def validate(self) -> None:
        def fail(name, allowed):
            raise ValueError(f"DebertaConfig.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        if self.model_type not in MODEL_TYPES:
            fail("model_type", MODEL_TYPES)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "embedding_size", "num_labels",
                     "conv_groups"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("type_vocab_size", "conv_kernel_size", "emd_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.attention_head_size is None or self.attention_head_size < 1:
            fail("attention_head_size", "an integer >= 1")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "a probability in [0, 1)")
        if self.cls_dropout is not None and not 0.0 <= self.cls_dropout < 1.0:
            fail("cls_dropout", "None or a probability in [0, 1)")
        for name in ("hidden_act", "conv_act", "pooler_hidden_act"):
            if getattr(self, name) not in ACTIVATIONS:
                fail(name, sorted(ACTIVATIONS))
        if any(t not in POSITION_TERMS for t in self.pos_att_type) or \
                len(set(self.pos_att_type)) != len(self.pos_att_type):
            fail("pos_att_type", "a subset of ('c2p', 'p2c'), or 'c2p|p2c'")
        if self.norm_rel_ebd not in REL_EMBEDDING_NORMS:
            fail("norm_rel_ebd", REL_EMBEDDING_NORMS)
        if self.layer_norm_eps <= 0:
            fail("layer_norm_eps", "a positive float")
        if self.talking_head:
            fail("talking_head", "False (talking heads are not part of any released DeBERTa)")
        if self.position_buckets > 0 and self.position_buckets * 2 > self.max_relative_span_limit:
            fail("position_buckets", f"at most max_relative_positions={self.max_relative_span_limit}/2")
        if self.conv_kernel_size > 0 and self.conv_kernel_size % 2 == 0:
            fail("conv_kernel_size", "0 or an odd integer (the convolution keeps the length)")
        if self.conv_kernel_size > 0 and self.hidden_size % self.conv_groups:
            fail("conv_groups", f"a divisor of hidden_size={self.hidden_size}")
        if self.emd_layers > 0 and self.position_biased_input:
            fail("emd_layers", "0 when position_biased_input is set (the reference decodes with the last "
                               "layer then, absolute positions being in the input already)")
        if self.emd_layers > 0 and self.embedding_size != self.hidden_size:
            fail("emd_layers", "0 when embedding_size differs from hidden_size "
                               "(the decoder adds absolute position embeddings to hidden states)")
        if self.model_type == "deberta":
            v2_only = {"share_att_key": False, "conv_kernel_size": 0, "norm_rel_ebd": "none"}
            for name, v1_value in v2_only.items():
                if getattr(self, name) != v1_value:
                    fail(name, f"{v1_value!r} for model_type='deberta' (v1 lacks this v2 feature)")
            if self.position_buckets > 0:
                fail("position_buckets", "<= 0 for model_type='deberta' (v1 has no buckets)")
        if self.attention_backend not in ATTENTION_BACKENDS:
            fail("attention_backend", sorted(ATTENTION_BACKENDS))

    # --- derived values --------------------------------------------------------------
    @property
    def max_relative_span_limit(self) -> int:
        """max_relative_positions with its "< 1 means max_position_embeddings" rule applied."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def relative_span(self) -> int:
        """S: the relative embedding table has 2S rows, for distances -S .. S-1."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_span_limit

    # --- construction and serialisation -------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DebertaConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "DebertaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DebertaConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "DebertaConfig":
        """A JSON file of config fields, or a preset name."""
        if str(path) in PRESETS:
            return cls.from_preset(str(path))
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def replace(self, **changes) -> "DebertaConfig":
        """A copy with ``changes``; sizes that were derived (embedding_size = hidden_size,
        attention_head_size = hidden_size / heads) are derived again from the new shape."""
        values = self.to_dict()
        if self.embedding_size == self.hidden_size:
            values["embedding_size"] = None
        if self.attention_head_size * self.num_attention_heads == self.hidden_size:
            values["attention_head_size"] = None
        return DebertaConfig.from_dict({**values, **changes})

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["pos_att_type"] = list(self.pos_att_type)
        return values


# ---------------------------------------------------------------------------------------
# Relative positions
# ---------------------------------------------------------------------------------------
def log_bucket_position(relative: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v2's log buckets: distances within bucket_size/2 stay exact, longer ones are
    mapped logarithmically so that max_position lands on the last bucket.

    The float32 arithmetic mirrors the reference, so bucket boundaries agree exactly.
    """
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.tensor(mid - 1).type_as(relative),
                          relative.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative.type_as(log_pos), log_pos * sign).long()


def relative_bucket(distance: torch.Tensor, config: DebertaConfig) -> torch.Tensor:
    """r for distances i - j: the (bucketed, clamped) row into the 2S-row relative table."""
    if config.position_buckets > 0:
        distance = log_bucket_position(distance, config.position_buckets, config.max_relative_span_limit)
    span = config.relative_span
    return torch.clamp(distance + span, 0, 2 * span - 1)


def relative_position_index(length: int, config: DebertaConfig, device=None) -> torch.Tensor:
    """[L, L] index r(i, j) of the distance i - j into the 2S-row relative embedding table."""
    positions = torch.arange(length, device=device)
    return relative_bucket(positions[:, None] - positions[None, :], config)


# ---------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------
class DebertaEmbeddings(nn.Module):
    """Word (+ absolute position) (+ token type) embeddings, projection, LayerNorm, mask."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size,
                                            padding_idx=config.pad_token_id)
        # Absolute positions either enter the input (BERT-style) or only the enhanced
        # mask decoder; models with neither have no table.
        if config.position_biased_input or config.emd_layers > 0:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        else:
            self.position_embeddings = None
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, config.embedding_size)
                                      if config.type_vocab_size > 0 else None)
        self.embed_proj = (nn.Linear(config.embedding_size, config.hidden_size, bias=False)
                           if config.embedding_size != config.hidden_size else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, mask=None, inputs_embeds=None):
        """Returns (embeddings [B, L, hidden], absolute position embeddings or None)."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if self.config.position_biased_input and position_ids is None \
                and length > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        position_embeddings = None
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = torch.arange(length, device=inputs_embeds.device).expand(batch, length)
            position_embeddings = self.position_embeddings(position_ids)
        embeddings = inputs_embeds
        if self.config.position_biased_input:
            embeddings = embeddings + position_embeddings
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros((batch, length), dtype=torch.long, device=inputs_embeds.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if mask is not None:
            embeddings = embeddings * mask.unsqueeze(-1).to(embeddings.dtype)
        return self.dropout(embeddings), position_embeddings


class DisentangledSelfAttention(nn.Module):
    """Content and relative-position projections; the score arithmetic is the backend's."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        all_head_size = config.num_attention_heads * config.attention_head_size
        v2 = config.model_type == "deberta-v2"
        self.query_proj = nn.Linear(config.hidden_size, all_head_size)
        self.key_proj = nn.Linear(config.hidden_size, all_head_size, bias=v2)  # v1: no key bias
        self.value_proj = nn.Linear(config.hidden_size, all_head_size)
        self.pos_att_type = config.pos_att_type if config.relative_attention else ()
        if self.pos_att_type and not config.share_att_key:
            if "c2p" in self.pos_att_type:
                self.pos_key_proj = nn.Linear(config.hidden_size, all_head_size, bias=v2)
            if "p2c" in self.pos_att_type:
                self.pos_query_proj = nn.Linear(config.hidden_size, all_head_size)
        self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
        # One scale for all terms: 1/sqrt(d * (1 + number of position terms)), e.g.
        # 1/sqrt(64 * 3) for v3-base with c2p and p2c. The reference counts the configured
        # terms even with relative attention off, and so do we.
        self.scale = 1.0 / math.sqrt(config.attention_head_size * (1 + len(config.pos_att_type)))
        self.dropout_p = config.attention_probs_dropout_prob
        self.backend = get_backend(config.attention_backend)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, H*d] -> [..., H, L, d]"""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-2, -3)

    def forward(self, hidden_states, mask, rel_embeddings, rel_index, query_states=None, query_positions=None):
        """``query_positions`` [B, M]: the queries are ``query_states`` [B, M, H] at those
        positions only (the enhanced mask decoder at the masked tokens).

        ``mask`` a ``Packing``: the states are packed tokens [T, hidden]; they are projected
        as they are and the backend takes their heads [T, H, d] with the packing (the fused
        kernels attend on them as they are; eager and sdpa pad each sequence)."""
        packing = mask if isinstance(mask, Packing) else None
        if packing is not None and query_states is not None:
            raise ValueError("packed inputs take no separate query states (run the enhanced mask decoder "
                             "on a padded batch)")
        query_mask = mask if packing is None else None
        if query_states is None:
            query_states = hidden_states
        if query_positions is not None:
            rel_index, query_mask = rel_index[query_positions], None  # [B, M, L]; targets are real tokens
        def heads(projected):  # [B, L, H*d] -> [B, H, L, d]; packed [T, H*d] -> [T, H, d], a view
            return self.split_heads(projected) if packing is None else projected.unflatten(-1, (self.num_heads, -1))

        query = heads(self.query_proj(query_states))
        key = heads(self.key_proj(hidden_states))
        value = heads(self.value_proj(hidden_states))
        pos_key = pos_query = None
        if self.pos_att_type:
            rel_embeddings = self.pos_dropout(rel_embeddings)
            if self.config.share_att_key:
                key_proj, query_proj = self.key_proj, self.query_proj
            else:
                key_proj, query_proj = getattr(self, "pos_key_proj", None), getattr(self, "pos_query_proj", None)
            if "c2p" in self.pos_att_type:
                pos_key = self.split_heads(key_proj(rel_embeddings))
            if "p2c" in self.pos_att_type:
                pos_query = self.split_heads(query_proj(rel_embeddings))
        context = self.backend(query, key, value, pos_key, pos_query, rel_index, mask, self.scale,
                               dropout_p=self.dropout_p if self.training else 0.0, query_mask=query_mask)
        return (context.transpose(-2, -3) if packing is None else context).flatten(-2)  # [B, L, H*d] or [T, H*d]


class ResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): the tail of attention and of the FFN."""

    def __init__(self, config: DebertaConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class DebertaAttention(nn.Module):
    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.self = DisentangledSelfAttention(config)  # the reference weight name
        self.output = ResidualOutput(config, config.num_attention_heads * config.attention_head_size)

    def forward(self, hidden_states, mask, rel_embeddings, rel_index, query_states=None, query_positions=None):
        context = self.self(hidden_states, mask, rel_embeddings, rel_index, query_states, query_positions)
        return self.output(context, hidden_states if query_states is None else query_states)


class DebertaIntermediate(nn.Module):
    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class DebertaLayer(nn.Module):
    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.attention = DebertaAttention(config)
        self.intermediate = DebertaIntermediate(config)
        self.output = ResidualOutput(config, config.intermediate_size)

    def forward(self, hidden_states, mask, rel_embeddings, rel_index, query_states=None, query_positions=None):
        attended = self.attention(hidden_states, mask, rel_embeddings, rel_index, query_states, query_positions)
        return self.output(self.intermediate(attended), attended)


class ConvLayer(nn.Module):
    """nGiE (v2): a 1-D convolution over the layer-0 input, added to the layer-0 output,
    giving the first layer a view of local n-grams."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        kernel = config.conv_kernel_size
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel, padding=(kernel - 1) // 2,
                              groups=config.conv_groups)
        self.act = ACTIVATIONS[config.conv_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, layer_input, layer_output, mask):
        if isinstance(mask, Packing):  # along the packed stream, zeros between the sequences
            # padding (k - 1) // 2 on the left; the window reaches k - 1 - padding to the right, as far or further
            stream, rows = mask.spaced(layer_input, self.conv.kernel_size[0] - 1 - self.conv.padding[0])
            out = self.conv(stream.t().unsqueeze(0)).squeeze(0).t().index_select(0, rows)
            return self.LayerNorm(layer_output + self.act(self.dropout(out)))
        out = self.conv(layer_input.transpose(1, 2)).transpose(1, 2)
        keep = None if mask is None else mask.unsqueeze(-1).to(layer_output.dtype)
        if keep is not None:
            out = out * keep
        out = self.LayerNorm(layer_output + self.act(self.dropout(out)))
        return out if keep is None else out * keep


class DebertaEncoder(nn.Module):
    # Lengths whose shifted index is kept: a dynamically padded finetuning run meets every
    # batch maximum up to its max_seq_len; 64 of them at L = 128 are 64 x 128 KB on the device.
    WINDOW_INDEX_CACHE_SIZE = 64

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(DebertaLayer(config) for _ in range(config.num_hidden_layers))
        if config.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * config.relative_span, config.hidden_size)
            self.register_buffer("rel_rows", torch.arange(2 * config.relative_span), persistent=False)
            # r(i, j) depends on i - j only, so the index of a shorter sequence is the top-left
            # block of this one: built once here, never in a training step (the bucket
            # arithmetic would copy constants to the device there, one host wait each).
            table = relative_position_index(config.max_position_embeddings, config)
            self.register_buffer("rel_index_table", table, persistent=False)
            # reach[L - 1]: the largest |r(i, j) - S| among L tokens (r is monotone in i - j and
            # symmetric about S up to the clamp), a host list so that choosing a window never
            # waits on the device; on the host even when the model is built on the meta device.
            with torch.device("cpu"):
                distances = torch.arange(config.max_position_embeddings)
                self.reach = (relative_bucket(distances, config) - config.relative_span).tolist()
            self.window_index_cache: dict = {}  # (length, device) -> that length's shifted index
        if config.relative_attention and config.norm_rel_ebd == "layer_norm":
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.conv = ConvLayer(config) if config.conv_kernel_size > 0 else None
        self.gradient_checkpointing = False

    def relative_inputs(self, length: int, device) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The relative embedding rows that ``length`` tokens can reach and the index [L, L]
        into them, or (None, None) without relative attention.

        L tokens are at most L - 1 apart, so only the rows S - m .. S + m of the 2S-row table,
        m = |bucket(L - 1)|, can be read. Projecting and multiplying against those alone
        gives the same scores at a fraction of the cost on short sequences: v3's S = 256
        against a GLUE batch of L = 64 is 127 rows of 512, one quarter of the c2p and p2c
        products and of the position projections (v1, S = 512: one eighth). The index is
        shifted by S - m to match; it is kept per length (a bounded cache), because the fused
        kernel derives its distance table from the index once per index tensor."""
        if not self.config.relative_attention:
            return None, None
        span = self.config.relative_span
        if length > self.rel_index_table.shape[0]:  # relative-only models extrapolate: every row
            return self.relative_rows(self.rel_rows), relative_position_index(length, self.config, device)
        index = self.rel_index_table[:length, :length]
        reach = self.reach[length - 1]
        if reach >= span - 1:  # the window is (nearly) the whole table: no shift, no copy
            return self.relative_rows(self.rel_rows), index
        first = span - reach
        key = (length, index.device)
        shifted = self.window_index_cache.get(key)
        if shifted is None:
            if len(self.window_index_cache) >= self.WINDOW_INDEX_CACHE_SIZE:
                self.window_index_cache.pop(next(iter(self.window_index_cache)))
            with torch.inference_mode(False):  # an index made under evaluation's inference mode
                shifted = self.window_index_cache[key] = index - first  # could not serve training
        return self.relative_rows(self.rel_rows[first:span + reach + 1]), shifted

    def relative_rows(self, rows: torch.Tensor) -> torch.Tensor:
        # Rows are read through the module (not .weight) so that ZeRO-3 gathers them.
        rel = self.rel_embeddings(rows)
        return self.LayerNorm(rel) if self.config.norm_rel_ebd == "layer_norm" else rel

    def run_layer(self, layer, *args):
        if self.gradient_checkpointing and self.training:
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, hidden_states, mask):
        """Returns the outputs of every layer, the input embeddings first. ``mask``: the
        padding mask [B, L] of ``hidden_states`` [B, L, hidden], or a ``Packing`` of packed
        ``hidden_states`` [T, hidden]."""
        length = mask.max_seqlen if isinstance(mask, Packing) else hidden_states.shape[1]
        rel_embeddings, rel_index = self.relative_inputs(length, hidden_states.device)
        states = [hidden_states]
        for i, layer in enumerate(self.layer):
            output = self.run_layer(layer, states[-1], mask, rel_embeddings, rel_index)
            if i == 0 and self.conv is not None:
                output = self.conv(states[0], output, mask)
            states.append(output)
        return states


# ---------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------
@dataclass
class BackboneOutput:
    last_hidden_state: torch.Tensor
    hidden_states: list = field(default_factory=list)  # embeddings, then each layer
    position_embeddings: Optional[torch.Tensor] = None  # absolute, for the mask decoder
    packing: Optional[Packing] = None  # packed inputs: the states are [T, hidden]

    def first_tokens(self) -> torch.Tensor:
        """Each sequence's first ([CLS]) state, as [B, 1, hidden] packed or [B, L, hidden]
        padded: what ``ContextPooler`` reads position 0 of."""
        if self.packing is None:
            return self.last_hidden_state
        return self.last_hidden_state.index_select(0, self.packing.starts).unsqueeze(1)


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for projections and embeddings, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DebertaPreTrained(nn.Module):
    """Common to the backbone and the heads: config, weight init, checkpointing switch."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.config = config

    def init_weights(self):
        """Initialise this module's own layers; a head leaves its (already initialised)
        backbone alone."""
        for child in self.children():
            if not isinstance(child, DebertaModel):
                child.apply(lambda m: init_weights(m, self.config.initializer_range))
        for m in self.modules():
            if isinstance(m, MaskedLMHead):
                nn.init.zeros_(m.bias)

    def gradient_checkpointing_enable(self, enabled: bool = True):
        for m in self.modules():
            if isinstance(m, DebertaEncoder):
                m.gradient_checkpointing = enabled


class DebertaModel(DebertaPreTrained):
    """The encoder without a head: ``DebertaModel(cfg)(ids, attention_mask=m).last_hidden_state``."""

    head = "backbone"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.embeddings = DebertaEmbeddings(config)
        self.encoder = DebertaEncoder(config)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, cu_seqlens=None, max_seqlen=None) -> BackboneOutput:
        """Padded inputs [B, L] with ``attention_mask``, or packed ones: ``input_ids`` [T] (and
        ``token_type_ids`` [T]) of B sequences laid end to end, ``cu_seqlens`` [B+1] their
        cumulative lengths (0 first) and ``max_seqlen`` the longest, a Python int. Absolute
        positions restart at each sequence; the states come out packed, [T, hidden]."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if cu_seqlens is not None:
            return self._forward_packed(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                        cu_seqlens, max_seqlen)
        # No mask means every token is real: the masking work is skipped, not done on ones.
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be [batch, length], got shape {tuple(attention_mask.shape)}")
        embeddings, position_embeddings = self.embeddings(input_ids, token_type_ids, position_ids,
                                                          attention_mask, inputs_embeds)
        states = self.encoder(embeddings, attention_mask)
        return BackboneOutput(states[-1], states, position_embeddings)

    def _forward_packed(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        cu_seqlens, max_seqlen) -> BackboneOutput:
        tokens = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is not None or max_seqlen is None or tokens.dim() != (1 if input_ids is not None else 2):
            raise ValueError("packed inputs are input_ids [T] (or inputs_embeds [T, E]) with cu_seqlens and "
                             f"max_seqlen and no attention_mask; got input shape {tuple(tokens.shape)}, "
                             f"max_seqlen={max_seqlen}, attention_mask "
                             f"{'given' if attention_mask is not None else 'absent'}")
        packing = Packing(cu_seqlens, max_seqlen, tokens.shape[0])
        if position_ids is None:
            position_ids = packing.positions

        def as_row(x):  # [T, ...] -> [1, T, ...]: one row, so the embeddings see a batch
            return None if x is None else x.unsqueeze(0)

        embeddings, position_embeddings = self.embeddings(as_row(input_ids), as_row(token_type_ids),
                                                          as_row(position_ids), None, as_row(inputs_embeds))
        states = self.encoder(embeddings.squeeze(0), packing)
        position_embeddings = None if position_embeddings is None else position_embeddings.squeeze(0)
        return BackboneOutput(states[-1], states, position_embeddings, packing)


# ---------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------
@dataclass
class HeadOutput:
    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None
    hidden_states: Optional[torch.Tensor] = None  # the last hidden state of the backbone
    labels: Optional[torch.Tensor] = None  # MLM with labels: the label of each logits row (-100: a filler row)

    @property
    def start_logits(self):  # span QA: logits [B, L, 2]
        return self.logits[..., 0]

    @property
    def end_logits(self):
        return self.logits[..., 1]


class MaskedLMHead(nn.Module):
    """dense -> act -> LayerNorm -> tied word embeddings + bias (the official lm_head)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states, word_embeddings: torch.Tensor):
        hidden_states = self.LayerNorm(self.act(self.dense(hidden_states)))
        return F.linear(hidden_states, word_embeddings.to(hidden_states.dtype), self.bias)


class EnhancedMaskDecoder(nn.Module):
    """EMD: absolute positions enter only here, right before the MLM output.

    The query is (absolute position embedding + input of the last layer); it passes
    ``emd_layers`` times through the last encoder layer (shared weights), attending to
    that same input as keys and values.
    """

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.config = config
        self.lm_head = MaskedLMHead(config)

    def decode(self, out: BackboneOutput, mask, encoder: DebertaEncoder, positions=None) -> torch.Tensor:
        """The states the MLM output reads: [B, L, H], or at ``positions`` ([B, M] long)
        only, [B, M, H]. The decoder then runs only there: queries are independent rows,
        so 15 % of the rows give the same numbers at 15 % of the cost of its passes."""
        def at_positions(states):
            return states.gather(1, positions.unsqueeze(-1).expand(-1, -1, states.shape[-1]))

        if self.config.emd_layers == 0:
            return out.last_hidden_state if positions is None else at_positions(out.last_hidden_state)
        keys = out.hidden_states[-2]
        query = out.position_embeddings + keys
        if positions is not None:
            query = at_positions(query)
        rel_embeddings, rel_index = encoder.relative_inputs(keys.shape[1], keys.device)
        for _ in range(self.config.emd_layers):
            query = encoder.run_layer(encoder.layer[-1], keys, mask, rel_embeddings, rel_index, query, positions)
        return query


def target_positions(labels: torch.Tensor, max_predictions: int) -> torch.Tensor:
    """[B, M]: each row's first M target positions (labels != -100) in order; a row with
    fewer targets is filled with non-target positions, whose labels read -100."""
    order = torch.argsort((labels == -100).to(torch.int8), dim=1, stable=True)
    return order[:, :max_predictions]


class DebertaForMaskedLM(DebertaPreTrained):
    """MLM. With labels (-100 = not a target) logits are computed only at the target
    positions, [N_targets, V]: about 15 % of the 128K-way output of every token.
    Without labels, logits for every position, [B, L, V].

    ``max_predictions`` M (the authors' ``max_preds_per_seq``) fixes the shape instead:
    logits [B x M, V] at each row's first M targets, filler rows where a row has fewer
    (their ``labels`` are -100; they cost compute, not loss). The output then has a shape
    known before the step runs, so the host never waits for the device to count the
    targets, and a compiled graph sees the same shapes every step. Targets beyond the
    first M of a row are not predicted: choose M >= the most targets a row can have
    (``pretrain.masking.Masker.max_targets``)."""

    head = "masked_lm"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.deberta = DebertaModel(config)
        self.lm_predictions = EnhancedMaskDecoder(config)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, inputs_embeds=None, max_predictions: Optional[int] = None) -> HeadOutput:
        out = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        word_embeddings = self.deberta.embeddings.word_embeddings.weight
        decode, lm_head = self.lm_predictions.decode, self.lm_predictions.lm_head
        if labels is None:
            states = decode(out, attention_mask, self.deberta.encoder)
            return HeadOutput(lm_head(states, word_embeddings), hidden_states=out.last_hidden_state)
        if max_predictions is not None:
            positions = target_positions(labels, max_predictions)
            row_labels = labels.gather(1, positions).flatten()
            logits = lm_head(decode(out, attention_mask, self.deberta.encoder, positions).flatten(0, 1),
                             word_embeddings)
            counted = (row_labels != -100).sum()
            loss = F.cross_entropy(logits.float(), row_labels, ignore_index=-100, reduction="sum") \
                / counted.clamp(min=1)
            return HeadOutput(logits, loss, out.last_hidden_state, row_labels)
        # Exactly the targets: shapes that depend on the data, counted on the host.
        targets = labels != -100
        counts = targets.sum(1)
        positions = target_positions(labels, int(counts.max()))
        states = decode(out, attention_mask, self.deberta.encoder, positions)
        states = states[torch.arange(positions.shape[1], device=states.device) < counts.unsqueeze(1)]
        logits = lm_head(states, word_embeddings)
        row_labels = labels[targets]
        loss = F.cross_entropy(logits.float(), row_labels) if logits.shape[0] else logits.sum() * 0.0
        return HeadOutput(logits, loss, out.last_hidden_state, row_labels)


class ReplacedTokenDetectionHead(nn.Module):
    """The official v3 discriminator head: each token's state plus the [CLS] state,
    LayerNorm, dense, act, and one logit (replaced or original)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states):
        states = self.LayerNorm(hidden_states[:, :1] + hidden_states)
        return self.classifier(self.act(self.dense(states))).squeeze(-1)


class DebertaForReplacedTokenDetection(DebertaPreTrained):
    """RTD discriminator. labels: [B, L] 1 = replaced, 0 = original, -100 = ignore;
    the loss averages over real (unpadded) tokens."""

    head = "replaced_token_detection"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.deberta = DebertaModel(config)
        self.mask_predictions = ReplacedTokenDetectionHead(config)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, inputs_embeds=None) -> HeadOutput:
        out = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        logits = self.mask_predictions(out.last_hidden_state)
        loss = None
        if labels is not None:
            counted = labels != -100
            if attention_mask is not None:
                counted &= attention_mask.bool()
            # A weighted mean, not a selection: the same number, with no shape that depends on the data.
            per_token = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).float(),
                                                           reduction="none")
            loss = (per_token * counted).sum() / counted.sum().clamp(min=1)
        return HeadOutput(logits, loss, out.last_hidden_state)


class ContextPooler(nn.Module):
    """The [CLS] state -> dropout -> dense -> act."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.pooler_dropout)
        self.act = ACTIVATIONS[config.pooler_hidden_act]

    def forward(self, hidden_states):
        return self.act(self.dense(self.dropout(hidden_states[:, 0])))


def _classifier_dropout(config: DebertaConfig) -> nn.Dropout:
    return nn.Dropout(config.hidden_dropout_prob if config.cls_dropout is None else config.cls_dropout)


class DebertaForSequenceClassification(DebertaPreTrained):
    """Classification (num_labels >= 2; labels < 0 are ignored) or regression
    (num_labels == 1, mean squared error). Packed inputs (``cu_seqlens``): the same
    logits [B, num_labels], read at each sequence's first token."""

    head = "sequence_classification"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.deberta = DebertaModel(config)
        self.pooler = ContextPooler(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, inputs_embeds=None, cu_seqlens=None, max_seqlen=None) -> HeadOutput:
        out = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, cu_seqlens,
                           max_seqlen)
        logits = self.classifier(self.dropout(self.pooler(out.first_tokens())))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
            else:  # labels < 0 count for nothing; no selection, so no shape that depends on the data
                kept = labels >= 0
                loss = F.cross_entropy(logits.float(), torch.where(kept, labels.long(), -100), ignore_index=-100,
                                       reduction="sum") / kept.sum().clamp(min=1)
        return HeadOutput(logits, loss, out.last_hidden_state)


class DebertaForTokenClassification(DebertaPreTrained):
    """Per-token labels (NER); label -100 marks positions without a label. Packed inputs:
    logits and labels [T, ...], one row per real token."""

    head = "token_classification"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.deberta = DebertaModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, inputs_embeds=None, cu_seqlens=None, max_seqlen=None) -> HeadOutput:
        out = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, cu_seqlens,
                           max_seqlen)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.flatten(), ignore_index=-100)
        return HeadOutput(logits, loss, out.last_hidden_state)


class DebertaForQuestionAnswering(DebertaPreTrained):
    """Span extraction: start and end logits per token, logits [B, L, 2]. For SQuAD 2.0
    an unanswerable question points start and end at [CLS] (position 0).

    Packed inputs: logits [T, 2]; positions count from each sequence's first token, and
    each sequence's softmax spans its own tokens (a padded batch's spans its padding too,
    as in the reference heads, so the two losses differ slightly; the logits do not)."""

    head = "question_answering"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.deberta = DebertaModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                start_positions=None, end_positions=None, inputs_embeds=None, cu_seqlens=None,
                max_seqlen=None) -> HeadOutput:
        out = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, cu_seqlens,
                           max_seqlen)
        logits = self.qa_outputs(out.last_hidden_state)
        loss = None
        if start_positions is not None and end_positions is not None:
            scores = logits.float()
            if out.packing is not None:  # [B, Lmax, 2]: no sequence's padding can be chosen
                scores = out.packing.pad(scores, fill=torch.finfo(scores.dtype).min)
            # Answers cut off by the window are ignored, as in the reference heads.
            length = scores.shape[1]
            start = start_positions.view(-1).clamp(0, length)
            end = end_positions.view(-1).clamp(0, length)
            loss = (F.cross_entropy(scores[..., 0], start, ignore_index=length)
                    + F.cross_entropy(scores[..., 1], end, ignore_index=length)) / 2
        return HeadOutput(logits, loss, out.last_hidden_state)


class DebertaForMultipleChoice(DebertaPreTrained):
    """Inputs [B, C, L] (C choices); logits [B, C]; labels the index of the right choice.
    Packed inputs: each choice one sequence (example 0's C choices first), ``num_choices`` C."""

    head = "multiple_choice"

    def __init__(self, config: DebertaConfig):
        super().__init__(config)
        self.deberta = DebertaModel(config)
        self.pooler = ContextPooler(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, inputs_embeds=None, cu_seqlens=None, max_seqlen=None,
                num_choices: Optional[int] = None) -> HeadOutput:
        if cu_seqlens is not None:
            if num_choices is None:
                raise ValueError("packed multiple-choice inputs need num_choices (sequences per example)")
            out = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, cu_seqlens,
                               max_seqlen)
            return self._choose(out, num_choices, labels)
        reference = input_ids if input_ids is not None else inputs_embeds
        n_choices = reference.shape[1]

        def flat(x):  # [B, C, ...] -> [B*C, ...]
            return None if x is None else x.flatten(0, 1)

        out = self.deberta(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                           flat(inputs_embeds))
        return self._choose(out, n_choices, labels)

    def _choose(self, out: BackboneOutput, n_choices: int, labels) -> HeadOutput:
        logits = self.classifier(self.dropout(self.pooler(out.first_tokens()))).view(-1, n_choices)
        loss = F.cross_entropy(logits.float(), labels.view(-1)) if labels is not None else None
        return HeadOutput(logits, loss, out.last_hidden_state)


HEADS: dict[str, type[DebertaPreTrained]] = {
    cls.head: cls for cls in (DebertaModel, DebertaForMaskedLM, DebertaForReplacedTokenDetection,
                              DebertaForSequenceClassification, DebertaForTokenClassification,
                              DebertaForQuestionAnswering, DebertaForMultipleChoice)
}


def build_model(config: DebertaConfig, head: str = "backbone") -> DebertaPreTrained:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; available: {sorted(HEADS)}")
    return HEADS[head](config)
