"""``python -m data_prep shard``: from raw text files to packed token-id shards.

Stages, each a set of tasks whose outputs are files, so that a killed job resumes where
it stopped (work in ``OUTPUT/.work``, removed when the manifest is written):

0. plan (rank 0): find the inputs, cut them into pieces, copy the tokenizer;
1. encode: each piece is read, normalised, encoded and split into train/valid;
2. dedup (``--dedup``): copies of a document are found by digest partition and dropped;
3. write: each split's token stream is packed into sequences and cut into shards;
4. manifest (rank 0): counts, sizes and sha256 of every shard, written last.

Tasks go to ranks by a function of the task list alone and every output is a function of
the corpus and the settings, so the bytes written do not depend on ranks or workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deberta.cli import option, required
from deberta.errors import UserError, debug_requested, describe_os_error, report
from deberta.tokenizer import Tokenizer, load_tokenizer

from . import dedup
from .encoding import DIGEST_BYTES, SPLITS, EncodeJob, encode_piece, piece_path
from .inputs import Piece, ProblemLog, find_inputs, plan_pieces
from .parallel import Progress, Workers, connect, share_of_rank
from .shard_format import (FORMAT_NAME, FORMAT_VERSION, INDEX_VERSION, MANIFEST, TOKENIZER_FOLDER,
                           WORK_FOLDER, Packing, commit, describe_tokenizer, sha256_file,
                           smallest_uint_dtype, temporary_name, write_atomically)
from .writing import PieceSpan, ShardJob, write_shard_job

PACKING_RULE = ("documents of a split concatenated in corpus order, cut every seq_len - 2 "
                "tokens, each cut wrapped as [CLS] ... [SEP] (official DeBERTa packing)")


class PrepError(UserError):
    """A problem the user can fix; its message says how."""


@dataclass
class ShardConfig:
    inputs: list[str] = required("file pattern: .txt, .jsonl, .parquet (each optionally .gz) or a datasets "
                                 "folder; repeat --input for more", aliases=("input",))
    tokenizer: str = required("spm.model, vocab.json or a tokenizer folder")
    output: str = required("folder for shards and manifest.json")
    seq_len: int = option(512, "tokens per sequence incl. [CLS] and [SEP]")
    valid_fraction: float = option(0.005, "share of documents (chosen by content hash) in the valid split")
    dedup: bool = option(False, "drop exact duplicate documents")
    workers: int = option(1, "processes per rank")
    shard_size_mb: float = option(256.0, "size of each .bin")
    piece_size_mb: float = option(64.0, "plain .txt/.jsonl files are read in pieces of this size, in parallel")
    text_field: str = option("text", "field of .jsonl/.parquet/datasets records")
    allow_unreadable: bool = option(False, "finish without input files that cannot be read, listing them "
                                           "in the manifest")
    overwrite: bool = option(False, "replace an output made with other settings")
    progress_interval: float = option(10.0, "seconds between progress lines")

    def __post_init__(self):
        Packing(self.seq_len, 1, 2)          # checks seq_len
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"--valid_fraction {self.valid_fraction} is not in [0, 1)")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers} must be at least 1")
        if self.shard_size_mb <= 0 or self.piece_size_mb <= 0:
            raise ValueError("--shard_size_mb and --piece_size_mb must be positive")

    def output_settings(self) -> dict:
        """The settings that determine the bytes written (workers and pieces do not)."""
        return {"seq_len": self.seq_len, "valid_fraction": self.valid_fraction, "dedup": self.dedup,
                "shard_size_mb": self.shard_size_mb, "text_field": self.text_field,
                "packing": PACKING_RULE}


# --- tokenizer ------------------------------------------------------------------------

def _copy_tokenizer(tokenizer: Tokenizer, folder: Path, hashes: dict[str, str]) -> None:
    """Into the output folder, so that the data carries the tokenizer that made it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in tokenizer.files().items():
        target = folder / name
        if target.is_file() and sha256_file(target) == hashes[name]:
            continue
        temporary = temporary_name(target)
        shutil.copyfile(source, temporary)
        commit(temporary, target)


# --- stage 0: plan --------------------------------------------------------------------

