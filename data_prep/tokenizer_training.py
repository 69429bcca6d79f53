"""``python -m data_prep tokenizer``: a SentencePiece model with DeBERTa's special ids.

The model is trained on a bounded sample of sentences: the ``max_sentences`` sentences of
smallest keyed hash ("bottom-k"), which is reproducible for a given seed, independent of
the order files are read in, and needs memory for the sample only. Documents are cut into
paragraphs, then sentences, then pieces of at most ``MAX_SENTENCE_BYTES``, because
SentencePiece silently skips longer inputs (and the corpus has whole speeches on a line).
"""
from __future__ import annotations

import hashlib
import heapq
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional

import sentencepiece

from deberta.cli import option, required
from deberta.errors import InputError
from deberta.tokenizer import SPM_FILE, load_tokenizer

from .inputs import (PieceReader, ProblemLog, UnreadableInput, find_inputs, normalize_text,
                     plan_pieces, unreadable_errors)
from .shard_format import commit, temporary_name

MAX_SENTENCE_BYTES = 4096
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
OFFICIAL_SPECIAL_IDS = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}


@dataclass
class TokenizerConfig:
    """The options of ``python -m data_prep tokenizer``: train on ``inputs``, or copy ``source``."""
    output: str = required("folder; gets spm.model")
    inputs: list[str] = option([], "file pattern to train on; repeat --input for more", aliases=("input",))
    source: Optional[str] = option(None, "copy this SentencePiece .model, GPT-2 vocab.json (merges.txt beside "
                                         "it) or tokenizer folder instead of training", aliases=("from",))
    vocab_size: int = option(128000, "SentencePiece pieces; [MASK] comes after them")
    max_sentences: int = option(2_000_000, "size of the training sample")
    seed: int = option(0, "which sample (reproducible)")
    model_type: Literal["unigram", "bpe"] = option("unigram", "SentencePiece model type")
    character_coverage: float = option(0.9995, "share of characters the model covers")
    text_field: str = option("text", "field of .jsonl/.parquet/datasets records")

    def __post_init__(self):
        if not self.source and not self.inputs:
            raise ValueError("give --input patterns to train on, or --from an existing tokenizer")
        if self.vocab_size < 1:
            raise ValueError(f"--vocab_size {self.vocab_size} must be positive")
        if self.max_sentences < 1:
            raise ValueError(f"--max_sentences {self.max_sentences} must be positive")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"--character_coverage {self.character_coverage} is not in (0, 1]")


def run_tokenizer(config: TokenizerConfig) -> Path:
    """Copy ``config.source`` when given, else train on ``config.inputs``."""
    if config.source:
        return copy_tokenizer(config.source, config.output)
    return train_tokenizer(config.inputs, config.vocab_size, config.output, config.max_sentences, config.seed,
                           config.model_type, config.character_coverage, config.text_field)


def _chop(text: str, max_bytes: int) -> Iterator[str]:
    """Cut at the last space before the limit (or at the limit when there is none)."""
    while len(text.encode("utf-8")) > max_bytes:
        head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        cut = head.rfind(" ")
        cut = cut if cut > 0 else len(head)
        yield text[:cut]
        text = text[cut:].lstrip()
    if text:
        yield text


