"""DeepSpeed pretraining checkpoint -> model folder (native, or Hugging Face).

    python -m pretrain.convert runs/v3/checkpoints --output models/v3 [--step N] [--format native|hf]

Reads a complete checkpoint (the newest, or ``--step N``) of any ZeRO stage: the fp32
master weights are gathered from the per-rank partitions. The checkpoint carries the
model configs and the tokenizer, so nothing else is needed.

MLM runs give one masked-LM folder. RTD runs give the discriminator in OUTPUT (the model
to finetune; with GDES its word embedding is the generator's table plus the learned delta,
folded into one plain table) and the generator in OUTPUT/generator.

``--format hf`` writes folders that ``transformers.AutoModel*.from_pretrained`` loads:
MLM and generator as DebertaV2ForMaskedLM (transformers has no enhanced mask decoder: its
MLM logits differ from ours when emd_layers > 0, its encoder outputs are the same), the
discriminator as DebertaV2Model (transformers has no RTD head class).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from deberta import (DebertaConfig, DebertaForMaskedLM, DebertaForReplacedTokenDetection, build_model, export_hf,
                     load_tokenizer, save_model)

from .checkpoint import CHECKPOINT_FILE, CheckpointManager, tag_of

GENERATOR_FOLDER = "generator"


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


def fp32_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full fp32 weights of the wrapped module (names as in the objective module)."""
    if any(checkpoint.glob("*optim_states.pt")) and any(checkpoint.glob("*zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    else:  # no ZeRO: rank 0's module weights are complete
        state = torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in state.items()}


def _take(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load(model: torch.nn.Module, state: dict, what: str) -> torch.nn.Module:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{what}: checkpoint weights do not match the model; missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    return model.eval()


def build_models(info: dict, state: dict) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(main model, generator or None) with the checkpoint's weights."""
    if info["objective"] == "mlm":
        config = DebertaConfig.from_dict(info["model_config"])
        return _load(DebertaForMaskedLM(config), _take(state, "model."), "MLM model"), None
    generator = _load(DebertaForMaskedLM(DebertaConfig.from_dict(info["generator_config"])),
                      _take(state, "generator."), "generator")
    disc_state = _take(state, "discriminator.")
    word = "deberta.embeddings.word_embeddings."
    shared = generator.deberta.embeddings.word_embeddings.weight.detach()
    if info["embedding_sharing"] == "gdes":  # fold: E_disc = E_gen + delta
        disc_state[word + "weight"] = shared + disc_state.pop(word + "delta")
    elif info["embedding_sharing"] == "shared":
        disc_state[word + "weight"] = shared.clone()
    discriminator = _load(DebertaForReplacedTokenDetection(DebertaConfig.from_dict(info["discriminator_config"])),
                          disc_state, "discriminator")
    return discriminator, generator


def convert(checkpoint_dir: str | Path, output: str | Path, step: int | None = None, fmt: str = "native") -> Path:
    checkpoint = find_checkpoint(Path(checkpoint_dir), step)
    info = json.loads((checkpoint / CHECKPOINT_FILE).read_text(encoding="utf-8"))
    model_info = info["trainer"]["model"]
    tokenizer = load_tokenizer(checkpoint / "tokenizer")
    model, generator = build_models(model_info, fp32_state_dict(checkpoint))
    output = Path(output)
    provenance = {"pretraining": {"checkpoint": str(checkpoint.resolve()), "step": info["step"],
                                  "objective": model_info["objective"],
                                  "embedding_sharing": model_info.get("embedding_sharing")}}
    if fmt == "native":
        save_model(model, output, tokenizer, extra=provenance)
        if generator is not None:
            save_model(generator, output / GENERATOR_FOLDER, tokenizer, extra=provenance)
    else:
        if isinstance(model, DebertaForReplacedTokenDetection):
            backbone = build_model(model.config, "backbone")
            backbone.load_state_dict(model.deberta.state_dict())
            model = backbone
        export_hf(model, output, tokenizer)
        if generator is not None:
            export_hf(generator, output / GENERATOR_FOLDER, tokenizer)
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", help="the run's checkpoints folder (OUTPUT_DIR/checkpoints)")
    parser.add_argument("--output", required=True, help="model folder to write")
    parser.add_argument("--step", type=int, help="convert this step (default: the newest complete checkpoint)")
    parser.add_argument("--format", choices=("native", "hf"), default="native")
    args = parser.parse_args(argv)
    try:
        output = convert(args.checkpoints, args.output, args.step, args.format)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {output}" + (f" (generator: {output / GENERATOR_FOLDER})" if (output / GENERATOR_FOLDER).is_dir()
                               else ""))


if __name__ == "__main__":
    main()
