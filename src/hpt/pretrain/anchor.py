"""Base-anchored continuation: a distillation term that keeps the student's features near the frozen Base's.

Continued pretraining can wear down what the Base already knew (forgetting). GFM (Mendieta et al., ICCV 2023)
adds a feature-distillation term towards the frozen starting model next to the self-supervised loss. Here the
term is the squared distance between the L2-normalised pooled features of the student (the stage's backbone) and
of the Base (a frozen copy of the backbone the stage started from), on the same batch of augmented images the
backbone saw in the step (a method's query view, or its two views where they go through as one batch):

    loss = SSL loss + weight * mean_i || f_s(x_i)/|f_s(x_i)| - f_b(x_i)/|f_b(x_i)| ||^2     (in [0, 4])

The Base copy has no gradients and its weights never change. Its BatchNorm layers normalise with the batch's own
statistics, as the student's do in training, and its running statistics never change: so the term is exactly 0
while the student's weights equal the Base's and measures only how far the weights have moved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpt.errors import HptError


@dataclass
class AnchorConfig:
    """`anchor:` of a stage: the weight of the distillation term to the stage's starting backbone (0: off)."""

    weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.weight >= 0.0:
            raise HptError(f"anchor.weight must be a number >= 0 (0 turns the anchor off), got {self.weight}")

    @property
    def active(self) -> bool:
        return self.weight > 0.0


def anchor_loss(student: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the L2-normalised rows of two (N, D) feature batches (0 when they point alike)."""
    if student.shape != base.shape:
        raise ValueError(f"student and base features differ in shape: {tuple(student.shape)} vs {tuple(base.shape)}")
    s = F.normalize(student.float(), dim=1)
    b = F.normalize(base.detach().float(), dim=1)
    return (s - b).pow(2).sum(dim=1).mean()


class FrozenBase(nn.Module):
    """A frozen copy of a backbone: no gradients, weights and BatchNorm running statistics never change."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0  # train-mode normalisation by the batch; running statistics stay as they are

    def train(self, mode: bool = True) -> FrozenBase:
        """Always in training mode (BatchNorm by the batch's statistics, like the student in a training step)."""
        super().train(True)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)  # type: ignore[operator]


class BaseAnchor(nn.Module):
    """The anchor term of a stage: the weighted anchor_loss between the student's features and the Base's."""

    def __init__(self, config: AnchorConfig, start: nn.Module) -> None:
        super().__init__()
        self.weight = float(config.weight)
        self.base = FrozenBase(start)

    def forward(self, images: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
        """The unweighted term for `images`, whose student features (with gradients) are `student_features`."""
        return anchor_loss(student_features, self.base(images))
