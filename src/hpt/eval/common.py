"""What the classifier protocols share: lr milestones, loss, head init, device choice, output files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpt.eval.curve import Curve, plot_curves, write_curves_csv, write_json
from hpt.eval.features import EvalBackbone


def milestones(steps: int) -> list[int]:
    """The steps after which the lr drops x0.1: 1/3 and 2/3 of the steps actually run."""
    return [max(1, round(steps / 3)), max(1, round(2 * steps / 3))]


def lr_at(step: int, base_lr: float, steps: int) -> float:
    """The lr used for optimizer step `step` (0-based)."""
    return base_lr * 0.1 ** sum(step >= m for m in milestones(steps))


def loss_function(multilabel: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if multilabel:
        return lambda logits, target: nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    return nn.functional.cross_entropy


def new_head(dim: int, classes: int, seed: int) -> nn.Linear:
    head = nn.Linear(dim, classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    return head


def write_outputs(out: Path, record: dict[str, Any], curves: list[Curve], backbone: EvalBackbone, what: str) -> None:
    """results.json, curve.csv and curve.png of one evaluation."""
    write_curves_csv(out / "curve.csv", curves)
    title = f"{what} - {Path(backbone.source).name} on {record['data']}"
    plot_curves(out / "curve.png", curves, metric=record["metric"], title=title)
    record["files"] = {"curve_csv": "curve.csv", "curve_png": "curve.png"}
    write_json(out / "results.json", record)
