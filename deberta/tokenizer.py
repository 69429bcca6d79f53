"""Tokenizers of DeBERTa: SentencePiece (v2, v3, mDeBERTa) and GPT-2 byte-level BPE (v1).

Both share one interface and DeBERTa's special tokens. The official ids are
``[PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3``; ``[MASK]`` comes after the ordinary vocabulary
(128000 in the v2/v3 SentencePiece models, 50264 in the RoBERTa vocabulary of v1).

A sequence is ``[CLS] A [SEP]`` and a pair ``[CLS] A [SEP] B [SEP]`` with token types 0
for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``. Pairs that are too long are truncated
longest-first from the end, the rule of the official tokenizers.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import sentencepiece

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
SPM_FILE = "spm.model"
BPE_VOCAB_FILE = "vocab.json"
BPE_MERGES_FILE = "merges.txt"
HF_TOKENIZER_FILE = "tokenizer.json"  # what transformers 5 saves
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


class Tokenizer:
    """The interface both tokenizers implement; subclasses fill the token-id table."""

    name: str
    hf_class: str  # the transformers tokenizer class that reads the same files

    def __init__(self, special_ids: dict[str, int], vocab_size: int):
        self.special_ids = special_ids
        self.vocab_size = vocab_size
        self.pad_token_id = special_ids["[PAD]"]
        self.cls_token_id = special_ids["[CLS]"]
        self.sep_token_id = special_ids["[SEP]"]
        self.unk_token_id = special_ids["[UNK]"]
        self.mask_token_id = special_ids["[MASK]"]
        self._special_id_set = frozenset(special_ids.values())

    # --- to be provided by each tokenizer ---------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def _decode_plain(self, ids: list[int]) -> str:
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str:
        raise NotImplementedError

    def save(self, folder: str | Path) -> None:
        """Copy the tokenizer files into ``folder``, with a tokenizer_config.json that lets
        transformers' AutoTokenizer read them too."""
        folder = Path(folder)
        for name, source in self.files().items():
            destination = folder / name
            if not destination.exists() or destination.resolve() != source.resolve():
                shutil.copyfile(source, destination)
        (folder / HF_TOKENIZER_CONFIG).write_text(json.dumps(
            {"tokenizer_class": self.hf_class, "do_lower_case": False}, indent=2) + "\n", encoding="utf-8")

    def files(self) -> dict[str, Path]:
        """File name in a model folder -> where this tokenizer's copy is."""
        raise NotImplementedError

    # --- shared behaviour --------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_id_set]
        return self._decode_plain(ids)

    def is_word_start(self, token_id: int) -> bool:
        """Whether the token begins a new word (used by whole-word masking)."""
        raise NotImplementedError

    def build_inputs(self, first: list[int], second: list[int] | None = None,
                     max_length: int | None = None) -> dict[str, list[int]]:
        """``[CLS] first [SEP] (second [SEP])`` with token types and an attention mask.

        With ``max_length`` the longer segment loses tokens from its end until the whole,
        special tokens included, fits.
        """
        first, second = list(first), (list(second) if second is not None else None)
        if max_length is not None:
            n_special = 2 if second is None else 3
            if max_length < n_special + (1 if second is None else 2):
                raise ValueError(f"max_length={max_length} leaves no room for text "
                                 f"after {n_special} special tokens")
            truncate_longest_first(first, second, max_length - n_special)
        input_ids = [self.cls_token_id] + first + [self.sep_token_id]
        token_type_ids = [0] * len(input_ids)
        if second is not None:
            input_ids += second + [self.sep_token_id]
            token_type_ids += [1] * (len(second) + 1)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids,
                "attention_mask": [1] * len(input_ids)}

    def __call__(self, text: str, pair: str | None = None, max_length: int | None = None):
        return self.build_inputs(self.encode(text), self.encode(pair) if pair is not None else None,
                                 max_length)