def _remove_outputs(output: Path) -> None:
    """Only what this command writes: never the user's other files."""
    for path in output.iterdir():
        if path.name in (MANIFEST, WORK_FOLDER, TOKENIZER_FOLDER) or path.suffix in (".bin", ".idx") \
                or ".tmp." in path.name:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _remove_temporaries(output: Path) -> None:
    for folder in (output, output / TOKENIZER_FOLDER):
        for path in folder.glob("*.tmp.*"):
            path.unlink(missing_ok=True)


def _difference(found: dict, wanted: dict) -> str:
    keys = sorted({*found, *wanted}, key=str)
    return ", ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now" for k in keys
                     if found.get(k) != wanted.get(k))


def plan(config: ShardConfig) -> dict:
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise PrepError(f"--output {output} is a file; give a folder (new, or one written by this command)")
    tokenizer = load_tokenizer(config.tokenizer)
    inputs = find_inputs(config.inputs)
    fingerprint = {"settings": config.output_settings(),
                   "tokenizer": describe_tokenizer(config.tokenizer, tokenizer),
                   "inputs": [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p, _, _ in inputs]}
    if config.overwrite and output.is_dir():
        _remove_outputs(output)
    # A finished output must match everything; unfinished work only the settings and the
    # tokenizer: its pieces are named after their files, so inputs may be repaired, added
    # or removed between runs and what is still valid is kept.
    for name, compared in ((MANIFEST, fingerprint.keys()), (f"{WORK_FOLDER}/plan.json", ("settings", "tokenizer"))):
        if (output / name).is_file():
            found = json.loads((output / name).read_text())
            found, wanted = {key: found[key] for key in compared}, {key: fingerprint[key] for key in compared}
            if found != wanted:
                raise PrepError(f"{output / name} was made from other inputs or settings "
                                f"({_difference(found, wanted)}); choose another --output, or pass "
                                f"--overwrite to replace it")
            if name == MANIFEST:
                return {"complete": True}
    work = output / WORK_FOLDER
    (work / "pieces").mkdir(parents=True, exist_ok=True)
    _copy_tokenizer(tokenizer, output / TOKENIZER_FOLDER, fingerprint["tokenizer"]["files"])
    plan_path = work / "plan.json"
    if not plan_path.is_file():
        write_atomically(plan_path, json.dumps({key: fingerprint[key] for key in ("settings", "tokenizer")},
                                               indent=1).encode())
    pieces = [asdict(p) for p in plan_pieces(inputs, int(config.piece_size_mb * 2**20))]
    return {"complete": False, "fingerprint": fingerprint, "pieces": pieces,
            "vocab_size": tokenizer.vocab_size, "special_ids": tokenizer.special_ids,
            "dtype": smallest_uint_dtype(tokenizer.vocab_size).str}


# --- the job --------------------------------------------------------------------------

@dataclass
class _Job:
    """What every rank knows while the stages run."""

    config: ShardConfig
    comm: object
    plan: dict
    workers: Workers
    output: Path = field(init=False)
    work: Path = field(init=False)

    def __post_init__(self):
        self.output = Path(self.config.output)
        self.work = self.output / WORK_FOLDER

    def say(self, message: str) -> None:
        if self.comm.rank == 0:
            print(message, file=sys.stderr, flush=True)

    def on_rank_zero(self, compute):
        """``compute()`` on rank 0, its value (or its PrepError) on every rank."""
        value = None
        if self.comm.rank == 0:
            try:
                value = ("ok", compute())
            except (PrepError, FileNotFoundError, ValueError) as error:
                value = ("error", str(error))
        status, value = self.comm.bcast(value)
        if status == "error":
            raise PrepError(value)
        return value

    def run_share(self, stage: str, function, tasks: list, weights: list[float]) -> list | None:
        """This rank's share of ``tasks``, run in its workers; all ranks' results on rank 0.

        ``weights`` estimate each task's cost (bytes); they balance the ranks and drive the
        progress line."""
        weight_of = {id(task): weight for task, weight in zip(tasks, weights)}
        mine = share_of_rank(tasks, weights, self.comm.rank, self.comm.size)
        progress = Progress(stage, len(mine), sum(weight_of[id(t)] for t in mine), self.comm.rank,
                            self.comm.size, self.config.progress_interval)
        results = []
        for task, result in self.workers.run(function, mine):
            results.append(result)
            progress.update(weight_of[id(task)])
        gathered = self.comm.gather(results)
        return [r for rank_results in gathered for r in rank_results] if gathered is not None else None


