"""N-gram masking for MLM and for the RTD generator, a new mask in every epoch.

For one packed sequence:
1. tokens are grouped into units; special tokens are never masked. A unit is one token
   (subword-level masking) or, with ``whole_word``, one word (a word starts at a token
   the tokenizer marks as a word start). ``whole_word auto`` (the default) groups words
   only when ``max_ngram > 1``, as the official masker does (``NGramMaskGenerator`` in
   the authors' ``mlm_task.py``): its default, ``max_ngram 1``, masks subwords;
2. units are grouped into spans of n consecutive units, n drawn from 1..max_ngram with
   P(n) proportional to 1/n (the official distribution);
3. spans are visited in a random order and taken while the masked token count stays
   within round(mask_prob x real tokens), e.g. round(0.15 x 510) = 76 of a 512-token
   sequence (at least one token). Unlike the official selection (one span per window of
   about 1/mask_prob units, taken from the front until the budget is spent, so that the
   tail of a long sequence is masked less), every part of a sequence is masked alike;
   docs/pretraining.md compares the two;
4. each chosen token becomes [MASK] with p=replace_with_mask (0.8), a random ordinary
   token with p=replace_with_random (0.1), and stays itself otherwise (0.1); its label is
   the original id, every other label is -100. The RTD generator's default is [MASK]
   only (1.0, 0.0), as the official RTD task (``Objective.masking_defaults``).

The random draws of sample i in epoch e come from a generator seeded with
(seed, stream, e, i): a new mask on every visit, as the authors' data set draws one, yet a
function of (seed, i, e) only, independent of ranks, workers and of resuming. Validation
(stream 1) always uses epoch 0: the same masks at every evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from deberta.cli import option

IGNORE = -100


@dataclass
class MaskingConfig:
    mask_prob: float = option(0.15, "fraction of real tokens that become targets")
    replace_with_mask: float = option(0.8, "of the targets: -> [MASK]")
    replace_with_random: float = option(0.1, "of the targets: -> a random ordinary token; the rest stay")
    max_ngram: int = option(1, "spans of 1..max_ngram units (tokens, or words: see whole_word); P(n) ~ 1/n")
    whole_word: Union[bool, str] = option("auto", "auto|true|false: mask whole words (true), single tokens "
                                                  "(false), or whole words only when max_ngram > 1 (auto, "
                                                  "the official masker)")
    max_preds_per_seq: int = option(0, "MLM outputs per sequence, a fixed number so that every step has the same "
                                       "shapes (the authors' max_preds_per_seq); 0: the most targets the masker "
                                       "picks in a sequence, round(mask_prob x seq_len); -1: exactly the targets "
                                       "(shapes that change every step, counted on the host)")

    def __post_init__(self):
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob={self.mask_prob} must be in (0, 1)")
        if not (0.0 <= self.replace_with_mask and 0.0 <= self.replace_with_random
                and self.replace_with_mask + self.replace_with_random <= 1.0):
            raise ValueError(f"replace_with_mask={self.replace_with_mask} and replace_with_random="
                             f"{self.replace_with_random} must be >= 0 and sum to at most 1")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram={self.max_ngram} must be >= 1")
        if self.max_preds_per_seq < -1:
            raise ValueError(f"max_preds_per_seq={self.max_preds_per_seq} must be >= 1, or 0 (from mask_prob and "
                             f"the sequence length) or -1 (exactly the targets)")
        word = {"true": "true", "yes": "true", "on": "true", "false": "false", "no": "false", "off": "false",
                "auto": "auto"}.get(str(self.whole_word).lower())
        if word is None:
            raise ValueError(f"whole_word={self.whole_word!r}; allowed: auto, true, false")
        self.whole_word = word

    @property
    def groups_words(self) -> bool:
        """Whether units are whole words (else single tokens)."""
        return self.whole_word == "true" or (self.whole_word == "auto" and self.max_ngram > 1)

    def max_targets(self, seq_len: int) -> int:
        """The most targets ``Masker`` picks in a sequence of ``seq_len`` tokens: its budget,
        round(mask_prob x maskable tokens), grows with the maskable tokens, of which there
        are at most ``seq_len``, and the chosen spans never exceed it."""
        return max(1, int(round(seq_len * self.mask_prob)))

    def max_predictions(self, seq_len: int) -> int | None:
        """The fixed number of MLM outputs per sequence (None: exactly the targets)."""
        if self.max_preds_per_seq == -1:
            return None
        bound = self.max_targets(seq_len)
        if 0 < self.max_preds_per_seq < bound:
            raise ValueError(f"max_preds_per_seq={self.max_preds_per_seq} is below the {bound} targets a "
                             f"{seq_len}-token sequence can have at mask_prob={self.mask_prob}: some targets would "
                             f"not be predicted; set it to {bound} or more, or 0 for exactly {bound}")
        return self.max_preds_per_seq or bound


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
        if config.groups_words:
            self.word_start = np.fromiter((tokenizer.is_word_start(i) for i in range(vocab)), dtype=bool,
                                          count=vocab)
        else:
            self.word_start = np.ones(vocab, dtype=bool)
        self.ordinary_ids = np.flatnonzero(~self.special)
        ngrams = np.arange(1, config.max_ngram + 1)
        self.ngram_sizes, self.ngram_probs = ngrams, (1.0 / ngrams) / (1.0 / ngrams).sum()

    def rng(self, index: int, stream: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, epoch, index])

    def __call__(self, ids: np.ndarray, index: int, stream: int = 0, epoch: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels) of sample ``index`` in ``epoch``; stream 0 = train, 1 = valid."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        rng = self.rng(index, stream, epoch)
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        maskable = ~self.special[ids]
        positions = np.flatnonzero(maskable)
        if positions.size == 0:
            return ids.copy(), labels
        budget = max(1, int(round(positions.size * self.config.mask_prob)))

        # Units over the maskable positions: a new one at each word start (at every token
        # without word grouping), and after a gap (a special token in between).
        starts = self.word_start[ids[positions]]
        starts[0] = True
        starts[1:] |= np.diff(positions) > 1
        word_begin = np.flatnonzero(starts)
        word_end = np.append(word_begin[1:], positions.size)
        n_words = word_begin.size

        # Spans of n consecutive units, P(n) ~ 1/n, laid end to end over the sequence.
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
