"""The methods a stage can train with, by the name its `method:` setting gives: name -> builder.

Adding a method: its file (config dataclass, heads, loss, the members of hpt.methods.base.Method, a builder) and
one line here. Its settings are a section of a stage's YAML (moco:, simclr:, byol:, mocov3:, dino:): a field of
hpt.pretrain.config.StageConfig of its config class, where the YAML's keys are declared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpt.errors import HptError
from hpt.methods.base import Method, TrainingSize
from hpt.methods.byol import build_byol
from hpt.methods.dino import build_dino
from hpt.methods.mocov2 import build_mocov2
from hpt.methods.mocov3 import build_mocov3
from hpt.methods.simclr import build_simclr
from hpt.models.resnet import ResNet


@dataclass(frozen=True)
class Builder:
    """How a method is built: from the backbone, its settings section of the stage (`section`) and the size of the
    training."""

    section: str
    build: Callable[[ResNet, Any, TrainingSize], Method]


METHODS: dict[str, Builder] = {
    "mocov2": Builder("moco", build_mocov2),
    "simclr": Builder("simclr", build_simclr),
    "byol": Builder("byol", build_byol),
    "mocov3": Builder("mocov3", build_mocov3),
    "dino": Builder("dino", build_dino),
}


def build_method(name: str, backbone: ResNet, settings: Any, size: TrainingSize) -> Method:
    """The method `name` around `backbone`, with its config read from `settings` (a stage's config: one attribute
    per method, named by its section)."""
    if name not in METHODS:
        raise HptError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    builder = METHODS[name]
    return builder.build(backbone, getattr(settings, builder.section), size)
