"""What an experiment plan needs to know of its base's family (ResNet, ViT, ConvNeXt).

* The random start (the Random row, and Target's start) is random weights of the *base's* architecture. For a
  ResNet it comes from the checkpoint's spec (arch, small_stem, width), exactly as before, so the ids of ResNet
  experiments stay the same. For a ViT or ConvNeXt it is the architecture name :func:`hpt.models.arch_of` gives
  (``vit_tiny_patch4_16``, ``convnext_atto_patch2``), checked to rebuild the base's architecture exactly: a base
  that no name rebuilds (a custom width or depth, average pooling, ...; DINOv2's variant has a name: ``_dinov2``) is
  refused with a message, rather than compared with a Target of another architecture.
* HPT-BN (the paper's "train only the BatchNorm affine parameters") trains nothing in a backbone without BatchNorm.
  For such a base the experiment's HPT-BN row trains every normalisation layer's affine parameters instead
  (``train: norm``: the LayerNorms of a ViT, the LayerNorms and GRNs of a ConvNeXt), the same idea carried to the
  layers these families normalise with. The row is labelled ``HPT-norm`` and its stage ``target-norm``, so that
  results and reports never pass it off as HPT-BN; it takes HPT-BN's budget, lr and recipe (``budgets.hpt_bn``,
  ``budgets.hpt_bn_lr``, ``recipes.hpt_bn``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpt.errors import HptError
from hpt.models import (
    NAMED_WEIGHTS,
    ConvNeXt,
    VisionTransformer,
    build_backbone,
    build_random,
    inspect_checkpoint,
)
from hpt.models.families import arch_of, describe, family_of_checkpoint
from hpt.models.formats import read_state_dict
from hpt.pretrain.hierarchy import BaseConfig

#: ViT settings that do not make a different architecture (a classifier head, stochastic depth while training).
_VIT_IGNORED = ("num_classes", "drop_path_rate")


@dataclass(frozen=True)
class NormTraining:
    """How the experiment's HPT-BN row trains a base: its train mode, stage name and row label."""

    train: str
    stage: str
    label: str


HPT_BN = NormTraining("bn", "target-bn", "HPT-BN")
HPT_NORM = NormTraining("norm", "target-norm", "HPT-norm")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any layer of the model is a BatchNorm."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def base_has_batchnorm(base: BaseConfig) -> bool:
    """Whether the base backbone has BatchNorm layers, decided without loading its weights where possible.

    A base hpt cannot read here counts as a ResNet (BatchNorm): the stage that loads it reports the problem."""
    if base.checkpoint == "random":
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = build_random(base.arch or "resnet50", small_stem=bool(base.small_stem), width=base.width)
        return has_batchnorm(model)
    named = NAMED_WEIGHTS.get(base.checkpoint)
    if named is not None:
        return named.arch.startswith("resnet")
    try:
        obj, _ = read_state_dict(Path(base.checkpoint))
    except HptError:
        return True
    return family_of_checkpoint(obj) == "resnet"


def norm_training(base: BaseConfig) -> NormTraining:
    """HPT-BN for a base with BatchNorm, else HPT-norm (see the module docstring)."""
    return HPT_BN if base_has_batchnorm(base) else HPT_NORM


def random_start(base: BaseConfig, batchnorm: bool | None = None) -> BaseConfig:
    """Random weights of the base's architecture, seeded by the base's seed (see the module docstring).
    `batchnorm`: base_has_batchnorm(base), when the caller knows it already."""
    if base.checkpoint == "random":
        return base
    if base_has_batchnorm(base) if batchnorm is None else batchnorm:
        spec = inspect_checkpoint(base.checkpoint).spec
        if spec is None:
            raise HptError(f"cannot tell the architecture of {base.checkpoint}; set base.arch, small_stem, width")
        return BaseConfig("random", spec.arch, spec.small_stem, spec.width, base.seed)
    model, _ = build_backbone(base.checkpoint)
    arch = arch_of(model)
    problem = rebuild_problem(model, arch)
    if problem:
        raise HptError(f"the Random and Target rows start from random weights of the base's architecture, and hpt "
                       f"cannot build that of {base.checkpoint} ({describe(model)}) by name: {problem}; run an "
                       "experiment without them (sequential, bases or sweep), or start from a base whose "
                       "architecture hpt names (e.g. vit_small_patch16_224, convnext_tiny)")
    return BaseConfig("random", arch, None, None, base.seed)


def rebuild_problem(model: nn.Module, arch: str) -> str:
    """Why ``build_random(arch)`` is not the model's architecture, or "" when it is."""
    try:
        with torch.device("meta"):
            rebuilt = build_random(arch)
    except HptError as err:
        return str(err)
    if isinstance(model, VisionTransformer) and isinstance(rebuilt, VisionTransformer):
        return _differences(_vit_shape(model), _vit_shape(rebuilt), arch, _VIT_IGNORED)
    if isinstance(model, ConvNeXt) and isinstance(rebuilt, ConvNeXt):
        return _differences(asdict(model.spec), asdict(rebuilt.spec), arch, ())
    return f"{arch} builds a {type(rebuilt).__name__}, not a {type(model).__name__}"


def _vit_shape(model: VisionTransformer) -> dict[str, Any]:
    """A ViT's config with LayerScale as present or not: a loaded model's init_values is a placeholder (the
    scales are weights), and a random start takes the named architecture's own initial value."""
    shape = asdict(model.config)
    shape["layer_scale"] = shape.pop("init_values") is not None
    return shape


def _differences(have: dict[str, Any], built: dict[str, Any], arch: str, ignored: tuple[str, ...]) -> str:
    diffs = [f"{key} {value!r} (the base) vs {built[key]!r} ({arch})" for key, value in have.items()
             if key not in ignored and built.get(key) != value]
    return ", ".join(diffs)
