"""A faster copy of a frozen backbone for feature extraction: BatchNorm folded into the convolutions before it.

In eval mode a BatchNorm is a fixed per-channel affine map, so it can be folded into the preceding convolution
(``torch.nn.utils.fusion.fuse_conv_bn_eval``); with the channels_last memory format this extracts features about
1.5x faster on CPU. The outputs equal the original model's up to float rounding (about 1e-6 relative). The original
model is never changed.

By family: a ResNet is folded and made channels_last; a ConvNeXt has no BatchNorm (its LayerNorms normalise by each
input's own statistics: nothing to fold) and is only made channels_last; a ViT's copy is a plain eval-mode copy
(its one convolution, the patch embedding, gains nothing from channels_last).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hpt.models.vit import VisionTransformer


def inference_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode deep copy of model with every (conv, BatchNorm) pair folded into one convolution (see the
    module docstring for ViTs and ConvNeXts)."""
    fused = copy.deepcopy(model).eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()):
        for module in fused.modules():
            _fold_children(module)
    if channels_last and not isinstance(fused, VisionTransformer):
        fused = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return fused


def _fold_children(module: nn.Module) -> None:
    """Fold the pairs among module's own children: convN + bnN (blocks, stem) and consecutive conv, BN."""
    children = dict(module.named_children())
    pairs = [(name, "bn" + name[len("conv"):]) for name in children if name.startswith("conv")]
    if isinstance(module, nn.Sequential):
        names = list(children)
        pairs += list(zip(names, names[1:]))
    for conv_name, bn_name in pairs:
        conv, bn = children.get(conv_name), children.get(bn_name)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
            children[bn_name] = nn.Identity()