def truncate_longest_first(first: list[int], second: list[int] | None, budget: int) -> int:
    """Cut the ends of the lists so that together they fit ``budget``; returns the count cut.

    The longer segment is cut first; when both must be cut, the originally shorter one
    keeps budget // 2 tokens and the longer the rest (the rule of the Hugging Face
    tokenizers, which the official DeBERTa tokenizers are).
    """
    total = len(first) + (len(second) if second is not None else 0)
    if total <= budget:
        return 0
    if second is None:
        del first[budget:]
    elif len(first) > len(second):
        keep_second = min(len(second), budget // 2)
        del second[keep_second:]
        del first[budget - keep_second:]
    else:
        keep_first = min(len(first), budget // 2)
        del first[keep_first:]
        del second[budget - keep_first:]
    return total - budget


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; DeBERTa's special tokens keep the ids the model gives them.

    Special tokens the model lacks are appended after its pieces in the official order
    ``[MASK] [SEP] [PAD] [UNK] [CLS]``; SentencePiece's own unknown piece maps to ``[UNK]``.
    """

    name = "sentencepiece"
    hf_class = "DebertaV2Tokenizer"

    def __init__(self, model_file: str | Path):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_file}")
        self.spm = sentencepiece.SentencePieceProcessor(model_file=str(self.model_file))
        n_pieces = self.spm.get_piece_size()
        special_ids = {}
        for token in SPECIAL_TOKENS:
            piece_id = self.spm.piece_to_id(token)
            if piece_id != self.spm.unk_id() or self.spm.id_to_piece(piece_id) == token:
                special_ids[token] = piece_id
        extra = 0
        for token in ("[MASK]", "[SEP]", "[PAD]", "[UNK]", "[CLS]"):
            if token not in special_ids:
                special_ids[token] = n_pieces + extra
                extra += 1
        super().__init__(special_ids, n_pieces + extra)
        self._spm_unk = self.spm.unk_id()
        self._id_to_special = {i: t for t, i in special_ids.items()}

    def _map_unknown(self, ids: list[int]) -> list[int]:
        if self._spm_unk == self.unk_token_id:
            return ids
        return [self.unk_token_id if i == self._spm_unk else i for i in ids]

    def encode(self, text: str) -> list[int]:
        return self._map_unknown(self.spm.encode(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._map_unknown(ids) for ids in self.spm.encode(texts)]

    def tokenize(self, text: str) -> list[str]:
        return [self.id_to_token(i) for i in self.encode(text)]

    def id_to_token(self, token_id: int) -> str:
        if token_id in self._id_to_special:
            return self._id_to_special[token_id]
        return self.spm.id_to_piece(token_id)

    def is_word_start(self, token_id: int) -> bool:
        if token_id in self._special_id_set or token_id >= self.spm.get_piece_size():
            return True
        return self.spm.id_to_piece(token_id).startswith("\u2581")

    def _decode_plain(self, ids: list[int]) -> str:
        n = self.spm.get_piece_size()
        return self.spm.decode([i for i in ids if i < n])

    def files(self) -> dict[str, Path]:
        return {SPM_FILE: self.model_file}


class GPT2BPETokenizer(Tokenizer):
    """GPT-2 byte-level BPE with the RoBERTa vocabulary, as DeBERTa v1 uses it.

    Reads the Hugging Face layout (``vocab.json`` with the special tokens in it, and
    ``merges.txt``); the byte-level BPE itself is the ``tokenizers`` library's.
    """

    name = "gpt2-bpe"
    hf_class = "DebertaTokenizer"

    def __init__(self, vocab_file: str | Path, merges_file: str | Path):
        from tokenizers import ByteLevelBPETokenizer

        self.vocab_file, self.merges_file = Path(vocab_file), Path(merges_file)
        for f in (self.vocab_file, self.merges_file):
            if not f.is_file():
                raise FileNotFoundError(f"GPT-2 BPE file not found: {f}")
        vocab = json.loads(self.vocab_file.read_text(encoding="utf-8"))
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{self.vocab_file}: the vocabulary lacks the special tokens {missing}")
        self.bpe = ByteLevelBPETokenizer(str(self.vocab_file), str(self.merges_file))
        self._id_to_token = {i: t for t, i in vocab.items()}
        super().__init__({t: vocab[t] for t in SPECIAL_TOKENS}, max(vocab.values()) + 1)

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.bpe.encode_batch(texts)]

    def tokenize(self, text: str) -> list[str]:
        return self.bpe.encode(text).tokens

    def id_to_token(self, token_id: int) -> str:
        return self._id_to_token[token_id]

    def is_word_start(self, token_id: int) -> bool:
        token = self._id_to_token.get(token_id, "")
        return token_id in self._special_id_set or token.startswith("\u0120")

    def _decode_plain(self, ids: list[int]) -> str:
        return self.bpe.decode(ids)

    def files(self) -> dict[str, Path]:
        return {BPE_VOCAB_FILE: self.vocab_file, BPE_MERGES_FILE: self.merges_file}


class HFJSONTokenizer(Tokenizer):
    """A ``tokenizer.json`` as transformers 5 saves it for DeBERTa (either version)."""

    name = "tokenizer.json"

    def __init__(self, tokenizer_file: str | Path):
        from tokenizers import Tokenizer as FastTokenizer

        self.tokenizer_file = Path(tokenizer_file)
        self.fast = FastTokenizer.from_file(str(self.tokenizer_file))
        special_ids = {t: self.fast.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in special_ids.items() if i is None]
        if missing:
            raise ValueError(f"{self.tokenizer_file}: the vocabulary lacks the special tokens {missing}")
        super().__init__(special_ids, self.fast.get_vocab_size(with_added_tokens=True))
        config = self.tokenizer_file.with_name(HF_TOKENIZER_CONFIG)
        self.hf_class = (json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
                         if config.is_file() else None) or "PreTrainedTokenizerFast"

    def encode(self, text: str) -> list[int]:
        return self.fast.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.fast.encode_batch(texts, add_special_tokens=False)]

    def tokenize(self, text: str) -> list[str]:
        return self.fast.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, token_id: int) -> str:
        return self.fast.id_to_token(token_id)

    def is_word_start(self, token_id: int) -> bool:
        token = self.fast.id_to_token(token_id) or ""
        return token_id in self._special_id_set or token.startswith(("\u2581", "\u0120"))

    def _decode_plain(self, ids: list[int]) -> str:
        return self.fast.decode(ids, skip_special_tokens=False)

    def files(self) -> dict[str, Path]:
        return {HF_TOKENIZER_FILE: self.tokenizer_file}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a model folder, a SentencePiece ``.model`` file, a ``vocab.json`` or a
    ``tokenizer.json``."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        if path.name == BPE_VOCAB_FILE:
            return GPT2BPETokenizer(path, path.with_name(BPE_MERGES_FILE))
        if path.name == HF_TOKENIZER_FILE:
            return HFJSONTokenizer(path)
        raise ValueError(f"{path}: not a SentencePiece .model file nor a GPT-2 vocab.json")
    if (path / SPM_FILE).is_file():
        return SentencePieceTokenizer(path / SPM_FILE)
    if (path / BPE_VOCAB_FILE).is_file():
        return GPT2BPETokenizer(path / BPE_VOCAB_FILE, path / BPE_MERGES_FILE)
    if (path / HF_TOKENIZER_FILE).is_file():
        return HFJSONTokenizer(path / HF_TOKENIZER_FILE)
    raise FileNotFoundError(f"{path}: no tokenizer found (expected {SPM_FILE}, {BPE_VOCAB_FILE} with "
                            f"{BPE_MERGES_FILE}, or {HF_TOKENIZER_FILE})")
