"""The input stem of a backbone and its adaptation to images of another channel count.

The stem is the first convolution, the only layer that sees the input channels: a ResNet's ``conv1``, a ViT's
``patch_embed.proj``, a ConvNeXt's ``stem.0``. A Base trained on RGB images takes 3 channels; for data of C != 3
channels (hpt.augment.model_channels: gray images are expanded to RGB instead) its stem is adapted:

* filters of channels 1..3 keep the Base's R, G and B filters (when C > 3); every other channel starts from the
  mean of the three (when C < 3, every channel does);
* all filters are then scaled by 3/C, so that an image whose channels are equal gives the same activations as
  before: the stem's response to a flat input, and so the scale the next layers were trained on, is kept.

For C = 1 the rule gives the sum of the RGB filters: exactly what expanding a gray image to three channels does.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor, nn

from hpt.errors import HptError
from hpt.models.convnext import ConvNeXt
from hpt.models.resnet import ResNet
from hpt.models.vit import VisionTransformer

log = logging.getLogger("hpt")
#: the stem convolution's module path in each family's reference key layout (its weight: PATH + ".weight")
STEM_MODULES: dict[str, str] = {"resnet": "conv1", "vit": "patch_embed.proj", "convnext": "stem.0"}


def _family(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ConvNeXt):
        return "convnext"
    if isinstance(model, ResNet):
        return "resnet"
    raise HptError(f"internal error: {type(model).__name__} is not a backbone hpt builds")


def stem_conv(model: nn.Module) -> nn.Conv2d:
    """The backbone's stem convolution."""
    conv = model.get_submodule(STEM_MODULES[_family(model)])
    if not isinstance(conv, nn.Conv2d):
        raise HptError(f"internal error: the stem of {type(model).__name__} is a {type(conv).__name__}, not a conv")
    return conv


def stem_channels(model: nn.Module) -> int:
    """The number of input channels the backbone takes."""
    return int(stem_conv(model).in_channels)


def adapted_weight(weight: Tensor, channels: int) -> Tensor:
    """An RGB stem's weight (O, 3, k, k) for `channels` input channels, by the rule of this module's docstring."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise HptError(f"only a 3-channel stem can be adapted; this one is {tuple(weight.shape)}")
    if channels < 1:
        raise HptError(f"channels must be at least 1, got {channels}")
    mean = weight.mean(dim=1, keepdim=True)
    if channels >= 3:
        parts = [weight, mean.expand(-1, channels - 3, -1, -1)]
    else:
        parts = [mean.expand(-1, channels, -1, -1)]
    return torch.cat(parts, dim=1) * (3.0 / channels)


def adapt_stem(model: nn.Module, channels: int, where: str = "the backbone") -> bool:
    """Make the backbone take `channels` input channels; True when its stem was changed (in place).

    A 3-channel stem is adapted (see the module's docstring); a stem of another channel count cannot be, and
    raises an HptError naming both counts."""
    conv = stem_conv(model)
    have = int(conv.in_channels)
    if have == channels:
        return False
    if have != 3:
        raise HptError(f"{where} takes {have}-channel images but the data has {channels} channels; use data of "
                       f"{have} channels, or start from a 3-channel (RGB) base, whose stem is adapted")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapted_weight(conv.weight.detach(), channels))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias.detach())
    new.weight.requires_grad_(conv.weight.requires_grad)
    path = STEM_MODULES[_family(model)]
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)
    _record_channels(model, channels)
    log.info("%s: stem %s.weight adapted from 3 to %d input channels (new channels from the mean of the RGB "
             "filters, all scaled by 3/%d)", where, path, channels, channels)
    return True


def _record_channels(model: nn.Module, channels: int) -> None:
    """Keep the model's own description of its input channels in step with its stem."""
    if hasattr(model, "in_chans") and isinstance(model.in_chans, int):  # ResNet
        model.in_chans = channels
    for attr in ("config", "spec"):  # ViT's VitConfig, ConvNeXt's ConvNeXtSpec (frozen dataclasses)
        value = getattr(model, attr, None)
        if dataclasses.is_dataclass(value) and hasattr(value, "in_chans"):
            setattr(model, attr, dataclasses.replace(value, in_chans=channels))  # type: ignore[arg-type]


def saved_channels(path: str) -> int | None:
    """The input channels an hpt-saved backbone (safetensors) records, or None when it records none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, RuntimeError):
        return None
    value = str(meta.get("in_chans", ""))
    return int(value) if value.isdigit() else None
