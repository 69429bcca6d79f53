"""``python -m data_prep verify`` and ``python -m data_prep inspect``."""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deberta.atomic import atomic_write
from deberta.tokenizer import load_tokenizer

from .dataset import ShardedDataset, load_manifest
from .shard_format import MANIFEST, TOKENIZER_FOLDER, ShardIndex, describe_tokenizer, sha256_file


def verify(data_dir: str | Path, tokenizer: str | None = None, quick: bool = False) -> list[str]:
    """Everything wrong with an output folder of ``shard``; empty when it is intact.

    Checks each shard's presence, size and sha256 against the manifest, its index header
    against the manifest, and the tokenizer (the copy in the folder, the file it was made
    from if it is still there, and ``tokenizer`` if given) against the recorded sha256.
    """
    data_dir = Path(data_dir)
    try:
        manifest = load_manifest(data_dir)
    except (FileNotFoundError, ValueError) as error:
        return [str(error)]
    problems = []
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            problems += _verify_shard(data_dir, split, shard, manifest, quick)
        for total in ("documents", "tokens", "sequences"):
            if sum(s[total] for s in info["shards"]) != info[total]:
                problems.append(f"{data_dir / 'manifest.json'}: {split} {total} do not add up over its shards")
    problems += _verify_tokenizer(data_dir, manifest, tokenizer)
    return problems


def _verify_shard(data_dir: Path, split: str, shard: dict, manifest: dict, quick: bool) -> list[str]:
    problems = []
    for suffix, size_key, hash_key in ((".bin", "bytes", "sha256"), (".idx", "index_bytes", "index_sha256")):
        path = data_dir / f"{shard['name']}{suffix}"
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != shard[size_key]:
            problems.append(f"{path}: {size} bytes, the manifest says {shard[size_key]} "
                            f"({'truncated' if size < shard[size_key] else 'extended'})")
        elif not quick:
            dtype = np.dtype(manifest["dtype"]) if suffix == ".bin" else None
            digest, largest = _sha256_and_max(path, dtype)
            if digest != shard[hash_key]:
                problems.append(f"{path}: sha256 differs from the manifest (the file was altered)")
            if largest is not None and largest >= manifest["vocab_size"]:
                problems.append(f"{path}: holds token id {largest}, outside the vocabulary of "
                                f"{manifest['vocab_size']} (made with another tokenizer, or damaged)")
    index_path = data_dir / f"{shard['name']}.idx"
    if not problems:
        try:
            index = ShardIndex.read(index_path)
        except ValueError as error:
            return [str(error)]
        expected = {"seq_len": manifest["settings"]["seq_len"], "num_sequences": shard["sequences"],
                    "num_tokens": shard["tokens"], "num_documents": shard["documents"],
                    "first_sequence": shard["first_sequence"], "first_token": shard["first_token"],
                    "bin_bytes": shard["bytes"], "itemsize": np.dtype(manifest["dtype"]).itemsize}
        for field, value in expected.items():
            if getattr(index, field) != value:
                problems.append(f"{index_path}: {field} {getattr(index, field)}, the manifest says {value}")
    return problems


def _sha256_and_max(path: Path, dtype: np.dtype | None, block_bytes: int = 1 << 22) -> tuple[str, int | None]:
    """The file's sha256 and, for token ids of ``dtype``, the largest id: one read of the file."""
    digest, largest = hashlib.sha256(), None
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
            if dtype is not None and len(block) >= dtype.itemsize:
                ids = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
                largest = max(largest or 0, int(ids.max()))
    return digest.hexdigest(), largest


def _verify_tokenizer(data_dir: Path, manifest: dict, tokenizer: str | None) -> list[str]:
    recorded, problems = manifest["tokenizer"], []
    copy = data_dir / recorded.get("copy", TOKENIZER_FOLDER)
    for name, digest in recorded["files"].items():
        path = copy / name
        if not path.is_file():
            problems.append(f"{path}: missing (the tokenizer this data was made with)")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: sha256 differs from the manifest: not the tokenizer this data was made with")
    candidates = [tokenizer] if tokenizer else ([recorded["path"]] if os.path.exists(recorded["path"]) else [])
    for candidate in candidates:
        try:
            found = describe_tokenizer(candidate, load_tokenizer(candidate))["files"]
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"tokenizer {candidate}: {error}")
            continue
        if found != recorded["files"]:
            problems.append(f"tokenizer {candidate} does not match the manifest (sha256 "
                            f"{next(iter(found.values()))[:12]} vs {recorded['sha256'][:12]}): "
                            f"a model using it would read these token ids as other words")
    return problems


