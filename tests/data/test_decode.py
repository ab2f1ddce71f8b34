"""Decoding one file (hpt.data.decode): JPEG draft decoding of large files, the shared resize, other formats unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hpt.data.decode as decoding
from hpt.data import open_dataset
from hpt.data.arrays import resize_batch
from hpt.data.decode import decode, resize


def smooth_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A photograph-like test image: random 24x18 pixels upscaled (bicubic), so JPEG keeps it well."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (18, 24, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).convert(mode)


def full_decode(path: Path, channels: int, size: int) -> torch.Tensor:
    """The reference: every pixel decoded (no draft), then the same resize."""
    with Image.open(path) as img:
        pixels = np.array(img.convert("L" if channels == 1 else "RGB"))
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.shape[:2] == (size, size):
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return resize(pixels[None], size)[0].contiguous()


def resized_from(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Records the shape of every batch handed to the resize."""
    seen: list[tuple[int, ...]] = []

    def spy(images: np.ndarray, size: int, box: tuple[float, float] | None = None) -> torch.Tensor:
        seen.append(images.shape)
        return resize(images, size, box)

    monkeypatch.setattr(decoding, "resize", spy)
    return seen


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_large_jpeg_is_draft_decoded_close_to_a_full_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               mode: str) -> None:
    path = tmp_path / "big.jpg"
    smooth_image(960, 720, mode).save(path, quality=95)
    seen = resized_from(monkeypatch)
    channels = 1 if mode == "L" else 3
    got = decode(str(path), channels, 224)
    assert got.shape == (channels, 224, 224) and got.dtype == torch.uint8 and got.is_contiguous()
    assert seen == [(1, 360, 480, channels)]  # libjpeg decoded at 1/2 scale: both sides still >= 224
    reference = full_decode(path, channels, 224)
    diff = (got.int() - reference.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 12


@pytest.mark.parametrize("side", [(224, 224), (300, 440), (120, 90)])
def test_a_jpeg_at_or_below_twice_the_size_decodes_exactly_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     side: tuple[int, int]) -> None:
    path = tmp_path / "a.jpg"
    smooth_image(*side).save(path, quality=90)
    seen = resized_from(monkeypatch)
    got = decode(str(path), 3, 224)
    assert torch.equal(got, full_decode(path, 3, 224))
    assert seen == ([] if side == (224, 224) else [(1, side[1], side[0], 3)])  # decoded in full


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".webp"])
def test_other_formats_are_decoded_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    path = tmp_path / f"big{suffix}"
    smooth_image(960, 720).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    seen = resized_from(monkeypatch)
    assert torch.equal(decode(str(path), 3, 224), full_decode(path, 3, 224))
    assert seen == [(1, 720, 960, 3)]


def test_without_a_size_nothing_is_resized_or_drafted(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    smooth_image(960, 720).save(path, quality=95)
    got = decode(str(path), 3, None)
    with Image.open(path) as img:
        expected = torch.from_numpy(np.array(img.convert("RGB")).transpose(2, 0, 1).copy())
    assert torch.equal(got, expected)


def test_sixteen_bit_gray_is_scaled_then_resized(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    levels = (np.arange(300 * 200, dtype=np.uint32).reshape(200, 300) % 65536).astype(np.uint16)
    Image.fromarray(levels).save(path)
    got = decode(str(path), 1, 100)
    eight = np.clip(np.rint(levels / 257.0), 0, 255).astype(np.uint8)
    assert torch.equal(got, resize(eight[None, ..., None], 100)[0].contiguous())


@pytest.mark.parametrize("channels", [1, 3])
def test_the_two_resize_kernels_agree_within_one_level(monkeypatch: pytest.MonkeyPatch, channels: int) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 157, 213, channels), dtype=np.uint8)
    for size in (64, 300):  # shrinking (antialiased) and enlarging
        monkeypatch.setattr(decoding, "fast_resize", lambda: True)
        fast = resize(images, size).contiguous()
        monkeypatch.setattr(decoding, "fast_resize", lambda: False)
        pillow = resize(images, size).contiguous()
        assert fast.shape == pillow.shape == (2, channels, size, size)
        assert (fast.int() - pillow.int()).abs().max() <= 1
        single = np.asarray(Image.fromarray(images[0, ..., 0] if channels == 1 else images[0]).resize(
            (size, size), Image.Resampling.BILINEAR))
        assert np.array_equal(pillow[0].permute(1, 2, 0).numpy().reshape(single.shape), single)


def test_resize_batch_keeps_the_channels_last_layout() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    out = resize_batch(images, 20)
    assert out.shape == (3, 20, 20, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, resize(images, 20).permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("width", [900, 910, 1003])
def test_a_folder_of_large_jpegs_gives_size_x_size_images(tmp_path: Path, width: int) -> None:
    """910 / 4 and 1003 / 4 are fractions of a pixel: the draft's last column is mapped as the part it covers."""
    for i in range(3):
        smooth_image(width, 700 + i, seed=i).save(tmp_path / f"{i}.jpg", quality=90)
    ds = open_dataset(f"folder:{tmp_path}?size=128")
    images, _ = ds.get_batch([0, 1, 2])
    assert images.shape == (3, 3, 128, 128) and images.dtype == torch.uint8
    for i in range(3):
        reference = full_decode(tmp_path / f"{i}.jpg", 3, 128)
        diff = (images[i].int() - reference.int()).abs()
        assert diff.float().mean() < 1.0 and diff.max() <= 12


@pytest.mark.parametrize("fast", [True, False])
def test_a_box_maps_the_part_it_covers(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    monkeypatch.setattr(decoding, "fast_resize", lambda: fast)
    images = np.random.default_rng(3).integers(0, 256, (1, 175, 228, 3), dtype=np.uint8)
    got = resize(images, 128, (227.5, 175.0)).contiguous()
    expected = np.asarray(Image.fromarray(images[0]).resize((128, 128), Image.Resampling.BILINEAR,
                                                            box=(0, 0, 227.5, 175.0)))
    assert got.shape == (1, 3, 128, 128)
    assert (got[0].permute(1, 2, 0).int() - torch.from_numpy(expected.astype(np.int32))).abs().max() <= 1
    assert torch.equal(resize(images, 128, (228.0, 175.0)), resize(images, 128))  # the whole image: no box
