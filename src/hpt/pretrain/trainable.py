"""Train modes: which of the backbone's parameters a stage trains (all; bn: BatchNorm affine only; none)."""

from __future__ import annotations

from torch import nn

from hpt.models import ResNet
from hpt.pretrain.config import TrainMode


def set_trainable(backbone: ResNet, mode: TrainMode) -> None:
    """all: every parameter; bn: only BatchNorm affine parameters (conv weights frozen); others: nothing."""
    for module in backbone.modules():
        for param in module.parameters(recurse=False):
            if mode == "all":
                param.requires_grad_(True)
            elif mode == "bn":
                param.requires_grad_(isinstance(module, nn.BatchNorm2d))
            else:
                param.requires_grad_(False)
