from __future__ import annotations

import pytest
import torch

from hpt.augment import AUGMENTATIONS, AugmentConfig, EvalTransform, MocoAugment, blur_kernel_size
from hpt.errors import HptError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)


def batch(n: int = 8, c: int = 3, size: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def step_names(aug: MocoAugment) -> list[str]:
    return [type(m).__name__ for m in aug.steps]


def test_full_pipeline_order_and_output() -> None:
    aug = MocoAugment(AugmentConfig(), MEAN, STD, image_size=16)
    assert step_names(aug) == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "RandomGaussianBlur",
                               "RandomHorizontalFlip"]
    out = aug(batch())
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_is_removable(name: str) -> None:
    aug = MocoAugment(AugmentConfig(remove=[name]), MEAN, STD, image_size=16)
    expected = {"random_resized_crop": "RandomResizedCrop", "color_jitter": "ColorJitter",
                "grayscale": "RandomGrayscale", "gaussian_blur": "RandomGaussianBlur",
                "horizontal_flip": "RandomHorizontalFlip"}
    assert expected[name] not in step_names(aug) and len(aug.steps) == len(AUGMENTATIONS) - 1
    assert aug(batch()).shape == (8, 3, 16, 16)


def test_everything_removed_is_the_deterministic_eval_transform() -> None:
    aug = MocoAugment(AugmentConfig(remove=list(AUGMENTATIONS)), MEAN, STD, image_size=16)
    images = batch()
    assert torch.allclose(aug(images), EvalTransform(MEAN, STD, 16)(images))
    assert torch.allclose(aug(images), aug(images))


def test_each_image_gets_its_own_draw() -> None:
    images = batch(1).repeat(16, 1, 1, 1)
    out = MocoAugment(AugmentConfig(), MEAN, STD, image_size=16)(images)
    distinct = {tuple(out[i].flatten()[:50].tolist()) for i in range(16)}
    assert len(distinct) > 8


def test_grayscale_batch_becomes_three_channels_and_uses_its_one_channel_stats() -> None:
    images = batch(4, c=1)
    out = EvalTransform((0.5,), (0.25,), 20)(images)
    assert out.shape == (4, 3, 20, 20)
    assert torch.allclose(out[:, 0], out[:, 2])
    assert torch.allclose(out[:, 0], (images[:, 0].float() / 255 - 0.5) / 0.25)


def test_unknown_augmentation_name_is_an_error() -> None:
    with pytest.raises(HptError, match="unknown augmentation.*grayscal"):
        AugmentConfig(remove=["grayscal"])


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_side() -> None:
    assert blur_kernel_size(32) == 3 and blur_kernel_size(224) == 23 and blur_kernel_size(64) == 7
