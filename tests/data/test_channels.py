"""N-channel images: the stem rule (mean of the RGB filters, scaled by 3/C) for each family's stem key, the
channel count carried by saved backbones, and augmentations defined for any channel count."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from hpt import augment
from hpt.augment import AugmentConfig, EvalTransform, MocoAugment, model_channels
from hpt.errors import HptError
from hpt.models import build_backbone, build_random, export_backbone, save_backbone
from hpt.models.stem import adapt_stem, adapted_weight, stem_channels

ARCHS = {"resnet18": "conv1.weight", "vit_tiny_patch4_32": "patch_embed.proj.weight",
         "convnext_atto_patch2": "stem.0.weight"}


def _build(arch: str) -> torch.nn.Module:
    return build_random(arch, small_stem=True, width=8) if arch.startswith("resnet") else build_random(arch)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_stem_rule_keeps_the_response_to_equal_channels(arch: str) -> None:
    torch.manual_seed(0)
    model = _build(arch).eval()
    rgb = model.state_dict()[ARCHS[arch]].clone()
    gray = torch.rand(2, 1, 32, 32)
    before = model(gray.expand(-1, 3, -1, -1))
    assert adapt_stem(model, 5)
    weight = model.state_dict()[ARCHS[arch]]
    assert weight.shape[1] == 5 and stem_channels(model) == 5
    assert torch.allclose(weight[:, :3], rgb * 3 / 5)
    assert torch.allclose(weight[:, 3], rgb.mean(dim=1) * 3 / 5) and torch.equal(weight[:, 3], weight[:, 4])
    assert torch.allclose(model(gray.expand(-1, 5, -1, -1)), before, atol=1e-4)


def test_one_and_two_channels_start_from_the_mean() -> None:
    rgb = torch.randn(4, 3, 3, 3)
    assert torch.allclose(adapted_weight(rgb, 1)[:, 0], rgb.sum(dim=1), atol=1e-6)  # = gray expanded to RGB
    two = adapted_weight(rgb, 2)
    assert two.shape == (4, 2, 3, 3) and torch.allclose(two[:, 0], rgb.mean(dim=1) * 1.5)
    assert torch.equal(adapted_weight(rgb, 3), rgb)


def test_only_a_three_channel_stem_is_adapted() -> None:
    model = build_random("resnet18", small_stem=True, width=8, in_chans=4)
    assert not adapt_stem(model, 4)
    with pytest.raises(HptError, match="takes 4-channel images but the data has 6 channels"):
        adapt_stem(model, 6)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_saved_backbone_reloads_with_its_channels(arch: str, tmp_path: Path) -> None:
    model = _build(arch)
    adapt_stem(model, 4)
    path = tmp_path / "b.safetensors"
    save_backbone(model, path)
    back, info = build_backbone(str(path))
    assert info is not None and info.metadata["in_chans"] == "4" and stem_channels(back) == 4
    assert torch.equal(back.state_dict()[ARCHS[arch]], model.state_dict()[ARCHS[arch]])
    exported = export_backbone(path, tmp_path / "timm.pt", "timm")  # checked by a strict reload
    assert stem_channels(build_backbone(str(exported))[0]) == 4


def test_model_channels() -> None:
    assert [model_channels(c) for c in (1, 2, 3, 4, 12)] == [3, 2, 3, 4, 12]


def test_augment_any_channel_count(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(augment, "_told", set())
    images = torch.rand(4, 4, 12, 12)  # float images in [0, 1], as 16-bit data gives
    mean, std = (0.5,) * 4, (0.25,) * 4
    with caplog.at_level(logging.INFO, logger="hpt"):
        first = MocoAugment(AugmentConfig(), mean, std, 8)
        MocoAugment(AugmentConfig(), mean, std, 8)
    names = [type(step).__name__ for step in first.steps]
    assert "ColorJitter" not in names and "RandomGrayscale" not in names
    assert {"RandomResizedCrop", "RandomGaussianBlur", "RandomHorizontalFlip"} <= set(names)
    assert caplog.text.count("color_jitter, grayscale skipped") == 1  # logged once
    assert first(images).shape == (4, 4, 8, 8)
    out = EvalTransform(mean, std, 12)(images)
    assert torch.allclose(out, (images - 0.5) / 0.25)


def test_augment_rgb_and_gray_unchanged() -> None:
    rgb = MocoAugment(AugmentConfig(), (0.5,) * 3, (0.2,) * 3, 8)
    assert "ColorJitter" in [type(step).__name__ for step in rgb.steps]
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert EvalTransform((0.5,), (0.2,), 8)(gray).shape == (2, 3, 8, 8)
    with pytest.raises(HptError, match="one value per channel"):
        EvalTransform((0.5, 0.5), (0.2,), 8)
