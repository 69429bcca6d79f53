"""Writes docs/benchmarks.md from bench/results/*.json, so that no figure is typed by hand.

    python -m bench.report                 # after running benchmarks: python -m bench.NAME ...
    python -m bench.report --check         # exit 1 if docs/benchmarks.md is not up to date

One section per benchmark, one table per results file, each with the command that produced
it, the machine, the date and the commit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import REPO, RESULTS

PAGE = REPO / "docs" / "benchmarks.md"

# Benchmarks in the order of the page, with what each measures and how it is started.
BENCHMARKS = {
    "main_job": ("The main job", "python -m bench.main_job",
                 "`bash pretrain/run_example.sh` end to end: its validation figures at the first and the last "
                 "evaluation (deterministic on CPU: a changed figure is a changed behaviour)."),
    "model_step": ("Model step", "python -m bench.model_step",
                   "Forward + backward of our DeBERTa against transformers' DebertaV2Model / "
                   "DebertaV2ForMaskedLM with the same config and input, each in its own process. The MLM "
                   "step computes our 128K-way output only at the targets; transformers scores every position."),
    "pretrain_step": ("Pretraining step", "python -m bench.pretrain_step",
                      "Forward, backward and AdamW of our MLM pretraining step (enhanced mask decoder included) "
                      "against transformers' DebertaV2ForMaskedLM of the same shape, alternating step by step."),
    "gpu_attention": ("GPU: our model and attention against the peers", "bash bench/gpu_check.sh",
                      "One training step (forward + backward, 15 % targets) per system, each in its own process, "
                      "bf16, sequence 512: transformers' DebertaV2ForMaskedLM eager, compiled and with "
                      "disentangled-flash against ours with each attention backend and compiled; row groups "
                      "v3-base MLM batch 32 (the headline), v3-base finetuning (below), v3-base RTD (generator "
                      "then discriminator; the peer built from DebertaV2ForMaskedLM and "
                      "DebertaV2ForTokenClassification), v3-large MLM and the 1.5B model (batch 8, activation "
                      "checkpointing, one GPU, no ZeRO); then the attention alone at 512 and 2048 against "
                      "flex_attention. Model TFLOP/s counts the same work for every system of a group, the "
                      "peers' (the output at every position), so it ranks as tokens/s does "
                      "(bench/gpu_attention.py).\n\n"
                      "The finetuning rows (group `v3-base-finetune SST-2` and `... RTE`): DeBERTa-v3-base "
                      "sequence classification, forward + backward + AdamW, bf16, batches of 32 whose lengths "
                      "are drawn from the token lengths of the SST-2 and RTE training files "
                      "(`bench/glue_lengths.json`, written by `python -m bench.glue_lengths` from "
                      "../shared/data/glue, so that the GPU machine needs no data), the same batches for every "
                      "system. transformers' DebertaV2ForSequenceClassification eager pads each batch to its "
                      "longest (as dynamic padding does); ours runs padded (`ours-sdpa`), packed with no padding "
                      "(`-unpadded`: cu_seqlens, as `finetune --unpadded`) on sdpa and on the fused Triton "
                      "kernels, and packed compiled (`--compile`). Tokens/s counts real tokens only, so the "
                      "padding a system skips shows as speed. MNLI is not among the data: RTE's sentence pairs "
                      "stand in as the pair distribution (its premises are longer than MNLI's). The lengths are "
                      "in pieces of the repository's test tokenizer (tests/assets/spm.model, 1000 pieces), about "
                      "twice as many as DeBERTa-v3's 128K vocabulary makes, so sequences are cut at 256, about "
                      "GLUE's usual 128 of a released model."),
    "data_prep": ("Data preparation", "python -m bench.data_prep",
                  "`python -m data_prep shard` end to end against raw SentencePiece encoding on the same text "
                  "and cores, and the peak memory of one process on a quarter and on all of the input."),
    "finetune_sst2": ("Finetuning SST-2", "python -m bench.finetune_sst2",
                      "Dev accuracy on SST-2 after a short CPU finetuning, with and without SiFT, against the "
                      "majority class."),
    "finetune_recipes": ("Finetuning with the default recipe", "python -m bench.finetune_recipes",
                         "The documented one-line command (`python -m finetune --task T --data_dir D --model M "
                         "--output_dir O`, with --seed) on the main job's model: the recipe it picks by itself "
                         "(finetune/recipes.py), 3 seeds, each run's best dev figure, the median and the spread."),
    "finetune_unpadded": ("Unpadded finetuning", "python -m bench.finetune_unpadded",
                          "Finetuning steps (forward, backward, AdamW) on batches drawn from real GLUE training "
                          "files, padded to the batch's longest against packed end to end (`--unpadded`), the same "
                          "batches alternating; tokens/s counts real tokens."),
    "kernel_resources": ("Fused attention kernels: compile-time resources", "python -m bench.kernel_resources",
                         "The three Triton kernels of the `triton` backend (forward, backward by key block, "
                         "backward by query block), built on a CPU machine with no GPU by Triton's compiler and "
                         "its bundled ptxas for sm_90 (H100/H200) and sm_80 (A100), bf16 with both relative "
                         "terms, dropout and a key mask (padded) or cu_seqlens (varlen): registers per thread, "
                         "bytes spilled to local memory, stack and shared memory, for the tiles `_blocks` picks "
                         "and, on the padded layout, a few alternatives. A kernel that runs out of its 255 "
                         "registers spills values to local memory (cached in L1/L2 but far slower than "
                         "registers), and the spill loads in its inner loop slow it down; these are compile-time "
                         "figures, though, and only a GPU run (`bash bench/gpu_check.sh`) measures speed."),
}

INTRO = """\
# Benchmarks

