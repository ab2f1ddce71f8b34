"""Stop a stage when it has converged: an online kNN or linear probe on a small labelled subset, scored every N
steps (stop-gradient: the probe never trains the backbone), and a patience rule on its score."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from hpt import distributed
from hpt.data.spec import DataSpec, parse_data_spec
from hpt.errors import HptError
from hpt.pretrain.signals import LabelledSignal

log = logging.getLogger("hpt")


@dataclass
class StopConfig:
    """`stop:` of a stage: probe every `every` steps; stop after `patience` probes without a gain of `margin`."""

    data: DataSpec | None = None  # labelled data for the probe; None: the stage's own data (it must be labelled)
    labels: int = 1000  # labelled training images of the probe (stratified subset)
    every: int = 100
    probe: Literal["knn", "linear"] = "knn"
    # The least gain (metric units; 0.01 = 1 point) that counts as progress. None: one standard error of the
    # probe's score on its val images, sqrt(p(1-p)/n), at least 0.002 - a smaller gain is noise.
    margin: float | None = None
    patience: int = 3
    min_steps: int = 0  # never stop before this step

    def __post_init__(self) -> None:
        self.data = None if self.data is None else parse_data_spec(self.data)
        if self.every < 1 or self.patience < 1 or self.labels < 1:
            raise HptError("stop.every, stop.patience and stop.labels must be >= 1")
        if self.margin is not None and self.margin < 0:
            raise HptError(f"stop.margin must be >= 0, got {self.margin}")


@dataclass
class StopDecision:
    stop: bool
    reason: str


def should_stop(history: list[tuple[int, float]], margin: float, patience: int, min_steps: int = 0) -> StopDecision:
    """history: (step, score) of every probe so far, the start's (step 0) first when the stage began from step 0.
    Stop when the last `patience` probes all failed to beat the best earlier score by more than `margin`."""
    if len(history) <= patience or history[-1][0] < min_steps:
        return StopDecision(False, "")
    best_before = max(score for _, score in history[:-patience])
    recent = [score for _, score in history[-patience:]]
    if max(recent) > best_before + margin:
        return StopDecision(False, "")
    best_step, best = max(history[:-patience], key=lambda item: item[1])
    reason = f"the probe has not gained more than {margin:.4g} over {best:.4f} (step {best_step}) in the {patience} " \
             "probes since"
    if best_step == 0:
        reason += ("; its best is the start's (step 0): this stage has not improved on its starting checkpoint, "
                   "which this probe scores at least as high")
    return StopDecision(True, reason)


@dataclass
class OnlineProbe:
    """Scores a backbone on a fixed labelled subset: kNN (k=20, T=0.07) or a linear probe (1,000 steps) on
    pooled features; val of the data is the query set (hpt.pretrain.signals.LabelledSignal)."""

    config: StopConfig
    data: DataSpec
    device: torch.device
    history: list[tuple[int, float]] = field(default_factory=list)
    _signal: LabelledSignal | None = None

    @torch.no_grad()
    def score(self, step: int, backbone: torch.nn.Module) -> float:
        """Probe the backbone (eval mode, on a copy) and record (step, score)."""
        if self._signal is None:
            self._signal = LabelledSignal(self.data, self.config.probe, self.config.labels, self.device)
        value = self._signal.read(backbone).value
        self.history.append((step, value))
        return value

    def decide(self, step: int, backbone: torch.nn.Module, stage: str) -> StopDecision:
        """Score at `step` and decide whether to stop. Under torchrun rank 0 scores and decides and every rank takes
        its history and decision (each rank's BatchNorm statistics differ, so their own scores could disagree and
        one rank stop while another trains on). Step 0 is the start's score: recorded, never a stop."""
        decision = StopDecision(False, "")
        if distributed.rank() == 0:
            value = self.score(step, backbone)
            if step:
                decision = should_stop(self.history, self.margin(), self.config.patience, self.config.min_steps)
            log.info("%s step %d%s: convergence probe %.4f%s", stage, step, "" if step else " (the start)", value,
                     f"; stopping: {decision.reason}" if decision.stop else "")
        self.history, decision = distributed.broadcast_object((self.history, decision))
        return decision

    def margin(self) -> float:
        """The configured margin, or one standard error of the best score so far on the val images."""
        if self.config.margin is not None:
            return self.config.margin
        best = max(score for _, score in self.history) if self.history else 0.5
        n = self._signal.val_images if self._signal is not None else 1
        return max(0.002, float(np.sqrt(best * (1 - best) / max(n, 1))))
