"""A small English corpus that exists on every machine, for the example run.

    python -m pretrain.example_corpus OUTPUT_DIR     # prints the input pattern for data_prep

Uses the project's shared corpus (../shared/data/corpus next to the repository) when it
is there. Otherwise it writes text that ships with every Python installation: the Python
documentation topics in the standard library (pydoc_data, ~0.5 MB) and the descriptions
of the installed packages (their METADATA, usually several MB), one document per topic
or package, documents separated by blank lines.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus"


def _paragraphs(text: str) -> str:
    """One document: its paragraphs joined into lines, no blank lines inside."""
    lines = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n".join(line for line in lines if len(line) > 40)


def write_corpus(output: Path) -> Path:
    from pydoc_data.topics import topics

    output.mkdir(parents=True, exist_ok=True)
    documents = [_paragraphs(text) for text in topics.values()]
    for dist in importlib.metadata.distributions():
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        documents.append(_paragraphs(description))
    path = output / "python_docs.txt"
    path.write_text("\n\n".join(d for d in documents if d) + "\n", encoding="utf-8")
    return path


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m pretrain.example_corpus OUTPUT_DIR")
    if SHARED_CORPUS.is_dir() and any(SHARED_CORPUS.glob("*.txt")):
        print(f"{SHARED_CORPUS}/*.txt")
    else:
        path = write_corpus(Path(argv[0]))
        print(path)


if __name__ == "__main__":
    main()
