"""DeBERTa v1/v2/v3 model library: config, model and heads, tokenizers, model folders.

    from deberta import DebertaConfig, DebertaModel, load_model
    cfg = DebertaConfig.from_preset("deberta-v3-base")
    backbone = DebertaModel(cfg)
    out = backbone(input_ids, attention_mask=mask)      # out.last_hidden_state: [B, L, H]
    model = load_model("models/v3")                     # native, Hugging Face or official folder

Names are imported on first use, so that ``deberta.tokenizer`` alone (data preparation
workers) does not pay for importing torch.
"""
import importlib

_EXPORTS = {
    "checkpoint": ("CheckpointError", "export_hf", "load_model", "read_folder", "save_model"),
    "model": ("HEADS", "DebertaConfig", "DebertaForMaskedLM", "DebertaForMultipleChoice",
              "DebertaForQuestionAnswering", "DebertaForReplacedTokenDetection",
              "DebertaForSequenceClassification", "DebertaForTokenClassification", "DebertaModel",
              "build_model"),
    "presets": ("PRESETS",),
    "tokenizer": ("GPT2BPETokenizer", "HFJSONTokenizer", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'deberta' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
