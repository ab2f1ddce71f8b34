"""The learning rate of every step: linear scaling with the global batch, warm-up, cosine decay, the head
warm-up (backbone lr 0 at first) and the guard's lowering."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from hpt.pretrain.config import StageConfig

log = logging.getLogger("hpt")


def peak_lr(config: StageConfig) -> float:
    """config.lr for a global batch of lr_reference_batch, scaled linearly to the real global batch."""
    return config.lr * config.batch_size / config.lr_reference_batch


def scheduled_lr(peak: float, step: int, steps: int, warmup_steps: int = 0) -> float:
    """The lr of optimizer step `step` (0-based): linear warm-up to `peak`, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (steps - warmup_steps)))


def param_groups(config: StageConfig, backbone: nn.Module, params: list[nn.Parameter]) -> list[dict[str, Any]]:
    """One group, or two during a head warm-up: the backbone's lr is 0 until head_warmup_steps."""
    if not config.head_warmup_steps:
        return [{"params": params, "is_backbone": False}]
    in_backbone = {id(p) for p in backbone.parameters()}
    log.info("%s: head warm-up for %d steps (backbone lr 0), then all trainable weights", config.name,
             config.head_warmup_steps)
    return [{"params": [p for p in params if id(p) in in_backbone], "is_backbone": True},
            {"params": [p for p in params if id(p) not in in_backbone], "is_backbone": False}]


def set_lr(optimizer: torch.optim.Optimizer, config: StageConfig, peak: float, step: int, scale: float) -> None:
    """The lr of step `step` in every group, times `scale` (the guard's); the backbone's group starts at the end
    of the head warm-up, with no momentum carried over from the warm-up's gradients."""
    for group in optimizer.param_groups:
        warming = group.get("is_backbone") and step < config.head_warmup_steps
        group["lr"] = 0.0 if warming else scale * scheduled_lr(peak, step, config.steps, config.lr_warmup_steps)
        if group.get("is_backbone") and step == config.head_warmup_steps:
            for param in group["params"]:
                optimizer.state.pop(param, None)