def training_sentences(documents: Iterable[str], max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    for document in documents:
        for paragraph in document.split("\n"):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            # A character is at most 4 UTF-8 bytes: most paragraphs need no encoding to tell.
            if len(paragraph) * 4 <= max_bytes or len(paragraph.encode("utf-8")) <= max_bytes:
                yield paragraph
                continue
            for sentence in _SENTENCE_END.split(paragraph):
                yield from _chop(sentence, max_bytes)


def bottom_k_sample(sentences: Iterable[str], size: int, seed: int) -> list[str]:
    """The ``size`` sentences of smallest keyed hash, sorted by it."""
    key = seed.to_bytes(8, "little")
    heap: list[tuple[int, str]] = []          # (-hash, sentence): the largest kept hash on top
    for sentence in sentences:
        rank = int.from_bytes(hashlib.blake2b(sentence.encode("utf-8"), digest_size=8, key=key).digest(), "little")
        if len(heap) < size:
            heapq.heappush(heap, (-rank, sentence))
        elif -heap[0][0] > rank:
            heapq.heapreplace(heap, (-rank, sentence))
    return [sentence for _, sentence in sorted(heap, key=lambda item: (-item[0], item[1]))]


def read_documents(patterns: list[str], text_field: str, problems: ProblemLog) -> Iterator[str]:
    pieces = plan_pieces(find_inputs(patterns), piece_bytes=1 << 62)
    with tempfile.TemporaryDirectory() as scratch:
        for piece in pieces:
            reader = PieceReader(piece, text_field, problems, Path(scratch))
            try:
                for _, raw in reader.documents():
                    text = normalize_text(raw)
                    if text:
                        yield text
            except unreadable_errors() as error:
                raise UnreadableInput(f"{piece.path}: cannot be read ({type(error).__name__}: {error}); repair "
                                      f"it (a truncated download?) or leave it out of --input") from error


def train_tokenizer(patterns: list[str], vocab_size: int, output: str | Path, max_sentences: int = 2_000_000,
                    seed: int = 0, model_type: str = "unigram", character_coverage: float = 0.9995,
                    text_field: str = "text", threads: int | None = None) -> Path:
    problems = ProblemLog()
    sample = bottom_k_sample(training_sentences(read_documents(patterns, text_field, problems)),
                             max_sentences, seed)
    for kind, count in problems.counts.items():
        example = next(e for e in problems.examples if e["kind"] == kind)
        print(f"data_prep tokenizer: {count} input problem(s) {kind}, e.g. {example['where']}: {example['detail']}",
              file=sys.stderr)
    if not sample:
        raise InputError(f"no text found in {patterns} (every document empty or unreadable); check --input "
                         f"and --text_field")
    output = Path(output)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=output) as scratch:
            try:
                sentencepiece.SentencePieceTrainer.train(
                    sentence_iterator=iter(sample), model_prefix=os.path.join(scratch, "spm"),
                    vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
                    max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=0, shuffle_input_sentence=False,
                    num_threads=threads or os.cpu_count() or 1, minloglevel=2,
                    pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]",
                    unk_id=3, unk_piece="[UNK]")
            except RuntimeError as error:
                raise _training_error(error, vocab_size, len(sample)) from error
            target = output / SPM_FILE
            temporary = temporary_name(target)
            shutil.move(os.path.join(scratch, "spm.model"), temporary)
            commit(temporary, target)
    except BaseException:
        if created and not any(output.iterdir()):
            output.rmdir()  # leave no empty folder that looks like a tokenizer
        raise
    print(f"data_prep tokenizer: trained on {len(sample):,} sentences", file=sys.stderr)
    return check_special_ids(target)


def _training_error(error: RuntimeError, vocab_size: int, sentences: int) -> InputError:
    """SentencePiece's refusal in our words: a vocabulary larger than the text holds pieces for."""
    message = str(error)
    limit = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if limit:
        return InputError(f"--vocab_size {vocab_size} is more than the {sentences:,} training sentences hold "
                          f"pieces for (at most {limit.group(1)}); lower --vocab_size or give more text")
    return InputError(f"SentencePiece could not train on the {sentences:,} sentences: "
                      f"{message.splitlines()[-1] if message else type(error).__name__}")


def copy_tokenizer(source: str | Path, output: str | Path) -> Path:
    """Take an existing SentencePiece model or GPT-2 BPE files (vocab.json + merges.txt)."""
    tokenizer = load_tokenizer(source)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(output)
    return check_special_ids(output)


def check_special_ids(path: Path) -> Path:
    tokenizer = load_tokenizer(path)
    moved = {t: tokenizer.special_ids[t] for t, i in OFFICIAL_SPECIAL_IDS.items() if tokenizer.special_ids[t] != i}
    if moved and tokenizer.name == "sentencepiece":
        print(f"data_prep tokenizer: note: special tokens not at DeBERTa's official ids: {moved}", file=sys.stderr)
    print(f"data_prep tokenizer: {path} ({tokenizer.name}, vocab {tokenizer.vocab_size} incl. [MASK]="
          f"{tokenizer.mask_token_id})", file=sys.stderr)
    return path
