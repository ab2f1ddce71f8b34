"""Non-finite numbers in training: a stage whose loss, weights or BatchNorm statistics turn inf or NaN stops with
one error instead of finishing (and saving) broken weights.

The loss is noted every step on its device, without a host sync, and read at the loop's check points (each log
row, and before anything is saved or read from the backbone). Before a save, a probe or guard reading, and at the
end, every floating tensor of the method (weights, BatchNorm running statistics, the queue) and the optimizer's
momentum is scanned too: one isfinite per tensor, one sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from hpt import distributed
from hpt.errors import HptError
from hpt.pretrain.config import StageConfig

FAILED_FILE = "failed.json"  # in the stage folder: the record of a stage that stopped on non-finite numbers


class TrainingDiverged(HptError):
    """A stage's loss, weights or BatchNorm statistics went non-finite; the message names the step and the fix."""

    def __init__(self, message: str, step: int, found: str, last_good_step: int | None) -> None:
        super().__init__(message)
        self.step, self.found, self.last_good_step = step, found, last_good_step


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, str] | None:
    """(name, 'nan' or 'inf') of the first floating tensor holding a non-finite value, or None when all are finite."""
    tensors = [(name, t.detach()) for name, t in named if t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if bool(finite.all()):
        return None
    name, tensor = tensors[int((~finite).nonzero()[0, 0])]
    return name, "nan" if bool(torch.isnan(tensor).any()) else "inf"


def _described(name: str) -> str:
    module, _, kind = name.rpartition(".")
    if kind in ("running_mean", "running_var"):
        return f"the BatchNorm {kind} of {module}"
    return f"the weight {name}" if kind in ("weight", "bias") else name


class FiniteCheck:
    """Stops a stage at its first non-finite loss (noted per step) or tensor (scanned at check points)."""

    def __init__(self, config: StageConfig, model: nn.Module, optimizer: torch.optim.Optimizer, stage_dir: Path,
                 device: torch.device) -> None:
        self.config, self.model, self.optimizer, self.state_dir = config, model, optimizer, stage_dir / "state"
        self._first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: every loss so far was finite
        self._bad_loss = torch.zeros((), device=device)

    def note_loss(self, step: int, loss: torch.Tensor) -> None:
        """Remember `step` (1-based) if its loss is the first non-finite one; no host sync."""
        first = ~torch.isfinite(loss.detach().float()) & (self._first_bad == 0)
        self._first_bad.masked_fill_(first, step)
        self._bad_loss.copy_(torch.where(first, loss.detach().float(), self._bad_loss))

    def find(self, step: int, scan: bool) -> tuple[int, str] | None:
        """(step, what) of the first non-finite number: a noted loss, else (scan) a tensor now; None when all are."""
        first = int(self._first_bad.item())
        if first:
            return first, f"the loss is {float(self._bad_loss.item())}"
        if not scan:
            return None
        names = {id(param): name for name, param in self.model.named_parameters()}
        momentum = ((f"the SGD momentum of {names.get(id(param), 'a parameter')}", state["momentum_buffer"])
                    for param, state in self.optimizer.state.items() if "momentum_buffer" in state)
        weights = ((_described(name), tensor) for name, tensor in self.model.state_dict().items())
        found = first_nonfinite([*weights, *momentum])
        return None if found is None else (step, f"{found[0]} holds {found[1]}")

    def check(self, step: int, scan: bool, interrupted: bool, last_good_step: int | None) -> bool:
        """Raise TrainingDiverged (on every rank) when a loss so far, or (scan) a weight, statistic or momentum
        is not finite. Returns whether any rank was interrupted (Ctrl-C): the ranks stop at the same step."""
        found = self.find(step, scan)
        if distributed.world_size() > 1:
            gathered = distributed.all_gather_objects((found, interrupted, distributed.rank()))
            bad = [(f, rank) for f, _, rank in gathered if f is not None]
            found = (bad[0][0][0], f"{bad[0][0][1]} on rank {bad[0][1]}") if bad else None
            interrupted = any(i for _, i, _ in gathered)
        if found is not None:
            raise self._error(*found, last_good_step)
        return interrupted

    def _error(self, step: int, what: str, last_good_step: int | None) -> TrainingDiverged:
        lr = self.config.lr
        fix = f"the learning rate is likely too high (lr {lr:g}): lower it (e.g. lr {lr / 10:g})"
        if self.config.precision == "fp16":
            fix += " or use precision bf16 or fp32"
        kept = (f"the last good state (step {last_good_step}) is kept in {self.state_dir}" if last_good_step
                else "no state was saved before it")
        message = (f"stage '{self.config.name}' diverged at step {step}: {what}; {fix}, then train the stage "
                   f"again in another --out; {kept}")
        return TrainingDiverged(message, step, what, last_good_step)
