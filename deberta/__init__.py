"""DeBERTa v1/v2/v3 model library: config, model and heads, tokenizers, model folders.

    from deberta import DebertaConfig, DebertaModel, load_model
    cfg = DebertaConfig.from_preset("deberta-v3-base")
    backbone = DebertaModel(cfg)
    out = backbone(input_ids, attention_mask=mask)      # out.last_hidden_state: [B, L, H]
    model = load_model("models/v3")                     # native, Hugging Face or official folder
"""
from .checkpoint import CheckpointError, export_hf, load_model, read_folder, save_model
from .model import (
    HEADS,
    DebertaConfig,
    DebertaForMaskedLM,
    DebertaForMultipleChoice,
    DebertaForQuestionAnswering,
    DebertaForReplacedTokenDetection,
    DebertaForSequenceClassification,
    DebertaForTokenClassification,
    DebertaModel,
    build_model,
)
from .presets import PRESETS
from .tokenizer import GPT2BPETokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "HEADS", "PRESETS", "CheckpointError", "DebertaConfig", "DebertaForMaskedLM", "DebertaForMultipleChoice",
    "DebertaForQuestionAnswering", "DebertaForReplacedTokenDetection", "DebertaForSequenceClassification",
    "DebertaForTokenClassification", "DebertaModel", "GPT2BPETokenizer", "SentencePieceTokenizer", "Tokenizer",
    "build_model", "export_hf", "load_model", "load_tokenizer", "read_folder", "save_model",
]