<!-- Generated by `python -m bench.report` from bench/results/*.json: do not edit by hand. -->

Every figure on this page was written by a benchmark script into `bench/results/*.json` and
rendered by `python -m bench.report`; each table names the command, the machine, the date
and the commit it came from. To add or refresh a figure, run the command (from the
repository root, the project installed) and then `python -m bench.report`.

Benchmarks run the reference implementation in the same run and report the ratio, so that
a slower or busier machine moves both sides. CPU step times on a shared 2-core machine vary
by about 20 % from run to run; the load average at the end of the run is recorded.
No GPU figure has been measured yet: every figure below comes from a CPU. `bash bench/gpu_check.sh`
takes them on a machine with a GPU in at most 8 minutes, headline first, each figure written
as soon as it is measured: tokens/s, model TFLOP/s and peak memory of transformers eager,
compiled and with disentangled-flash against ours with each attention backend (the fused
`triton` kernels included) and compiled, at v3-base MLM 512 bf16 batch 32, v3-base
finetuning on SST-2 and RTE token lengths (padded against packed, `--unpadded`, and
compiled), v3-base RTD, v3-large MLM and the 1.5B model; the attention alone at 512 and
2048; then the GPU tests and the full training step. The finetuning rows draw their batches'
lengths from `bench/glue_lengths.json`, token-length histograms of the SST-2 and RTE training
files (`python -m bench.glue_lengths` writes it from ../shared/data/glue, in the pieces of the
test tokenizer, about twice as many as DeBERTa-v3's), so the GPU machine needs no data. MNLI
is not among the data: RTE's sentence pairs stand in for its pairs.
"""


def machine_line(record: dict) -> str:
    m = record["machine"]
    parts = [f"{m['cpu']}, {m['cores']} cores" + (f", {m['memory_gb']} GB" if m.get("memory_gb") else "")]
    parts.append(f"GPU: {m['gpu']}" if m.get("gpu") else "no GPU")
    parts.append(f"torch {m['torch']}, Python {m['python']}")
    return "; ".join(parts)


def table(record: dict) -> list[str]:
    columns, rows = record["table"]["columns"], record["table"]["rows"]
    cell = lambda value: str(value).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def render(records: list[dict]) -> str:
    lines = [INTRO]
    by_name: dict[str, list[dict]] = {}
    for record in records:
        by_name.setdefault(record["benchmark"], []).append(record)
    names = [n for n in BENCHMARKS if n in by_name] + sorted(n for n in by_name if n not in BENCHMARKS)
    for name in names:
        heading, _, about = BENCHMARKS.get(name, (name, "", ""))
        lines += [f"## {heading}", ""]
        if about:
            lines += [about, ""]
        for record in sorted(by_name[name], key=lambda r: (r["machine"].get("gpu") or "", r["date"])):
            commit = record["commit"]
            lines += [f"**{record['title']}**", "",
                      f"- command: `{record['command']}`",
                      f"- machine: {machine_line(record)}",
                      f"- date: {record['date']}; commit `{commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}`"
                      + (f"; load average {record['load_average']} at the end (cores: {record['machine']['cores']})"
                         if record.get("load_average") is not None else ""),
                      ""]
            lines += table(record) + [""]
            lines += [note + "\n" for note in record.get("notes", [])]
    missing = [n for n in BENCHMARKS if n not in by_name]
    if missing:
        lines += ["## Not measured yet", "", "No results file in bench/results/ yet for:", ""]
        lines += [f"- {BENCHMARKS[n][0]}: `{BENCHMARKS[n][1]}`" for n in missing] + [""]
    return "\n".join(lines).rstrip() + "\n"


def load(folder: Path) -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder of results JSON files")
    parser.add_argument("--output", default=str(PAGE))
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    page = render(load(Path(args.results)))
    output = Path(args.output)
    if args.check:
        if not output.is_file() or output.read_text(encoding="utf-8") != page:
            print(f"{output} is not up to date: run python -m bench.report", file=sys.stderr)
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    print(f"wrote {output} from {len(load(Path(args.results)))} results file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
