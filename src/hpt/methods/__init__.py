"""Self-supervised methods a stage can train with, one file each: MoCo-v2 (the paper's), SimCLR, BYOL."""

from __future__ import annotations

from typing import Union

from hpt.errors import HptError
from hpt.methods.byol import BYOL, BYOLConfig
from hpt.methods.mocov2 import MocoV2, MocoV2Config, auto_queue_size
from hpt.methods.simclr import SimCLR, SimCLRConfig
from hpt.models.resnet import ResNet

METHODS = ("mocov2", "simclr", "byol")
SSLMethod = Union[MocoV2, SimCLR, BYOL]


def build_method(name: str, backbone: ResNet, *, moco: MocoV2Config, simclr: SimCLRConfig, byol: BYOLConfig,
                 steps: int, global_batch: int, num_images: int) -> tuple[SSLMethod, int | None, str]:
    """The method module around `backbone`, its queue size (MoCo only) and a sentence for the log."""
    if name == "simclr":
        return SimCLR(backbone, simclr), None, "SimCLR: negatives from the global batch, no queue"
    if name == "byol":
        return BYOL(backbone, byol), None, f"BYOL: no negatives, target EMA momentum {byol.momentum}"
    if name != "mocov2":
        raise HptError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    if moco.queue_size:
        size, reason = moco.queue_size, "queue size set in the config"
    else:
        size, reason = auto_queue_size(steps, global_batch, num_images)
    if size % global_batch:
        raise HptError(f"moco.queue_size {size} must be a multiple of the global batch {global_batch}")
    return MocoV2(backbone, moco, size), size, reason


__all__ = ["BYOL", "METHODS", "BYOLConfig", "MocoV2", "MocoV2Config", "SSLMethod", "SimCLR", "SimCLRConfig",
           "build_method"]
