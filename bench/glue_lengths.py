"""Token-length histograms of GLUE training files, for benchmarks on machines without the data.

    python -m bench.glue_lengths                     # rewrites bench/glue_lengths.json
    python -m bench.glue_lengths --tokenizer path/to/spm.model --output /tmp/lengths.json

The GPU benchmark (bench/gpu_attention.py, its finetuning group) runs where only the
repository is copied, not ../shared/data, so it draws its batches' lengths from this
committed file: for each training file, how many examples have each length in tokens,
``[CLS] first [SEP]`` or ``[CLS] first [SEP] second [SEP]`` as the finetuning tasks build
them (``Tokenizer.build_inputs``), not truncated (the benchmark cuts at its own maximum).
Counts only: no text.

The tokenizer is the one bench/finetune_unpadded.py uses, tests/assets/spm.model, the only
one in the repository: a 1000-piece SentencePiece vocabulary that cuts words about twice as
finely as DeBERTa-v3's 128K one, so these sequences are about twice as long as a released
model's. Give a released model's spm.model with --tokenizer to count in its pieces.

MNLI is not among the data (../shared/data/glue has SST-2 and RTE only): RTE's sentence
pairs stand in as the pair distribution. MNLI's premises are single sentences, RTE's often
several (news text), so these pairs run longer than MNLI's would; no MNLI length figure is
quoted here, none having been measured with this tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import Counter
from pathlib import Path

from bench.common import REPO, command_line

LENGTHS_FILE = REPO / "bench" / "glue_lengths.json"
GLUE = REPO.parent / "shared" / "data" / "glue"
DEFAULT_TOKENIZER = REPO / "tests" / "assets" / "spm.model"
# name: (training file under the GLUE folder, its text columns, what it stands for)
DISTRIBUTIONS = {
    "SST-2": ("SST-2/train.tsv", ("sentence",), "single sentences"),
    "RTE": ("RTE/train.tsv", ("sentence1", "sentence2"),
            "sentence pairs, standing in for MNLI (absent from the data); premises longer than MNLI's"),
}


def histogram(path: Path, columns, tokenizer) -> Counter:
    """{length in tokens, special tokens included: number of rows} of one table."""
    from finetune.data import read_table

    lengths = Counter()
    for row in read_table(path):
        segments = [tokenizer.encode(str(row.get(path, column))) for column in columns]
        inputs = tokenizer.build_inputs(segments[0], segments[1] if len(segments) > 1 else None)
        lengths[len(inputs["input_ids"])] += 1
    return lengths


def measure(glue: Path, tokenizer_path: Path, command: str) -> dict:
    from deberta import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    record = {"tokenizer": describe_path(tokenizer_path), "vocab_size": tokenizer.vocab_size,
              "command": command, "distributions": {}}
    for name, (relative, columns, described) in DISTRIBUTIONS.items():
        counts = histogram(glue / relative, columns, tokenizer)
        lengths = sorted(counts.elements())
        record["distributions"][name] = {
            "file": describe_path(glue / relative), "columns": list(columns), "described": described,
            "examples": len(lengths), "mean": round(statistics.mean(lengths), 2),
            "median": statistics.median_low(lengths), "longest": lengths[-1],
            "counts": {str(length): counts[length] for length in sorted(counts)}}
    return record


def describe_path(path: Path) -> str:
    """The path from the repository root (tests/assets/..., ../shared/data/...) where it is
    near, so that the file does not name this machine's folders. Links are not followed:
    a checkout beside a link to the shared data names it as ../shared too."""
    path = Path(os.path.abspath(path))
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    return f"../{path.relative_to(REPO.parent)}" if path.is_relative_to(REPO.parent) else str(path)


def load(path: Path = LENGTHS_FILE) -> dict[str, dict[int, int]]:
    """{distribution: {length: count}} from the committed file."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return {name: {int(length): count for length, count in entry["counts"].items()}
            for name, entry in record["distributions"].items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue", default=str(GLUE), help="folder with SST-2/train.tsv and RTE/train.tsv")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="SentencePiece model (or model folder)")
    parser.add_argument("--output", default=str(LENGTHS_FILE))
    args = parser.parse_args(argv)
    glue = Path(args.glue)
    for relative, _, _ in DISTRIBUTIONS.values():
        if not (glue / relative).is_file():
            parser.error(f"--glue: {glue / relative} not found; give the folder holding SST-2/ and RTE/")
    record = measure(glue, Path(args.tokenizer), command_line("bench.glue_lengths", argv))
    Path(args.output).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for name, entry in record["distributions"].items():
        print(f"{name}: {entry['examples']} examples, mean {entry['mean']} tokens, median {entry['median']}, "
              f"longest {entry['longest']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
