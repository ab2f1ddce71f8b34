"""BYOL (Grill et al. 2020): an online network (backbone, projector, predictor) regresses the projection of an
EMA target network (backbone, projector); no negatives, no queue.

As MocoV2 does, ``forward`` performs the EMA step itself (before computing the targets), at the rate
``before_step`` set for the step, so the training loop calls nothing else per step (hpt.methods.base.Method). Since
the first EMA step moves nothing (the target starts as a copy of the online network), this is exactly BYOL's order
"optimizer step, then EMA step" shifted into the next forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hpt.errors import HptError
from hpt.methods.base import StepOutput, TrainingSize
from hpt.methods.momentum import cosine_momentum, ema_update_
from hpt.methods.simclr import MLPHead
from hpt.models.resnet import ResNet
from hpt.models.resnet import set_bn_splits as _set_bn_splits


@dataclass
class BYOLConfig:
    """BYOL's hyper-parameters (kept small: BYOL's own projector is 4096 wide)."""

    dim: int = 128  # output of the projector and of the predictor
    hidden_dim: int | None = None  # None: twice the backbone's feature size (projector and predictor)
    momentum: float = 0.99  # target EMA (the base value under the cosine schedule)
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # cosine: BYOL's increase from `momentum` to 1

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise HptError(f"byol.dim must be >= 1, got {self.dim}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise HptError(f"byol.hidden_dim must be >= 1 (or null for twice the backbone's feature size), "
                           f"got {self.hidden_dim}")
        if not 0.0 <= self.momentum < 1.0:
            raise HptError(f"byol.momentum must be in [0, 1), got {self.momentum}")
        if self.momentum_schedule not in ("constant", "cosine"):
            raise HptError(f"byol.momentum_schedule must be constant or cosine, got {self.momentum_schedule!r}")


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor,
              t2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric BYOL loss of L2-normalised predictions p1, p2 (N x D, with gradients) of each view against
    the targets t2, t1 of the other view: the mean over both directions and the images of ``2 - 2 cos`` (half of
    the paper's sum of the two directions, so in [0, 4]); returns (loss, the mean cosine, detached: 1 is perfect)."""
    cosine = torch.cat([(p1 * t2).sum(dim=1), (p2 * t1).sum(dim=1)])
    return (2.0 - 2.0 * cosine).mean(), cosine.mean().detach()


class BYOL(nn.Module):
    """Online backbone + projector + predictor; EMA target backbone + projector (no gradient)."""

    def __init__(self, backbone: ResNet, config: BYOLConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        hidden = config.hidden_dim or 2 * backbone.feature_dim
        self.projector = MLPHead(backbone.feature_dim, hidden, config.dim)
        self.predictor = MLPHead(config.dim, hidden, config.dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for param in self.target_parameters():
            param.requires_grad_(False)
        self.momentum = config.momentum  # the EMA rate of the next momentum_update (see set_momentum)
        self.description = f"BYOL: no negatives, target EMA momentum {config.momentum}"

    def online_parameters(self) -> list[nn.Parameter]:
        """The online parameters that have a target copy, in the same order as target_parameters()."""
        return list(self.backbone.parameters()) + list(self.projector.parameters())

    def target_parameters(self) -> list[nn.Parameter]:
        return list(self.target_backbone.parameters()) + list(self.target_projector.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the online backbone, projector and predictor."""
        return self.online_parameters() + list(self.predictor.parameters())

    def set_bn_splits(self, splits: int) -> None:
        """Compute training BatchNorm statistics of both backbones over `splits` groups of the (2N-view) batch.

        Only SplitBatchNorm2d layers split; the heads' BatchNorm1d spans the whole batch.
        """
        _set_bn_splits(self, splits)

    def setup_batchnorm(self, shuffle: bool, per_process: int, world_size: int) -> int:
        """BatchNorm over the whole batch: BYOL has no negatives to leak through it (one group per process)."""
        self.set_bn_splits(1)
        return 1

    def recorded(self) -> dict[str, Any]:
        return {"queue_size": None}

    def set_momentum(self, momentum: float) -> None:
        """The EMA rate of the next momentum_update() calls (for a stage that schedules it itself)."""
        if not 0.0 <= momentum <= 1.0:
            raise HptError(f"byol momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)

    def schedule_momentum(self, step: int, total: int) -> float:
        """Set (and return) the momentum for `step` of `total` under config.momentum_schedule."""
        if self.config.momentum_schedule == "cosine":
            self.set_momentum(cosine_momentum(self.config.momentum, step, total))
        else:
            self.set_momentum(self.config.momentum)
        return self.momentum

    def before_step(self, step: int, steps: int) -> None:
        """The EMA rate of this step under config.momentum_schedule."""
        self.schedule_momentum(step, steps)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """target <- m * target + (1 - m) * online, for the backbone and the projector (not BatchNorm buffers)."""
        ema_update_(self.online_parameters(), self.target_parameters(), self.momentum)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> StepOutput:
        """EMA step, then the symmetric BYOL loss (byol_loss); both views go through each network as one batch.

        The logged ``byol_cosine`` is the mean cosine similarity between predictions and targets, which BYOL has
        in place of a classification accuracy.
        """
        both = torch.cat([view1, view2], dim=0)
        with torch.no_grad():
            self.momentum_update()
            t1, t2 = F.normalize(self.target_projector(self.target_backbone.forward_features(both)).float(),
                                 dim=1).chunk(2, dim=0)
        features = self.backbone.forward_features(both)
        p = self.predictor(self.projector(features)).float()
        p1, p2 = F.normalize(p, dim=1).chunk(2, dim=0)
        loss, cosine = byol_loss(p1, p2, t1, t2)
        return StepOutput(loss=loss, logged={"byol_cosine": cosine}, embeddings=p1.detach(), features=features,
                          feature_inputs=both)


def build_byol(backbone: ResNet, config: BYOLConfig, size: TrainingSize) -> BYOL:
    """BYOL around `backbone` (its size does not depend on the training's; its momentum schedule runs over the
    steps the loop passes to before_step)."""
    return BYOL(backbone, config)
