"""What the ranks must agree on, carried by one all-reduce and one host transfer.

A step's metrics (loss sums, counts, histograms: anything that adds up over micro-batches
and ranks) stay on the device while the micro-batches run; at the end of the step they
are packed into one float64 vector together with two flags, a non-finite loss on some
rank and a stop request (SIGTERM) on some rank, summed over the ranks in one collective
and copied to the host once. Every rank then takes the same decision before the update:
a non-finite loss or a batch of bad inputs (``BAD_INPUT``, counted on the host as the
batches are built) stops them all, naming the step, and a stop request saves and exits.
"""
from __future__ import annotations

from typing import Mapping, Union

import torch
import torch.distributed as dist

from deberta.errors import UserError

Number = Union[torch.Tensor, float, int]
NONFINITE, STOP = "_nonfinite", "_stop"
# Inputs that cannot be right (token ids outside the vocabulary), counted by the code that
# builds the batches on the host; every rank records it in every step, 0 when all is well.
BAD_INPUT = "_bad_input"


class NonFiniteLoss(UserError, RuntimeError):
    """Raised on every rank together when a loss was not finite on any of them."""


class BadInput(UserError):
    """Raised on every rank together when some rank's batch held inputs that cannot be right."""


class StepTotals:
    """Sums of named metric tensors over the micro-batches of one step, kept on the device;
    Python numbers (counts, seconds, flags) are summed on the host. Neither waits: a number
    made into a device tensor would be a copy that the host waits for, every micro-batch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.numbers: dict[str, float] = {}

    def add(self, values: Mapping[str, Number]) -> None:
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):  # a Python or NumPy number
                self.numbers[name] = self.numbers.get(name, 0.0) + float(value)
                continue
            value = value.detach().to(self.device, torch.float64).reshape(-1)
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def add_loss(self, loss: torch.Tensor) -> None:
        """Count a non-finite loss without waiting for the device."""
        self.add({NONFINITE: (~torch.isfinite(loss.detach())).any()})

    def reduce(self, stop_requested: bool = False) -> dict[str, Union[float, torch.Tensor]]:
        """Sum over ranks (one collective, one copy to the host): scalars come back as floats,
        vectors as host tensors."""
        self.add({STOP: float(stop_requested), NONFINITE: 0.0})
        tensor_names, number_names = sorted(self.sums), sorted(self.numbers)
        sizes = [self.sums[name].numel() for name in tensor_names]
        numbers = torch.tensor([self.numbers[name] for name in number_names], dtype=torch.float64)
        if self.device.type == "cuda":
            numbers = numbers.pin_memory()  # so that the copy below does not wait either
        packed = torch.cat([*(self.sums[name] for name in tensor_names),
                            numbers.to(self.device, non_blocking=True)])
        if dist.is_initialized():
            dist.all_reduce(packed)
        host = packed.tolist()  # the one place the host waits for the device
        self.sums, self.numbers = {}, {}
        totals: dict[str, Union[float, torch.Tensor]] = {}
        offset = 0
        for name, size in zip(tensor_names, sizes):
            part = host[offset:offset + size]
            totals[name] = part[0] if size == 1 else torch.tensor(part, dtype=torch.float64)
            offset += size
        for name, value in zip(number_names, host[offset:]):
            totals[name] = totals[name] + value if name in totals else value
        return totals


class StepAgreement:
    """What the code running one optimizer step is handed: it ``record``s metric tensors as
    micro-batches run, and calls ``agree`` before each update. ``agree`` sums everything
    recorded since the last call over the ranks (one collective, one host copy), raises
    ``NonFiniteLoss`` on every rank together, and adds the totals to ``result``. A step with
    one optimizer agrees once; one with two optimizers updated one after the other agrees
    before each update."""

    def __init__(self, device: torch.device, step: int, precision: str, advice: str, stop_requested=lambda: False):
        self.totals = StepTotals(device)
        self.step, self.precision, self.advice = step, precision, advice
        self.stop_requested = stop_requested
        self.result: dict[str, torch.Tensor] = {}

    def record(self, metrics: Mapping[str, Number]) -> None:
        """Metric tensors that add up; a "loss" among them is checked for non-finite values."""
        if "loss" in metrics:
            self.totals.add_loss(torch.as_tensor(metrics["loss"]))
        self.totals.add(metrics)

    def agree(self) -> dict[str, torch.Tensor]:
        reduced = self.totals.reduce(self.stop_requested())
        if float(reduced.get(BAD_INPUT, 0)):
            raise BadInput(f"step {self.step}: {int(reduced[BAD_INPUT])} sequence(s) with token ids outside the "
                           f"vocabulary; stopped before the update on every rank")
        check_finite(reduced, self.step, self.precision, self.advice)
        for name, value in reduced.items():
            self.result[name] = self.result[name] + value if name in self.result else value
        return reduced


def check_finite(totals: Mapping[str, torch.Tensor], step: int, precision: str, advice: str) -> None:
    """fp32/bf16: a non-finite loss in any micro-batch on any rank stops every rank before the
    update. fp16: the loss scaler skips the step instead (DeepSpeed counts it)."""
    if float(totals[NONFINITE]) and precision != "fp16":
        raise NonFiniteLoss(f"non-finite loss in step {step} ({precision}) on "
                            f"{int(totals[NONFINITE])} micro-batch(es); stopped before the update on every "
                            f"rank. {advice}")


def stop_requested(totals: Mapping[str, torch.Tensor]) -> bool:
    return bool(float(totals[STOP]))
