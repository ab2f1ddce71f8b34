"""What the momentum-teacher methods of this package share (MoCo v2 and v3, BYOL, DINO): the EMA step of a
momentum copy, the momentum schedule, and (MoCo v3, DINO) the backbone's pooled features.

The backbone may be any module with ``feature_dim`` and pooled features: ``forward_features(x)`` where it has one
(the ResNet, whose ``forward`` adds its classifier when it has one), else ``forward(x)`` (N, feature_dim).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from hpt.errors import HptError

MomentumSchedule = Literal["constant", "cosine"]


def pooled_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled features of `images`, (N, feature_dim), with gradients where the backbone has them."""
    forward_features = getattr(backbone, "forward_features", None)
    out: torch.Tensor = forward_features(images) if callable(forward_features) else backbone(images)
    return out


def hidden_width(feature_dim: int, cap: int) -> int:
    """Hidden width of a head sized from the backbone: 16 times its feature size, at most `cap` (the reference's).

    Every backbone of 256 or more features gets the reference's width (ViT-S/B, ResNet-18/50: 4,096 for MoCo v3,
    2,048 for DINO); a toy backbone gets a narrower head (ResNet-18 of width 8: 64 features, 1,024 hidden) rather
    than one of 10 million weights beside its 0.2 million."""
    return max(1, min(cap, 16 * feature_dim))


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL's schedule: ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2``, from `base` at step 0 to 1 at the end."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1.0) / 2.0


def scheduled_momentum(base: float, schedule: MomentumSchedule, step: int, steps: int) -> float:
    """The EMA rate of `step` of `steps`: `base` throughout (constant), or MoCo v3's ``adjust_moco_momentum`` and
    DINO's ``cosine_scheduler(base, 1)``: ``1 - (1 - base) * (1 + cos(pi * step / steps)) / 2`` (cosine)."""
    if schedule == "cosine":
        return cosine_momentum(base, step, steps)
    return base


def check_momentum(section: str, momentum: float, schedule: str) -> None:
    """The HptErrors of a base momentum and its schedule, naming `section` (the stage's YAML section)."""
    if not 0.0 <= momentum < 1.0:
        raise HptError(f"{section}.momentum must be in [0, 1) (1 would freeze the momentum encoder), got {momentum}")
    if schedule not in ("constant", "cosine"):
        raise HptError(f"{section}.momentum_schedule must be constant or cosine, got {schedule!r}")


@torch.no_grad()
def ema_update_(online: Iterable[nn.Parameter], target: Iterable[nn.Parameter], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, pairwise, in place (parameters, not BN buffers)."""
    for param, copy in zip(online, target, strict=True):
        copy.mul_(momentum).add_(param.detach(), alpha=1.0 - momentum)


def freeze(module: nn.Module) -> None:
    """No gradients for `module`'s parameters (a momentum copy: it follows by EMA only)."""
    for param in module.parameters():
        param.requires_grad_(False)
