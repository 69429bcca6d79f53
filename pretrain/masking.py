"""Whole-word n-gram masking for MLM and for the RTD generator.

For one packed sequence:
1. tokens are grouped into words (a word starts at a token the tokenizer marks as a
   word start); special tokens are never masked;
2. words are grouped into spans of n consecutive words, n drawn from 1..max_ngram with
   P(n) proportional to 1/n (max_ngram=1, the official default, is whole-word masking);
3. spans are visited in a random order and taken while the masked token count stays
   within round(mask_prob x real tokens), e.g. round(0.15 x 510) = 76 of a 512-token
   sequence (at least one token);
4. each chosen token becomes [MASK] with p=0.8, a random ordinary token with p=0.1, and
   stays itself with p=0.1; its label is the original id, every other label is -100.

The random draws of sample i come from a generator seeded with (seed, stream, i), so the
masking of a sample is a function of (seed, i): independent of ranks, workers, epochs
seen before and of resuming.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deberta.cli import option

IGNORE = -100


@dataclass
class MaskingConfig:
    mask_prob: float = option(0.15, "fraction of real tokens that become targets")
    replace_with_mask: float = option(0.8, "of the targets: -> [MASK]")
    replace_with_random: float = option(0.1, "of the targets: -> a random ordinary token; the rest stay")
    max_ngram: int = option(1, "spans of 1..max_ngram whole words; 1 = whole-word masking")
    whole_word: bool = option(True, "false: every token is its own word")

    def __post_init__(self):
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob={self.mask_prob} must be in (0, 1)")
        if not (0.0 <= self.replace_with_mask and 0.0 <= self.replace_with_random
                and self.replace_with_mask + self.replace_with_random <= 1.0):
            raise ValueError(f"replace_with_mask={self.replace_with_mask} and replace_with_random="
                             f"{self.replace_with_random} must be >= 0 and sum to at most 1")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram={self.max_ngram} must be >= 1")


class Masker:
    """Masks one sequence of token ids; ``word_start`` and the special ids come from the tokenizer."""

    def __init__(self, config: MaskingConfig, tokenizer, seed: int):
        self.config = config
        self.seed = seed
        self.mask_id = tokenizer.mask_token_id
        vocab = tokenizer.vocab_size
        special = sorted(set(tokenizer.special_ids.values()))
        self.special = np.zeros(vocab, dtype=bool)
        self.special[special] = True
        if config.whole_word:
            self.word_start = np.fromiter((tokenizer.is_word_start(i) for i in range(vocab)), dtype=bool,
                                          count=vocab)
        else:
            self.word_start = np.ones(vocab, dtype=bool)
        self.ordinary_ids = np.flatnonzero(~self.special)
        ngrams = np.arange(1, config.max_ngram + 1)
        self.ngram_sizes, self.ngram_probs = ngrams, (1.0 / ngrams) / (1.0 / ngrams).sum()

    def rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, index])

    def __call__(self, ids: np.ndarray, index: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels) of sample ``index``; stream 0 = train, 1 = valid."""
        rng = self.rng(index, stream)
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        maskable = ~self.special[ids]
        positions = np.flatnonzero(maskable)
        if positions.size == 0:
            return ids.copy(), labels
        budget = max(1, int(round(positions.size * self.config.mask_prob)))

        # Words over the maskable positions: a new word at each word start, and after a gap
        # (a special token in between).
        starts = self.word_start[ids[positions]]
        starts[0] = True
        starts[1:] |= np.diff(positions) > 1
        word_begin = np.flatnonzero(starts)
        word_end = np.append(word_begin[1:], positions.size)
        n_words = word_begin.size

        # Spans of n consecutive words, P(n) ~ 1/n, laid end to end over the sequence.
        if self.config.max_ngram > 1:
            sizes = rng.choice(self.ngram_sizes, size=n_words, p=self.ngram_probs)
        else:
            sizes = np.ones(n_words, dtype=np.int64)
        span_end = np.minimum(np.cumsum(sizes), n_words)
        span_end = span_end[: np.searchsorted(span_end, n_words) + 1]
        span_begin = np.concatenate(([0], span_end[:-1]))
        token_begin, token_end = word_begin[span_begin], word_end[span_end - 1]

        # Spans in a random order, taken while the total stays within the budget; a first
        # span longer than the whole budget is cut to it.
        order = rng.permutation(span_begin.size)
        total = np.cumsum(token_end[order] - token_begin[order])
        taken = order[: np.searchsorted(total, budget, side="right")]
        chosen = np.zeros(positions.size, dtype=bool)
        if taken.size == 0:
            chosen[token_begin[order[0]]: token_begin[order[0]] + budget] = True
        for k in taken:
            chosen[token_begin[k]: token_end[k]] = True

        targets = positions[chosen]
        labels[targets] = ids[targets]
        masked = ids.copy()
        action = rng.random(targets.size)
        to_mask = action < self.config.replace_with_mask
        to_random = (action >= self.config.replace_with_mask) & \
                    (action < self.config.replace_with_mask + self.config.replace_with_random)
        masked[targets[to_mask]] = self.mask_id
        masked[targets[to_random]] = rng.choice(self.ordinary_ids, size=int(to_random.sum()))
        return masked, labels
