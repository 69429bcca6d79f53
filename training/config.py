"""The settings that pretraining and finetuning share, with the same names in both.

Fields left unset (0, -1, "auto", None) take the DeepSpeed JSON's value, then a default
(see ``training.ds_config``); the precedence of every source is in ``deberta/cli.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from deberta.cli import option

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up and linear decay to 0 at the last step (``adam_bias_correction``
    false: without Adam's bias correction, as the authors' XAdam)."""
    lr: float = option(1e-4, "peak learning rate, reached after the warm-up", aliases=["learning_rate"])
    warmup_steps: int = option(0, "optimizer steps of linear warm-up from 0 (0: use --warmup_ratio)")
    warmup_ratio: float = option(0.0, "warm-up as a fraction of all steps, when --warmup_steps is 0")
    weight_decay: float = option(0.01, "decoupled weight decay of every matrix (GDES delta included); "
                                       "never of biases and LayerNorm weights")
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(1e-6, "Adam epsilon", aliases=["adam_epsilon"])
    adam_bias_correction: bool = option(True, "Adam's bias correction of both moments; the authors' optimizer "
                                              "has none (DeBERTa/optims/xadam.py): false reproduces it")
    clip_grad: Optional[float] = option(None, "global gradient-norm clipping, 0 disables (unset: the DeepSpeed "
                                              "JSON's gradient_clipping, else 1.0)", aliases=["max_grad_norm"])

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        for name in ("warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"clip_grad={self.clip_grad} must be >= 0 (0 disables clipping)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be a fraction in [0, 1)")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            raise ValueError(f"adam betas ({self.adam_beta1}, {self.adam_beta2}) must be in [0, 1), "
                             f"adam_eps={self.adam_eps} > 0")

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps or int(self.warmup_ratio * total_steps)


@dataclass
class EngineConfig:
    """How the DeepSpeed engine runs: its JSON, batch sizes, precision and ZeRO stage.

    Global batch = micro x accumulation x ranks, e.g. 2048 = 8 x 1 x 256 GPUs for the 1.5B
    model on 16 DGX-2 nodes; give any two (or take them from the JSON), the third follows.
    """
    ds_config: Optional[str] = option(None, "DeepSpeed JSON config (ZeRO stage, precision, batch sizes); "
                                            "unset: no ZeRO, settings from the flags")
    global_batch_size: int = option(0, "sequences per optimizer step over all ranks (0: from the others)")
    micro_batch_size: int = option(0, "sequences per rank per forward pass (0: from the DeepSpeed JSON)",
                                   aliases=["batch_size"])
    grad_accum: int = option(0, "micro-batches per optimizer step (0: from the DeepSpeed JSON, else derived)",
                             aliases=["gradient_accumulation_steps"])
    precision: str = option("auto", "auto|fp32|bf16|fp16; auto: the DeepSpeed JSON's, else bf16 on GPUs that "
                                    "have it, fp16 on older GPUs, fp32 on CPU")
    zero_stage: int = option(-1, "ZeRO stage 0-3 (-1: the DeepSpeed JSON's, else 0)")
    compile: bool = option(False, "torch.compile every encoder layer (one graph for all, none of them broken); "
                                  "embeddings, heads and losses stay eager (docs/pretraining.md#compiled-steps)")
    compile_backend: str = option("inductor", "torch.compile backend: inductor (generated kernels), or e.g. "
                                              "aot_eager (the same graphs run by PyTorch's own kernels, for checks)")
    compile_mode: str = option("default", f"torch.compile mode: {'|'.join(COMPILE_MODES)}")

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; allowed: {PRECISIONS}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r}; allowed: {COMPILE_MODES}")
        if not self.compile_backend:
            raise ValueError("compile_backend is empty; give a torch.compile backend such as inductor")
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}; allowed: 0, 1, 2, 3 (or -1: from the DeepSpeed config)")
        for name in ("global_batch_size", "micro_batch_size", "grad_accum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0: from the DeepSpeed config)")
