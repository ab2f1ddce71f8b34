"""TIFF files in folder and csv data: 16-bit and 4-channel images read in full as float, 8-bit ones as before,
and a one-line error naming the extra when tifffile is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpt.data import channel_stats, open_dataset
from hpt.errors import HptError, MissingExtraError

tifffile = pytest.importorskip("tifffile")


def write_tiff_tree(root: Path, per_class: dict[str, int], side: int = 12, channels: int = 4, seed: int = 0) -> Path:
    """Class subfolders of uint16 (H, W, channels) TIFFs; channel c of class k is brighter for larger c and k."""
    rng = np.random.default_rng(seed)
    for k, (name, count) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            levels = (np.arange(channels) + 1) * 8000 + k * 12000
            pixels = rng.integers(0, 8000, (side, side, channels)) + levels
            tifffile.imwrite(root / name / f"{i}.tif", pixels.astype(np.uint16), photometric="minisblack",
                             planarconfig="contig")
    return root


def test_four_channel_sixteen_bit_read_in_full(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) * 2000 + 1
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="minisblack", planarconfig="contig")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.num_channels == 4 and ds.image_size == (2, 3)
    image = ds[0][0]
    assert image.dtype == torch.float32 and image.shape == (4, 2, 3)
    assert np.allclose(image.double().numpy(), pixels.transpose(2, 0, 1) / 65535.0, atol=1e-7)


def test_channels_first_tiff(tmp_path: Path) -> None:
    pixels = np.stack([np.full((5, 6), v, np.uint16) for v in (0, 1000, 65535)])  # (3, H, W), 16-bit
    tifffile.imwrite(tmp_path / "a.tiff", pixels, photometric="rgb", planarconfig="separate")
    image = open_dataset(f"folder:{tmp_path}")[0][0]
    assert image.shape == (3, 5, 6) and image[:, 0, 0].tolist() == pytest.approx([0.0, 1000 / 65535, 1.0])


def test_sixteen_bit_gray_keeps_its_levels(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.array([[0, 1, 2, 65535]], np.uint16))
    image = open_dataset(f"folder:{tmp_path}")[0][0]
    assert image.shape == (1, 1, 4) and len(set(image.flatten().tolist())) == 4  # 0, 1, 2 stay apart


def test_eight_bit_tiffs_stay_uint8(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "a.tif")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.num_channels == 3 and ds[0][0].dtype == torch.uint8 and ds[0][0][0, 0, 0] == 7


def test_stats_and_resize_per_channel(tmp_path: Path) -> None:
    write_tiff_tree(tmp_path, {"a": 3, "b": 3})
    ds = open_dataset(f"folder:{tmp_path}?size=8")
    images, labels = ds.get_batch(range(len(ds)))
    assert images.shape == (6, 4, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    mean, std = channel_stats(ds, cache_dir=tmp_path.parent / "stats")
    expected = images.double().mean(dim=(0, 2, 3))
    assert len(mean) == 4 and np.allclose(mean, expected.numpy(), atol=1e-6)
    assert list(mean) == sorted(mean) and all(s > 0 for s in std)


def test_mixed_channel_counts_are_an_error(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4, 4), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((4, 4, 2), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(HptError, match="different channel counts"):
        open_dataset(f"folder:{tmp_path}")


def test_float_tiff_still_rejected(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(HptError, match="floating-point pixels"):
        open_dataset(f"folder:{tmp_path}")


def test_missing_tifffile_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4, 4), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(MissingExtraError) as caught:
        open_dataset(f"folder:{tmp_path}")
    message = str(caught.value)
    assert "\n" not in message and message.endswith("needs tifffile: pip install 'hpt[tiff]'")
    assert "a.tif" in message


def test_missing_tifffile_leaves_eight_bit_tiffs_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "a.tif")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.num_channels == 1 and ds[0][0].dtype == torch.uint8
