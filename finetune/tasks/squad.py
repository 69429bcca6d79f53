"""Extractive question answering: SQuAD 1.1 and 2.0 JSON files.

A context is split on white space into words; each word is encoded on its own (with a
leading space after the first, see tasks/ner.py), so every sub-token maps back to a word
and every answer to a span of the original text. Contexts longer than the window are cut
into overlapping windows ``doc_stride`` tokens apart; a span is only taken from the window
where its start token has the most context on both sides. Answers are whole words of the
context: an answer that ends inside a word ("1990" of "1990s") is predicted as the word.

SQuAD 2.0: an unanswerable question is trained to point at [CLS]; at prediction time "no
answer" wins when its score (start+end logit at [CLS], the lowest over the windows) beats
the best span by more than ``--null_score_threshold``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deberta.atomic import atomic_write
from deberta.attention import Packing

from .. import metrics as M
from ..data import DataError, Split, TruncationCounter, is_packed
from ..sift import symmetric_kl
from .base import Task, register


@dataclass
class QAExample:
    qid: str
    question: str
    context: str
    word_spans: list[tuple[int, int]]  # character [start, end) of each context word
    answers: list[str]
    answer_words: tuple[int, int] | None  # first training answer as word indices; None: no answer


def _word_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def read_squad(path: Path) -> tuple[list[QAExample], int]:
    """The examples of a SQuAD JSON file, and how many answers did not match their context."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a SQuAD file (expected JSON with a 'data' list: {error})") from None
    examples, mismatched = [], 0
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            if "context" not in paragraph:
                raise DataError(f"{where}: no 'context'")
            context = paragraph["context"]
            spans = _word_spans(context)
            for q, qa in enumerate(paragraph.get("qas", [])):
                if "id" not in qa or "question" not in qa:
                    raise DataError(f"{where}.qas[{q}]: needs 'id' and 'question'")
                # SQuAD 2.0 keeps "plausible" answers apart; an impossible question has none.
                answers = [] if qa.get("is_impossible", False) else qa.get("answers", [])
                answer_words = None
                if answers:
                    answer_words = _answer_words(context, spans, answers[0])
                    if answer_words is None:
                        mismatched += 1
                examples.append(QAExample(str(qa["id"]), qa["question"], context, spans,
                                          [x["text"] for x in answers], answer_words))
    if not examples:
        raise DataError(f"{path}: the file has no questions")
    return examples, mismatched


def _answer_words(context: str, spans, answer: dict) -> tuple[int, int] | None:
    start, text = answer.get("answer_start"), answer.get("text", "")
    if start is None or context[start:start + len(text)] != text or not text.strip():
        return None
    end = start + len(text)
    words = [i for i, (s, e) in enumerate(spans) if s < end and e > start]
    return (words[0], words[-1]) if words else None