def run_shard(config: ShardConfig) -> int:
    comm = connect()
    try:
        # Helpers of a single process are forked (no second start-up); an MPI rank's are spawned.
        with Workers(config.workers, "fork" if comm.size == 1 else "spawn") as workers:
            job = _Job(config, comm, None, workers)
            job.plan = job.on_rank_zero(lambda: plan(config))
            if job.plan["complete"]:
                job.say(f"{config.output}: already complete ({MANIFEST} matches these inputs and settings)")
                if comm.rank == 0:
                    shutil.rmtree(job.work, ignore_errors=True)
                return 0
            return _run_stages(job)
    except PrepError:
        raise  # met by every rank alike: deberta.errors.run_command reports it once, from rank 0
    except Exception as error:
        if comm.size > 1:       # the other ranks would wait for this one forever
            if isinstance(error, (UserError, OSError)):  # this rank's own (a full disk): one line, named
                local = UserError(describe_os_error(error) if isinstance(error, OSError) else str(error))
                local.every_rank = False
                report(local, debug_requested(sys.argv))
            else:
                traceback.print_exc()
            comm.abort(1)
        raise


def _run_stages(job: _Job) -> int:
    config, plan_ = job.config, job.plan
    pieces = [Piece(**p) for p in plan_["pieces"]]
    markers = _encode(job, pieces)
    dedup_dir, dropped = _deduplicate(job, markers) if config.dedup else (None, {})
    shards = _write_shards(job, markers, dedup_dir, dropped)
    job.on_rank_zero(lambda: _write_manifest(job, markers, dropped, shards))
    return 0


def _encode(job: _Job, pieces: list[Piece]) -> dict:
    config = job.config
    pending = job.on_rank_zero(
        lambda: [p.index for p in pieces if not piece_path(job.work, p.key, "json").is_file()])
    jobs = [EncodeJob(pieces[i], str(job.work), str(job.output / TOKENIZER_FOLDER), config.text_field,
                      config.valid_fraction, job.plan["dtype"]) for i in pending]
    mine = share_of_rank(jobs, [j.piece.size for j in jobs], job.comm.rank, job.comm.size)
    progress = Progress("encode", len(mine), sum(j.piece.size for j in mine), job.comm.rank,
                        job.comm.size, config.progress_interval)
    failures = []
    for _, result in job.workers.run(encode_piece, mine):
        if "error" in result:
            failures.append(result)
            print(f"data_prep shard: cannot read {result['path']}: {result['error']}", file=sys.stderr, flush=True)
            progress.update(0)
        else:
            progress.update(result["piece"]["size"], sum(result["tokens"].values()))
    gathered = job.comm.gather(failures)

    def collect() -> dict:
        failed = [f for rank_failures in gathered for f in rank_failures]
        markers = {}
        for piece in pieces:
            marker = piece_path(job.work, piece.key, "json")
            if marker.is_file():
                markers[piece.index] = json.loads(marker.read_text())
        missing = [p for p in pieces if p.index not in markers]
        if missing and not config.allow_unreadable:
            named = "\n  ".join(sorted({f"{f['path']}: {f['error']}" for f in failed} or
                                       {p.path for p in missing}))
            raise PrepError(f"{len(missing)} of {len(pieces)} input pieces could not be read:\n  {named}\n"
                            f"The other pieces are kept: fix or remove these files and run the same "
                            f"command again (it resumes), or pass --allow_unreadable to leave them out.")
        if markers and not any(sum(m["documents"].values()) for m in markers.values()):
            raise PrepError(f"no document in {len(markers)} input piece(s): {_why_empty(markers.values())}. Fix the "
                            f"inputs and run the same command again, or change a setting and add --overwrite")
        return {"markers": markers, "failed": failed,
                "missing": [{"path": p.path, "start": p.start, "end": p.end} for p in missing]}

    return job.on_rank_zero(collect)


