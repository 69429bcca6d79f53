"""Two ways to run the optimisation, behind one interface the trainer uses.

``LocalEngine``: one process and device, AdamW, warm-up + linear decay, gradient
clipping, bf16 autocast or fp16 with a gradient scaler (CUDA only).
``DeepSpeedEngine``: ``deepspeed.initialize`` with the JSON config (ZeRO stage, precision,
loss scaling); the same AdamW and schedule unless the config names its own.

Both count micro-batches: ``step()`` updates the weights on every
``gradient_accumulation_steps``-th call and returns whether it did.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for matrices only: decaying biases and LayerNorm gains only hurts."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(warmup_steps: int, total_steps: int):
    """Multiplier of the peak learning rate: 0 -> 1 over the warm-up, then linearly to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def build_optimizer(model, config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)


class LocalEngine:
    def __init__(self, model: torch.nn.Module, config, total_steps: int, warmup_steps: int):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
        self.module = model.to(self.device)
        self.config = config
        self.optimizer = build_optimizer(model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup_steps, total_steps))
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.accumulation = config.gradient_accumulation_steps
        self.micro_steps = 0

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward(self, batch: dict):
        with self.autocast():
            return self.module(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.accumulation
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> bool:
        self.micro_steps += 1
        if self.micro_steps % self.accumulation:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.max_grad_norm)
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                logger.warning("fp16 overflow: step skipped, loss scale lowered to %g", self.scaler.get_scale())
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return True

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self, mode: bool = True):
        self.module.train(mode)

    def gathered_parameters(self):
        return contextlib.nullcontext()


def init_distributed() -> None:
    """Let ``python -m finetune --ds_config ...`` run as a world of one, without a launcher."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    import deepspeed

    deepspeed.init_distributed()


def read_ds_config(path: str, config, world_size: int) -> dict:
    """The DeepSpeed JSON with its "auto" values taken from the flags."""
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    flags = {"train_micro_batch_size_per_gpu": config.batch_size,
             "gradient_accumulation_steps": config.gradient_accumulation_steps,
             "gradient_clipping": config.max_grad_norm}
    for key, value in flags.items():
        if values.get(key, "auto") == "auto":
            values[key] = value
    micro, accumulation = values["train_micro_batch_size_per_gpu"], values["gradient_accumulation_steps"]
    # train_batch_size = micro batch x accumulation x data-parallel ranks, e.g. 32 x 1 x 8 = 256.
    if values.get("train_batch_size", "auto") == "auto":
        values["train_batch_size"] = micro * accumulation * world_size
    for section in ("fp16", "bf16"):
        if values.get(section, {}).get("enabled") == "auto":
            values[section]["enabled"] = False
    return values


class DeepSpeedEngine:
    def __init__(self, model: torch.nn.Module, config, total_steps: int, warmup_steps: int, ds_config: dict):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        self.ds_config = ds_config
        optimizer = None if "optimizer" in ds_config else build_optimizer(model, config)
        scheduler = None if "scheduler" in ds_config else (
            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(warmup_steps, total_steps)))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    model_parameters=None if optimizer else model.parameters(),
                                                    config=ds_config)
        self.module = self.engine.module
        self.device = torch.device(get_accelerator().device_name(self.engine.local_rank))

    def forward(self, batch: dict):
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary

    @property
    def learning_rate(self) -> float:
        return self.engine.get_lr()[0]

    def train(self, mode: bool = True):
        self.engine.train(mode)

    def gathered_parameters(self):
        """ZeRO-3 keeps shards: gather the full weights (on every rank) to save them."""
        if self.ds_config.get("zero_optimization", {}).get("stage", 0) != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
