"""The MoCo-v2 augmentations, batched on the training device with kornia, each named and removable.

Input is a uint8 batch (N, C, H, W) with C = 1 or 3; output is a float batch (N, 3, S, S), normalized with the
data set's own mean and std. Every image gets its own random draw. Grayscale images are expanded to three
channels so that ImageNet bases work on X-rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import kornia.augmentation as K
import torch
from torch import nn

from hpt.errors import HptError

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


class MocoAugment(nn.Module):
    """One random MoCo-v2 view of a uint8 batch; call it twice for a query and a key view."""

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
        mean3 = tuple(mean) * 3 if len(mean) == 1 else tuple(mean)
        std3 = tuple(std) * 3 if len(std) == 1 else tuple(std)
        if len(mean3) != 3 or len(std3) != 3:
            raise HptError(f"mean/std must have 1 or 3 channels, got {len(mean)} and {len(std)}")
        steps: list[nn.Module] = []
        active = config.active
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
        self.register_buffer("mean", torch.tensor(mean3).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std3).view(1, 3, 1, 1), persistent=False)
        self.crop = "random_resized_crop" in active

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_rgb(images)
        if not self.crop and x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = self.steps(x)
        return (x - self.mean) / self.std


def to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) -> float32 in [0, 1] with three channels."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {images.dtype}")
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


class EvalTransform(nn.Module):
    """The deterministic transform for evaluation and BatchNorm re-estimation: resize (if needed) + normalize."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image_size: int) -> None:
        super().__init__()
        mean3 = tuple(mean) * 3 if len(mean) == 1 else tuple(mean)
        std3 = tuple(std) * 3 if len(std) == 1 else tuple(std)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean3).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std3).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_rgb(images)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std
