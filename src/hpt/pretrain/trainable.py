"""Train modes: which of the backbone's parameters a stage trains, for any architecture.

* all: every parameter;
* bn: BatchNorm affine parameters only (HPT-BN of the paper, ResNet);
* norm: the affine parameters of every normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm, and any
  class named like one, e.g. a ConvNeXt LayerNorm2d): HPT-BN for any architecture;
* lora: the LoRA adapters only (the stage adds them first: hpt.models.lora.add_lora, and merges them before it saves
  the backbone);
* bn-stats, none: nothing (bn-stats re-estimates BatchNorm statistics, without gradients).

last_blocks N adds every parameter of the last N blocks (ordered_blocks) to bn, norm or lora: lora with last_blocks
is the ExPLoRA recipe (Khanna et al. 2024: LoRA on the frozen blocks, the last blocks fully trained).
"""

from __future__ import annotations

import re

from torch import nn

from hpt.errors import HptError
from hpt.models.lora import LoRALayer, lora_layers
from hpt.pretrain.config import TrainMode

#: Normalisation layers by type; a class whose name ends in Norm / Norm1d / Norm2d / Norm3d counts too.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                           *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_NORM_NAME = re.compile(r"Norm(\d+d)?$")


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: a torch one (NORM_TYPES, subclasses included) or a class named like one."""
    return isinstance(module, NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def ordered_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks, first to last: `blocks` (ViT), `stages[i].blocks` (ConvNeXt), or the residual blocks
    of layer1..layer4 (ResNet)."""
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return list(blocks)
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, (nn.ModuleList, nn.Sequential)) and all(hasattr(stage, "blocks") for stage in stages):
        return [block for stage in stages for block in stage.blocks]
    layers = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Sequential) for layer in layers):
        return [block for layer in layers for block in layer]  # type: ignore[union-attr]
    raise HptError(f"last_blocks finds no blocks in a {type(backbone).__name__}: it reads `blocks` (ViT), "
                   "`stages[i].blocks` (ConvNeXt) or layer1..layer4 (ResNet); set last_blocks: 0")


def _trains(module: nn.Module, name: str, mode: TrainMode) -> bool:
    """Whether parameter `name` of `module` (its own, not its children's) trains under `mode` alone."""
    if mode == "all":
        return True
    if mode == "bn":
        return isinstance(module, nn.BatchNorm2d)
    if mode == "norm":
        return is_norm(module)
    if mode == "lora":
        return isinstance(module, LoRALayer) and name in ("lora_a", "lora_b")
    return False


def set_trainable(backbone: nn.Module, mode: TrainMode, last_blocks: int = 0) -> None:
    """Set requires_grad on every parameter of the backbone by `mode`, plus every parameter of its last
    `last_blocks` blocks. HptError (before anything changes) when lora finds no adapters or the backbone has fewer
    blocks than last_blocks."""
    if mode == "lora" and not lora_layers(backbone):
        raise HptError("train: lora needs LoRA adapters in the backbone (hpt.models.lora.add_lora) and it has none")
    if mode == "bn" and not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
        raise HptError(f"train: bn trains BatchNorm layers, and this {type(backbone).__name__} has none (it "
                       "normalises with LayerNorm): use train: norm, HPT-BN for any architecture")
    blocks = ordered_blocks(backbone) if last_blocks else []
    if last_blocks > len(blocks):
        raise HptError(f"last_blocks: {last_blocks} is more than the {len(blocks)} blocks of this "
                       f"{type(backbone).__name__}; set last_blocks to at most {len(blocks)}")
    for module in backbone.modules():
        for name, param in module.named_parameters(recurse=False):
            param.requires_grad_(_trains(module, name, mode))
    for block in blocks[len(blocks) - last_blocks:]:
        block.requires_grad_(True)


def trainable_summary(backbone: nn.Module) -> tuple[int, int, dict[str, list[str]]]:
    """(trained parameter count, total parameter count, names of the trained parameter tensors by group): "lora"
    (the LoRA matrices), "norm" (normalisation layers' affine parameters) and "other" (the rest, e.g. a fully
    trained block's weights). The total counts every parameter of the backbone as it is (adapters included)."""
    groups: dict[str, list[str]] = {"lora": [], "norm": [], "other": []}
    trained = total = 0
    for module_name, module in backbone.named_modules():
        for name, param in module.named_parameters(recurse=False):
            total += param.numel()
            if not param.requires_grad:
                continue
            trained += param.numel()
            group = ("lora" if isinstance(module, LoRALayer) and name in ("lora_a", "lora_b")
                     else "norm" if is_norm(module) else "other")
            groups[group].append(f"{module_name}.{name}" if module_name else name)
    return trained, total, groups


def describe_trainable(backbone: nn.Module, mode: TrainMode, last_blocks: int = 0) -> str:
    """One line for the stage's log and summary, e.g. 'lora + last 2 blocks: 2.1% of the backbone's parameters
    (12,345 of 587,000): 24 LoRA matrices, 4 norm tensors, 8 other tensors'."""
    trained, total, groups = trainable_summary(backbone)
    head = mode + (f" + last {last_blocks} block{'s' if last_blocks > 1 else ''}" if last_blocks else "")
    share = 100.0 * trained / total if total else 0.0
    parts = [f"{len(names)} {title}" for title, names in (("LoRA matrices", groups["lora"]),
                                                            ("norm tensors", groups["norm"]),
                                                            ("other tensors", groups["other"])) if names]
    return (f"{head}: {share:.1f}% of the backbone's parameters ({trained:,} of {total:,})"
            + (f": {', '.join(parts)}" if parts else ""))