def _why_empty(markers) -> str:
    """The most frequent problem of inputs that gave no document, with an example."""
    problems = ProblemLog()
    for marker in markers:
        problems.merge(marker["problems"])
    if not problems.counts:
        return "the inputs hold no text"
    kind = max(problems.counts, key=problems.counts.get)
    example = next(e for e in problems.examples if e["kind"] == kind)
    hint = " (see --text_field)" if kind == "missing_text_field" else ""
    return f"{problems.counts[kind]:,} x {kind}{hint}, e.g. {example['where']}: {example['detail']}"


def _ordered(markers: dict) -> list[dict]:
    return [markers[i] for i in sorted(markers)]


def _deduplicate(job: _Job, state: dict) -> tuple[str, dict]:
    """The folder of the dedup results, and dropped document and token counts per piece key."""
    markers = _ordered(state["markers"])
    keys = [m["key"] for m in markers]
    dedup_dir = job.work / f"dedup-{hashlib.blake2b(' '.join(keys).encode(), digest_size=10).hexdigest()}"
    first_ordinals, totals = [], {split: 0 for split in SPLITS}
    for marker in markers:
        first_ordinals.append(dict(totals))
        for split in SPLITS:
            totals[split] += marker["documents"][split]
    partitions = {split: dedup.num_partitions(totals[split]) for split in SPLITS}

    def partition_jobs() -> list:
        dedup_dir.mkdir(exist_ok=True)
        jobs = []
        for split in SPLITS:
            spans = tuple(dedup.PieceDocuments(m["key"], first[split], m["documents"][split])
                          for m, first in zip(markers, first_ordinals))
            jobs += [dedup.PartitionJob(str(job.work), str(dedup_dir), split, p, partitions[split], spans)
                     for p in range(partitions[split]) if not dedup.partition_path(dedup_dir, split, p).is_file()]
        return jobs

    jobs = job.on_rank_zero(partition_jobs)
    job.run_share("dedup", dedup.find_duplicates, jobs,
                  [DIGEST_BYTES * sum(s.documents for s in j.pieces) / j.num_partitions for j in jobs])

    def apply_jobs() -> list:
        return [(dedup.ApplyJob(str(job.work), str(dedup_dir), m["key"], partitions, first),
                 sum(m["documents"].values()))
                for m, first in zip(markers, first_ordinals)
                if not dedup.dedup_marker_path(dedup_dir, m["key"]).is_file()]

    jobs_and_documents = job.on_rank_zero(apply_jobs)
    job.run_share("dedup-apply", dedup.apply_duplicates, [j for j, _ in jobs_and_documents],
                  [DIGEST_BYTES * documents for _, documents in jobs_and_documents])
    return str(dedup_dir), job.on_rank_zero(
        lambda: {key: json.loads(dedup.dedup_marker_path(dedup_dir, key).read_text()) for key in keys})