def inspect(data_dir: str | Path, decode: int = 0, split: str = "train") -> str:
    """Counts per split, input problems, and the first ``decode`` sequences as text."""
    manifest = load_manifest(data_dir)
    tokenizer = manifest["tokenizer"]
    lines = [f"{data_dir}: format {manifest['format']} v{manifest['format_version']}",
             f"tokenizer: {tokenizer['kind']} {tokenizer['path']} (sha256 {tokenizer['sha256'][:12]}), "
             f"vocab {manifest['vocab_size']}, ids {manifest['dtype']}",
             f"seq_len {manifest['settings']['seq_len']}, valid fraction {manifest['settings']['valid_fraction']}, "
             f"dedup {manifest['settings']['dedup']}",
             f"inputs: {len(manifest['inputs'])} files, {sum(i['bytes'] for i in manifest['inputs']) / 1e6:.1f} MB"]
    for name, info in manifest["splits"].items():
        size = sum(s["bytes"] for s in info["shards"])
        lines.append(f"{name}: {info['documents']:,} documents, {info['tokens']:,} tokens, "
                     f"{info['sequences']:,} sequences, {len(info['shards'])} shards, {size / 1e6:.1f} MB")
    counts = manifest["counts"]
    if manifest["settings"]["dedup"]:
        lines.append(f"duplicates removed: {counts['duplicates_removed']['documents']:,} documents, "
                     f"{counts['duplicates_removed']['tokens']:,} tokens")
    for kind, count in counts["problems"].items():
        lines.append(f"input problem {kind}: {count:,}")
    if decode:
        dataset = ShardedDataset(data_dir, split)
        reader = dataset.load_tokenizer()
        for i in range(min(decode, len(dataset))):
            ids = dataset[i]
            lines.append(f"--- {split} sequence {i} ({len(ids)} tokens) ---")
            lines.append(f"{reader.id_to_token(int(ids[0]))} {reader.decode(ids)} {reader.id_to_token(int(ids[-1]))}")
    return "\n".join(lines)


# --- the verified stamp ------------------------------------------------------------------
# A full check reads every byte: at the start of each of many pretraining restarts on a
# large corpus that is hours of I/O on every node. Once the shards match their manifest,
# a stamp beside the data records the state that was checked: the manifest's own bytes,
# and the size and mtime of every shard file. While all of these are unchanged, the check
# is not repeated; any rewrite of a file (or of the manifest) changes the key.
VERIFIED_STAMP = ".verified.json"


def shard_entries(manifest: dict) -> list[tuple[str, dict]]:
    """(split, shard record) of every shard, in manifest order."""
    return [(split, shard) for split, info in manifest["splits"].items() for shard in info["shards"]]


def stamp_key(data_dir: str | Path) -> str:
    """What a stamp vouches for: the manifest and every shard file's size and mtime."""
    data_dir = Path(data_dir)
    digest = hashlib.sha256((data_dir / MANIFEST).read_bytes())
    for _, shard in shard_entries(load_manifest(data_dir)):
        for suffix in (".bin", ".idx"):
            path = data_dir / f"{shard['name']}{suffix}"
            status = path.stat() if path.is_file() else None
            digest.update(f"{path.name} {status and status.st_size} {status and status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def stamp_paths(data_dir: str | Path, fallback_dir: str | Path | None = None) -> list[Path]:
    """Where a stamp may be: beside the data, or (data on a read-only file system) in ``fallback_dir``."""
    paths = [Path(data_dir) / VERIFIED_STAMP]
    if fallback_dir is not None:
        paths.append(Path(fallback_dir) / f"data{VERIFIED_STAMP}")
    return paths


def is_stamped(data_dir: str | Path, key: str, fallback_dir: str | Path | None = None) -> bool:
    for path in stamp_paths(data_dir, fallback_dir):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("key") == key:
                return True
        except (OSError, ValueError, AttributeError):
            continue  # no stamp there, or a damaged one: not vouched for
    return False


def write_stamp(data_dir: str | Path, key: str, fallback_dir: str | Path | None = None) -> Path | None:
    """Write the stamp beside the data, else in ``fallback_dir``; the path, or None if neither is writable."""
    record = json.dumps({"key": key, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "checked": "size, sha256 and index header of every shard"}, indent=1) + "\n"
    for path in stamp_paths(data_dir, fallback_dir):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, record)
            return path
        except OSError:
            continue
    return None


def verify_shards(data_dir: str | Path, manifest: dict, entries: list[tuple[str, dict]], threads: int = 1
                  ) -> list[str]:
    """The problems of some of the shards (size, sha256, index header, largest id): one reader's
    share, ``threads`` files at a time (hashing and numpy release the GIL on large blocks)."""
    def check(entry: tuple[str, dict]) -> list[str]:
        return _verify_shard(Path(data_dir), entry[0], entry[1], manifest, quick=False)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return [problem for problems in pool.map(check, entries) for problem in problems]
