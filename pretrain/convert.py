"""DeepSpeed pretraining checkpoint -> model folder (native, or Hugging Face).

    python -m pretrain.convert runs/v3/checkpoints --output models/v3 [--step N] [--format native|hf]

Reads a complete checkpoint (the newest, or ``--step N``) of any ZeRO stage: the fp32
master weights are gathered from the per-rank partitions. The checkpoint carries the
model configs and the tokenizer, so nothing else is needed.

The objective decides what is written (``Objective.export_models``): MLM runs give one
masked-LM folder; RTD runs give the discriminator in OUTPUT (the model to finetune; with
GDES its word embedding is the generator's table plus the learned delta, folded into one
plain table) and the generator in OUTPUT/generator.

``--format hf`` writes folders that ``transformers.AutoModel*.from_pretrained`` loads:
MLM and generator as DebertaV2ForMaskedLM (transformers has no enhanced mask decoder: its
MLM logits differ from ours when emd_layers > 0, its encoder outputs are the same), the
discriminator as DebertaV2Model (transformers has no RTD head class).
"""
from __future__ import annotations

import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from deberta import build_model, export_hf, load_tokenizer, save_model
from deberta.cli import Command, option, required
from deberta.errors import InputError, run_command
from deberta.model import DebertaPreTrained
from training.checkpoint import CHECKPOINT_FILE, CheckpointManager, tag_of

from .objectives import Objective, objective_class


def find_checkpoint(directory: Path, step: int | None) -> Path:
    manager = CheckpointManager(directory, keep=1, rank=0, world=1)
    if step is None:
        path = manager.latest()
        if path is None:
            raise FileNotFoundError(f"{directory}: no complete checkpoint (a folder step_N with {CHECKPOINT_FILE})")
        return path
    path = directory / tag_of(step)
    if not (path / CHECKPOINT_FILE).is_file():
        found = [p.name for p in manager.complete()]
        raise FileNotFoundError(f"{path}: not a complete checkpoint; complete ones: {found or 'none'}")
    return path


def fp32_state_dict(checkpoint: Path, engine_names) -> dict[str, torch.Tensor]:
    """The objective's full fp32 weights, gathered from each of its engines' files (an engine
    named "" wraps the whole objective; another wraps the sub-module of that name)."""
    state = {}
    for name in engine_names:
        prefix = f"{name}." if name else ""
        state.update({prefix + k: v for k, v in engine_state_dict(checkpoint / name if name else checkpoint).items()})
    return state


def engine_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """One engine's module weights in fp32, from any ZeRO stage."""
    if any(folder.glob("*optim_states.pt")) and any(folder.glob("*zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    else:  # no ZeRO: rank 0's module weights are complete
        state = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in state.items()}


def load_objective(checkpoint: Path, model_info: dict) -> Objective:
    """The run's objective, rebuilt from the checkpoint's description, with its weights."""
    objective = objective_class(model_info["objective"]).from_description(model_info)
    state = fp32_state_dict(checkpoint, objective.engine_modules())
    result = objective.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{checkpoint}: weights do not match the {model_info['objective']} objective; missing "
                           f"{result.missing_keys}, unexpected {result.unexpected_keys}")
    return objective.eval()


def convert(checkpoint_dir: str | Path, output: str | Path, step: int | None = None,
            fmt: str = "native") -> dict[str, Path]:
    """Write the objective's model folders; returns them by name ("" is ``output`` itself)."""
    checkpoint = find_checkpoint(Path(checkpoint_dir), step)
    manager = CheckpointManager(checkpoint.parent, keep=1, rank=0, world=1)
    model_info = manager.saved_trainer_state(checkpoint)["model"]  # its files checked against their sizes
    info = json.loads((checkpoint / CHECKPOINT_FILE).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(checkpoint / "tokenizer")
    output = Path(output)
    provenance = {"pretraining": {"checkpoint": str(checkpoint.resolve()), "step": info["step"],
                                  "objective": model_info["objective"],
                                  "embedding_sharing": model_info.get("embedding_sharing")}}
    try:
        objective = load_objective(checkpoint, model_info)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:  # files that do not read back
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise manager.damaged(checkpoint, f"a file does not read back ({type(error).__name__}: {detail})") from error
    written = {}
    for folder, model in objective.export_models().items():
        if fmt == "native":
            written[folder] = save_model(model, output / folder, tokenizer, extra=provenance)
        else:
            written[folder] = export_hf(hf_exportable(model), output / folder, tokenizer)
    return written


def hf_exportable(model: DebertaPreTrained) -> DebertaPreTrained:
    """transformers has no replaced-token-detection class: such a model goes out as its backbone."""
    if model.head != "replaced_token_detection":
        return model
    backbone = build_model(model.config, "backbone")
    backbone.load_state_dict(model.deberta.state_dict())
    return backbone


@dataclass
class ConvertConfig:
    checkpoints: str = required("the run's checkpoints folder (OUTPUT_DIR/checkpoints)")
    output: str = required("model folder to write")
    step: Optional[int] = option(None, "convert this step (default: the newest complete checkpoint)")
    format: str = option("native", "native|hf")

    def __post_init__(self):
        if self.format not in ("native", "hf"):
            raise ValueError(f"format={self.format!r}; allowed: native, hf")


def main(argv=None) -> None:
    """Exit codes: 0 written, 1 no usable checkpoint (named), 2 a bad command line."""
    sys.exit(run_command(_convert_command, _positional(argv), also=(RuntimeError, ValueError), also_exit_code=1))


def _convert_command(argv: list[str]) -> int:
    command = Command("deberta-pretrain-convert", __doc__.split("\n\n")[0], {"convert": ConvertConfig})
    args = command.parse(argv)["convert"]
    written = convert(args.checkpoints, args.output, args.step, args.format)
    for name, folder in written.items():
        print(f"wrote {folder}" + (f" ({name})" if name else ""))
    return 0


def _positional(argv) -> list[str]:
    """The checkpoints folder may come first without its flag, as it always has."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--checkpoints", argv[0], *argv[1:]]
    return argv


if __name__ == "__main__":
    main()
