"""Reading prepared data: ``ShardedDataset``, one split of an output folder of ``shard``."""
from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np

from deberta.errors import InputError
from deberta.tokenizer import Tokenizer, load_tokenizer

from .shard_format import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, TOKENIZER_FOLDER, WORK_FOLDER, Packing,
                           ShardIndex, describe_tokenizer)


class DataDirError(InputError, ValueError):
    """An output folder of ``shard`` that cannot be read as it is; the message names the file."""


def load_manifest(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        unfinished = (data_dir / WORK_FOLDER).is_dir()
        raise FileNotFoundError(f"{path} not found: " + (
            "the shard job did not finish; run the same command again to resume it" if unfinished
            else "not an output folder of `python -m data_prep shard`"))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataDirError(f"{path}: damaged ({error}); write the data again (`python -m data_prep "
                         f"shard ... --overwrite`)") from None
    if manifest.get("format") != FORMAT_NAME:
        raise DataDirError(f"{path}: not a data_prep manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataDirError(f"{path}: format version {manifest.get('format_version')}, this code reads "
                         f"version {FORMAT_VERSION}")
    return manifest


class ShardedDataset:
    """The packed sequences of one split, memory-mapped: ``ds[i]`` is a read-only view.

    Sequence ``i`` is ``[CLS] t_1 .. t_k [SEP]`` with ``k = seq_len - 2`` except in the last
    sequence of the split. Documents run on from one sequence into the next, as in the
    official DeBERTa data. Safe to pickle (e.g. into DataLoader workers): the memory maps
    are opened again lazily in each process.
    """

    def __init__(self, data_dir: str | Path, split: str = "train"):
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        if split not in self.manifest["splits"]:
            raise DataDirError(f"no split {split!r} in {self.data_dir} (has {', '.join(self.manifest['splits'])})")
        self.split = split
        info = self.manifest["splits"][split]
        self.seq_len = self.manifest["settings"]["seq_len"]
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.vocab_size = self.manifest["vocab_size"]
        self.special_ids = self.manifest["special_ids"]
        self.packing = Packing(self.seq_len, self.special_ids["[CLS]"], self.special_ids["[SEP]"])
        self.num_tokens, self.num_documents = info["tokens"], info["documents"]
        self._num_sequences = info["sequences"]
        self._shards = info["shards"]
        self._first_sequences = np.array([s["first_sequence"] for s in self._shards], dtype=np.int64)
        for shard in self._shards:
            path = self.data_dir / f"{shard['name']}.bin"
            size = path.stat().st_size if path.is_file() else None
            if size != shard["bytes"]:
                raise DataDirError(f"{path}: {'missing' if size is None else f'{size} bytes'}, the manifest says "
                                 f"{shard['bytes']}; run `python -m data_prep verify {self.data_dir}`")
        self._maps: list[np.ndarray | None] = [None] * len(self._shards)
        self._document_starts: np.ndarray | None = None

    def __len__(self) -> int:
        return self._num_sequences

    def __getitem__(self, i) -> np.ndarray:
        i = operator.index(i)
        if i < 0:
            i += self._num_sequences
        if not 0 <= i < self._num_sequences:
            raise IndexError(f"sequence {i} out of range for {self._num_sequences} sequences")
        shard = int(np.searchsorted(self._first_sequences, i, side="right")) - 1
        start = (i - int(self._first_sequences[shard])) * self.seq_len
        return self._map(shard)[start:start + self.seq_len]

    def locate(self, i: int) -> tuple[Path, int]:
        """(the ``.bin`` file that holds sequence ``i``, its position in that file), for messages."""
        shard = int(np.searchsorted(self._first_sequences, i, side="right")) - 1
        return self.data_dir / f"{self._shards[shard]['name']}.bin", i - int(self._first_sequences[shard])

    def _map(self, shard: int) -> np.ndarray:
        if self._maps[shard] is None:
            self._maps[shard] = np.memmap(self.data_dir / f"{self._shards[shard]['name']}.bin",
                                          dtype=self.dtype, mode="r")
        return self._maps[shard]

    def __getstate__(self):
        return {**self.__dict__, "_maps": [None] * len(self._shards), "_document_starts": None}

    # --- documents ----------------------------------------------------------------
    def tokens(self, begin: int, end: int) -> np.ndarray:
        """Tokens ``begin:end`` of the split's stream (documents back to back, no specials)."""
        width = self.packing.text_per_sequence
        parts = []
        for sequence in range(begin // width, -(-end // width)):
            offset = sequence * width
            text = self[sequence][1:-1]
            parts.append(text[max(begin - offset, 0):min(end - offset, width)])
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)

    def document_starts(self) -> np.ndarray:
        """Stream offset where each document begins (8 bytes per document, loaded on first use)."""
        if self._document_starts is None:
            starts = [ShardIndex.read(self.data_dir / f"{s['name']}.idx").document_starts for s in self._shards]
            self._document_starts = np.concatenate(starts) if starts else np.empty(0, dtype="<u8")
        return self._document_starts

    def document(self, d: int) -> np.ndarray:
        """Token ids of document ``d`` (no [CLS]/[SEP]); a copy, as it may span sequences."""
        starts = self.document_starts()
        if not 0 <= d < len(starts):
            raise IndexError(f"document {d} out of range for {len(starts)} documents")
        end = int(starts[d + 1]) if d + 1 < len(starts) else self.num_tokens
        return self.tokens(int(starts[d]), end)

    # --- tokenizer ----------------------------------------------------------------
    @property
    def tokenizer_dir(self) -> Path:
        return self.data_dir / TOKENIZER_FOLDER

    def load_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_dir)

    def check_tokenizer(self, tokenizer_path: str | Path) -> None:
        """Raise unless ``tokenizer_path`` is the tokenizer this data was made with: a model
        trained with another vocabulary would read these ids as other words."""
        recorded = self.manifest["tokenizer"]
        tokenizer = load_tokenizer(tokenizer_path)
        found = describe_tokenizer(str(tokenizer_path), tokenizer)["files"]
        if found != recorded["files"] or tokenizer.vocab_size != self.vocab_size:
            raise DataDirError(f"tokenizer {tokenizer_path} (vocab {tokenizer.vocab_size}, sha256 "
                             f"{next(iter(found.values()))[:12]}) is not the one {self.data_dir} was made with "
                             f"({recorded['path']}, vocab {self.vocab_size}, sha256 {recorded['sha256'][:12]})")