def _shard_jobs(job: _Job, state: dict, dedup_dir: str | None, dropped: dict) -> list[ShardJob]:
    config, plan_ = job.config, job.plan
    packing = Packing(config.seq_len, plan_["special_ids"]["[CLS]"], plan_["special_ids"]["[SEP]"])
    itemsize = np.dtype(plan_["dtype"]).itemsize
    per_shard = max(1, int(config.shard_size_mb * 2**20) // (config.seq_len * itemsize))
    jobs = []
    for split in SPLITS:
        spans, stream_start = [], 0
        for marker in _ordered(state["markers"]):
            kept = marker["tokens"][split] - (dropped[marker["key"]][split]["tokens"] if dropped else 0)
            if kept:
                spans.append(PieceSpan(marker["key"], stream_start, kept))
                stream_start += kept
        total_sequences = packing.num_sequences(stream_start)
        for number, first in enumerate(range(0, total_sequences, per_shard)):
            count = min(per_shard, total_sequences - first)
            first_token = first * packing.text_per_sequence
            tokens = min(count * packing.text_per_sequence, stream_start - first_token)
            overlapping = tuple(s for s in spans
                                if s.stream_start < first_token + tokens and s.stream_start + s.tokens > first_token)
            jobs.append(ShardJob(str(job.work), str(job.output), f"{split}-{number:05d}", split, plan_["dtype"],
                                 packing, first, count, first_token, tokens, overlapping, dedup_dir))
    return jobs


def _plan_shards(job: _Job, state: dict, dedup_dir: str | None, dropped: dict) -> list[ShardJob]:
    """The shard jobs; shards left by an earlier run for another set of pieces are removed,
    since their content would not match (the plan of the shards written is kept in
    ``.work/shards.json``)."""
    jobs = _shard_jobs(job, state, dedup_dir, dropped)
    described = json.dumps([asdict(j) for j in jobs]).encode()
    plan_path = job.work / "shards.json"
    if not plan_path.is_file() or plan_path.read_bytes() != described:
        for path in [*job.output.glob("*.bin"), *job.output.glob("*.idx")]:
            path.unlink()
        write_atomically(plan_path, described)
    return jobs


def _write_shards(job: _Job, state: dict, dedup_dir: str | None, dropped: dict) -> list[dict] | None:
    jobs = job.on_rank_zero(lambda: _plan_shards(job, state, dedup_dir, dropped))
    itemsize = np.dtype(job.plan["dtype"]).itemsize
    records = job.run_share("write", write_shard_job, jobs, [j.num_tokens * itemsize for j in jobs])
    return sorted(records, key=lambda r: r["name"]) if records is not None else None


# --- stage 4: manifest ----------------------------------------------------------------

def _write_manifest(job: _Job, state: dict, dropped: dict, records: list[dict]) -> None:
    plan_, markers = job.plan, _ordered(state["markers"])
    problems = ProblemLog(max_examples=100)
    for marker in markers:
        problems.merge(marker["problems"])
    for failure in state["failed"]:
        problems.add("unreadable_file", failure["path"], failure["error"])
    splits = {}
    for split in SPLITS:
        shards = [{k: v for k, v in r.items()} for r in records if r["name"].startswith(f"{split}-")]
        splits[split] = {"documents": sum(s["documents"] for s in shards),
                         "tokens": sum(s["tokens"] for s in shards),
                         "sequences": sum(s["sequences"] for s in shards), "shards": shards}
    duplicates = {"documents": sum(d[s]["documents"] for d in dropped.values() for s in SPLITS),
                  "tokens": sum(d[s]["tokens"] for d in dropped.values() for s in SPLITS)}
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "index_version": INDEX_VERSION,
        **plan_["fingerprint"],
        "vocab_size": plan_["vocab_size"], "special_ids": plan_["special_ids"],
        "dtype": np.dtype(plan_["dtype"]).name,
        "counts": {"documents_read": sum(sum(m["documents"].values()) for m in markers),
                   "text_bytes": sum(m["text_bytes"] for m in markers),
                   "duplicates_removed": duplicates, "problems": problems.to_json()["counts"]},
        "skipped_pieces": state["missing"],
        "problems": problems.to_json()["examples"],
        "splits": splits,
    }
    _remove_temporaries(job.output)
    write_atomically(job.output / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    shutil.rmtree(job.work, ignore_errors=True)
    _print_summary(job.output, manifest)


def _print_summary(output: Path, manifest: dict) -> None:
    lines = [f"data_prep shard: wrote {output}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split}: {len(info['shards'])} shards, {info['documents']:,} documents, "
                     f"{info['tokens']:,} tokens, {info['sequences']:,} sequences of <= {manifest['settings']['seq_len']}")
    duplicates = manifest["counts"]["duplicates_removed"]
    if manifest["settings"]["dedup"]:
        lines.append(f"  duplicates removed: {duplicates['documents']:,} documents, {duplicates['tokens']:,} tokens")
    for kind, count in manifest["counts"]["problems"].items():
        lines.append(f"  input problem {kind}: {count:,}")
    for example in manifest["problems"][:20]:
        lines.append(f"    {example['kind']}: {example['where']} {example['detail']}")
    if manifest["skipped_pieces"]:
        lines.append(f"  left out (unreadable, --allow_unreadable): "
                     f"{', '.join(sorted({p['path'] for p in manifest['skipped_pieces']}))}")
    print("\n".join(lines), file=sys.stderr, flush=True)
