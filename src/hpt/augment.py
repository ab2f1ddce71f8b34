"""The MoCo-v2 augmentations, batched on the training device with kornia, each named and removable.

Input is a batch (N, C, H, W) of uint8 pixels or of floats in [0, 1] (16-bit, multi-channel and DICOM data); output
is a float batch (N, M, S, S) normalized with the data set's own per-channel mean and std, where M is
:func:`model_channels` (C, except that grayscale images are expanded to three channels so that ImageNet bases work
on X-rays). Every image gets its own random draw. The geometric augmentations and the blur apply to any C; colour
jitter and random grayscale only to colour (3-channel) images: with other channel counts they are skipped, and
the log says so once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import kornia.augmentation as K
import torch
from torch import nn

from hpt.errors import HptError

log = logging.getLogger("hpt")
COLOUR_ONLY: tuple[str, ...] = ("color_jitter", "grayscale")  # defined for RGB images only
_told: set[int] = set()  # channel counts whose skipped colour augmentations were logged

#: The removable augmentations, in the order they are applied (the paper's robustness study removes them).
AUGMENTATIONS: tuple[str, ...] = (
    "random_resized_crop",
    "color_jitter",
    "grayscale",
    "gaussian_blur",
    "horizontal_flip",
)


@dataclass
class AugmentConfig:
    """Settings of the MoCo-v2 pipeline (defaults: the recipe's, with hue 0.1 as in the paper)."""

    image_size: int | None = None  # output side in pixels; None: the data set's own image size
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    flip_p: float = 0.5
    remove: list[str] = field(default_factory=list)  # names from AUGMENTATIONS to leave out

    def __post_init__(self) -> None:
        unknown = [name for name in self.remove if name not in AUGMENTATIONS]
        if unknown:
            raise HptError(
                f"unknown augmentation(s) to remove: {', '.join(unknown)}; valid names: {', '.join(AUGMENTATIONS)}"
            )
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise HptError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")

    @property
    def active(self) -> tuple[str, ...]:
        """The augmentations that will run, in order."""
        return tuple(name for name in AUGMENTATIONS if name not in self.remove)


def blur_kernel_size(image_size: int) -> int:
    """An odd kernel of about 10% of the image side (SimCLR / torchvision convention), at least 3."""
    size = max(3, int(round(0.1 * image_size)))
    return size if size % 2 == 1 else size + 1


def model_channels(data_channels: int) -> int:
    """The input channels of the model for images of `data_channels`: 3 for gray (expanded) and RGB, else the same."""
    return 3 if data_channels in (1, 3) else int(data_channels)


def _normalization(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, M, 1, 1) mean and std tensors for the model's channels (gray statistics repeated over three)."""
    if len(mean) != len(std) or not mean:
        raise HptError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
    channels = model_channels(len(mean))
    if channels != len(mean):
        mean, std = tuple(mean) * channels, tuple(std) * channels
    return torch.tensor(mean).view(1, channels, 1, 1), torch.tensor(std).view(1, channels, 1, 1)


def skipped_for(channels: int, active: tuple[str, ...]) -> tuple[str, ...]:
    """The active augmentations that images of `channels` (model channels) cannot take: colour ones unless RGB."""
    return () if channels == 3 else tuple(name for name in active if name in COLOUR_ONLY)


class MocoAugment(nn.Module):
    """One random MoCo-v2 view of a batch (uint8, or float in [0, 1]); call it twice for a query and a key view."""

    def __init__(
        self,
        config: AugmentConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size or image_size
        side = self.image_size
        mean_t, std_t = _normalization(mean, std)
        channels = int(mean_t.shape[1])
        steps: list[nn.Module] = []
        active = config.active
        skipped = skipped_for(channels, active)
        if skipped and channels not in _told:
            _told.add(channels)
            log.info("augmentations %s skipped: they are defined for colour (RGB) images and these have %d channels",
                     ", ".join(skipped), channels)
        active = tuple(name for name in active if name not in skipped)
        if "random_resized_crop" in active:
            steps.append(K.RandomResizedCrop((side, side), scale=config.crop_scale))
        if "color_jitter" in active:
            steps.append(K.ColorJitter(*config.jitter, p=config.jitter_p))
        if "grayscale" in active:
            steps.append(K.RandomGrayscale(p=config.grayscale_p))
        if "gaussian_blur" in active:
            k = blur_kernel_size(side)
            steps.append(K.RandomGaussianBlur((k, k), config.blur_sigma, p=config.blur_p))
        if "horizontal_flip" in active:
            steps.append(K.RandomHorizontalFlip(p=config.flip_p))
        self.steps = nn.Sequential(*steps)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.crop = "random_resized_crop" in active

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_rgb(images)
        if not self.crop and x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = self.steps(x)
        return (x - self.mean) / self.std


def to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 / 255, or float images as float32 (already in [0, 1]); one channel is
    expanded to three (:func:`model_channels`)."""
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
    elif images.is_floating_point():
        x = images.float()
    else:
        raise TypeError(f"expected a uint8 or float batch, got {images.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


class EvalTransform(nn.Module):
    """The deterministic transform for evaluation and BatchNorm re-estimation: resize (if needed) + normalize."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image_size: int) -> None:
        super().__init__()
        mean_t, std_t = _normalization(mean, std)
        self.image_size = image_size
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_rgb(images)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std