@register("squad", "squad2")
class SquadTask(Task):
    head = "question_answering"
    per_token_logits = True

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.version_2 = config.task == "squad2"
        version = "v2.0" if self.version_2 else "v1.1"
        self.default_files = {"train": f"train-{version}.json", "dev": f"dev-{version}.json"}
        self.metrics = ("f1", "exact")

    @property
    def num_labels(self) -> int:
        return 2

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        examples, mismatched = read_squad(path)
        training = name == "train"
        counter = TruncationCounter(path, self.config.max_seq_length)
        self._cut_questions = 0
        features = []
        for number, example in enumerate(examples):
            if training and example.answers and example.answer_words is None:
                continue  # an answer that is not in its context cannot be a span target
            features += self._windows(number, example, training, counter)
        notes = [f"{path}: {n} of {len(examples)} questions{why}" for n, why in (
            (self._cut_questions, f" were cut to max_query_length={self.config.max_query_length} tokens"),
            (counter.truncated, f" have contexts longer than max_seq_length={self.config.max_seq_length}: "
                                f"they span several windows"),
            (mismatched, "' answers do not match their context at answer_start"
                         + (" (skipped for training)" if training else ""))) if n]
        return Split(name, path, features, examples, labelled, notes)

    def _windows(self, number: int, example: QAExample, training: bool, counter) -> list[dict]:
        config, tokenizer = self.config, self.tokenizer
        question = tokenizer.encode(example.question)
        if len(question) > config.max_query_length:
            self._cut_questions += 1
            question = question[:config.max_query_length]
        word_of_token, first_token_of_word, context = [], [], []
        for w, (s, e) in enumerate(example.word_spans):
            pieces = tokenizer.encode(example.context[s:e] if w == 0 else " " + example.context[s:e])
            first_token_of_word.append(len(context))
            word_of_token += [w] * len(pieces)
            context += pieces
        room = config.max_seq_length - len(question) - 3  # [CLS] q [SEP] window [SEP]
        if room < 1:
            raise DataError(f"max_seq_length={config.max_seq_length} leaves no room for the context after "
                            f"a {len(question)}-token question; raise it or lower --max_query_length")
        counter.add(len(question) + len(context) + 3)
        stride = min(config.doc_stride, room)  # a larger stride would skip context tokens
        starts = list(range(0, max(len(context) - room, 0) + stride, stride))
        starts = [s for s in starts if s < max(len(context), 1)]
        answer = None
        if example.answer_words is not None:
            first_word, last_word = example.answer_words
            last_token = (first_token_of_word[last_word + 1] - 1 if last_word + 1 < len(first_token_of_word)
                          else len(context) - 1)
            answer = (first_token_of_word[first_word], last_token)
        windows = []
        for start in starts:
            end = min(start + room, len(context))
            feature = tokenizer.build_inputs(question, context[start:end])
            offset = len(question) + 2  # window token t sits at offset + t - start
            feature["_example"] = number
            feature["_token_word"] = [-1] * offset + word_of_token[start:end] + [-1]
            feature["_max_context"] = [False] * offset + [
                _max_context_window(starts, room, len(context), t) == start for t in range(start, end)] + [False]
            if training:
                inside = answer is not None and start <= answer[0] and answer[1] < end
                feature["start_positions"] = offset + answer[0] - start if inside else 0
                feature["end_positions"] = offset + answer[1] - start if inside else 0
            windows.append(feature)
            if end == len(context):
                break
        return windows

    def score(self, split: Split, outputs: list[np.ndarray]):
        best: dict[str, tuple[float, str]] = {}
        null_scores: dict[str, float] = {}
        for feature, logits in zip(split.features, outputs):
            example = split.examples[feature["_example"]]
            start_logits, end_logits = logits[:, 0], logits[:, 1]
            null = float(start_logits[0] + end_logits[0])
            null_scores[example.qid] = min(null, null_scores.get(example.qid, np.inf))
            span = self._best_span(feature, start_logits, end_logits)
            if span is not None:
                score, first, last = span
                if example.qid not in best or score > best[example.qid][0]:
                    spans = example.word_spans
                    best[example.qid] = (score, example.context[spans[first][0]:spans[last][1]])
        predictions, spans, odds = {}, {}, {}
        for example in split.examples:
            score, text = best.get(example.qid, (-np.inf, ""))
            odds[example.qid] = null_scores.get(example.qid, 0.0) - score if np.isfinite(score) else 1e9
            answered = not self.version_2 or odds[example.qid] <= self.config.null_score_threshold
            spans[example.qid] = text
            predictions[example.qid] = text if answered else ""
        result = (predictions, odds if self.version_2 else None)
        if not split.has_labels:
            return {}, result
        golds = {e.qid: e.answers for e in split.examples}
        if not self.version_2:
            return M.squad_v1_metrics(predictions, golds), result
        # The official script on the predictions file; its threshold sweep over the best
        # spans, so that best_f1_thresh is the --null_score_threshold that reaches best_f1.
        metrics = M.squad_v2_metrics(predictions, golds)
        metrics.update(M.squad_v2_best_thresholds(spans, golds, odds))
        return metrics, result

    def _best_span(self, feature, start_logits, end_logits):
        """(score, first word, last word) of the best valid span in one window, or None."""
        n = self.config.n_best
        token_word, max_context = feature["_token_word"], feature["_max_context"]
        best = None
        for i in np.argsort(-start_logits)[:n]:
            if token_word[i] < 0 or not max_context[i]:
                continue
            for j in np.argsort(-end_logits)[:n]:
                if token_word[j] < 0 or j < i or j - i + 1 > self.config.max_answer_length:
                    continue
                score = float(start_logits[i] + end_logits[j])
                if best is None or score > best[0]:
                    best = (score, token_word[i], token_word[j])
        return best

    def write_predictions(self, split: Split, predictions, folder: Path) -> Path:
        """The official formats: {id: answer text}, and for 2.0 {id: no-answer odds}."""
        answers, odds = predictions
        path = folder / f"predictions_{split.name}.json"
        atomic_write(path, json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
        if odds is not None:
            atomic_write(folder / f"null_odds_{split.name}.json", json.dumps(odds, indent=1) + "\n")
        return path

    def divergence(self, perturbed: torch.Tensor, clean: torch.Tensor, batch: dict) -> torch.Tensor:
        """Start and end distributions over the positions; padding cannot be chosen."""
        if is_packed(batch):  # [T, 2] -> [B, Lmax, 2]
            packing = Packing(batch["cu_seqlens"], batch["max_seqlen"], perturbed.shape[0])
            perturbed, clean, padding = packing.pad(perturbed), packing.pad(clean), ~packing.mask.unsqueeze(-1)
        else:
            padding = ~batch["attention_mask"].bool().unsqueeze(-1)

        def over_positions(logits):  # [B, L, 2] -> [B, 2, L]
            return logits.float().masked_fill(padding, -1e4).transpose(1, 2)
        return symmetric_kl(over_positions(perturbed), over_positions(clean), reduction="none")


def _max_context_window(starts: list[int], room: int, length: int, token: int) -> int:
    """The window start where ``token`` has the most context, min(left, right) + a small
    bonus for longer windows (the rule of the reference BERT code)."""
    best_score, best_start = -1.0, starts[0]
    for start in starts:
        end = min(start + room, length)
        if start <= token < end:
            score = min(token - start, end - 1 - token) + 0.01 * (end - start)
            if score > best_score:
                best_score, best_start = score, start
    return best_start
