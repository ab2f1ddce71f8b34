"""Folder data sets: class trees, flat folders, split subfolders, mixed sizes, corrupt files, decoding."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpt.data import FolderDataset, open_dataset
from hpt.errors import HptError


def save(path: Path, size: tuple[int, int] = (6, 5), mode: str = "L", value: int = 0) -> Path:
    """Write a small image (PIL size order: width, height) whose pixel (0,0) holds `value`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    arr[0, 0] = value
    Image.fromarray(arr, mode=None).save(path)
    return path


def make_tree(root: Path, per_class: dict[str, int], ext: str = "png", mode: str = "L") -> None:
    for c, n in per_class.items():
        for i in range(n):
            save(root / c / f"{i:03d}.{ext}", mode=mode, value=i)


def test_class_tree(tmp_path: Path) -> None:
    make_tree(tmp_path, {"normal": 3, "pneumonia": 2})
    (tmp_path / "notes.txt").write_text("ignored")
    ds = open_dataset(f"folder:{tmp_path}")
    assert isinstance(ds, FolderDataset)
    assert ds.class_names == ["normal", "pneumonia"] and ds.num_classes == 2
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.num_channels == 1 and ds.image_size == (5, 6)
    image, label = ds[4]
    assert image.shape == (1, 5, 6) and image.dtype == torch.uint8 and int(label) == 1 and int(image[0, 0, 0]) == 1


def test_nested_files_and_hidden_entries(tmp_path: Path) -> None:
    save(tmp_path / "a" / "deep" / "x.png")
    save(tmp_path / "a" / "y.PNG")
    save(tmp_path / "a" / ".hidden.png")
    save(tmp_path / ".cache" / "z.png")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.class_names == ["a"] and len(ds) == 2


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / f"{i}.jpg", mode="RGB", value=i)
    ds = open_dataset(str(tmp_path))
    assert ds.labels is None and ds.num_classes is None and ds.num_channels == 3
    image, label = ds[0]
    assert image.shape == (3, 5, 6) and int(label) == -1


def test_split_subfolders_share_class_indices(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 2, "b": 2, "c": 1})
    make_tree(tmp_path / "val", {"a": 1, "c": 1})
    val = open_dataset(f"folder:{tmp_path}?split=val")
    assert val.class_names == ["a", "b", "c"] and val.labels is not None and val.labels.tolist() == [0, 2]
    assert len(open_dataset(f"folder:{tmp_path}?split=all")) == 7
    with pytest.raises(HptError, match="no 'test' subfolder.*train, val"):
        open_dataset(f"folder:{tmp_path}?split=test")


def test_folder_without_splits_is_train_only(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 1})
    assert len(open_dataset(f"folder:{tmp_path}?split=train")) == 1
    with pytest.raises(HptError, match="only has split=train"):
        open_dataset(f"folder:{tmp_path}?split=val")


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(HptError, match="no images"):
        open_dataset(f"folder:{tmp_path}")
    with pytest.raises(HptError, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'nope'}")


def test_loose_images_beside_class_folders(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 1})
    save(tmp_path / "loose.png")
    with pytest.raises(HptError, match="top level"):
        open_dataset(f"folder:{tmp_path}")


def test_mixed_sizes_error_and_size_fix(tmp_path: Path) -> None:
    save(tmp_path / "a.png", size=(32, 32))
    save(tmp_path / "b.png", size=(64, 48))
    with pytest.raises(HptError) as err:
        open_dataset(f"folder:{tmp_path}")
    assert str(err.value).startswith("images of mixed sizes (32x32 in a.png, 64x48 in b.png); pass size=N")
    ds = open_dataset(f"folder:{tmp_path}?size=16")
    assert ds.image_size == (16, 16)
    assert [tuple(ds[i][0].shape) for i in range(2)] == [(1, 16, 16), (1, 16, 16)]
    images, _ = ds.get_batch([0, 1])
    assert images.shape == (2, 1, 16, 16)
    expected = np.asarray(Image.open(tmp_path / "b.png").convert("L").resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(ds[1][0][0].numpy(), expected)


def test_size_change_after_open_fails_at_load(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    ds = open_dataset(f"folder:{tmp_path}")
    save(tmp_path / "b.png", size=(9, 9))
    with pytest.raises(HptError, match="mixed sizes"):
        ds[1]


def test_corrupt_files_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"a": 3, "b": 2})
    (tmp_path / "a" / "bad1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "b" / "bad2.jpg").write_bytes(b"not an image")
    with pytest.raises(HptError) as err:
        open_dataset(f"folder:{tmp_path}")
    msg = str(err.value)
    assert "2 of 7 image files cannot be read" in msg and "a/bad1.png" in msg and "b/bad2.jpg" in msg
    assert "skip_corrupt=true" in msg
    with caplog.at_level(logging.WARNING, logger="hpt"):
        ds = open_dataset(f"folder:{tmp_path}?skip_corrupt=true")
    assert len(ds) == 5 and len(ds.skipped) == 2 and "skipped 2" in caplog.text
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 0, 1, 1]


def test_truncated_pixels_fail_at_load(tmp_path: Path) -> None:
    good = save(tmp_path / "a.jpg", size=(64, 64), mode="RGB")
    save(tmp_path / "b.jpg", size=(64, 64), mode="RGB", value=1)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    ds = open_dataset(f"folder:{tmp_path}")
    with pytest.raises(HptError, match="cannot decode"):
        ds[0]
    skipping = open_dataset(f"folder:{tmp_path}?skip_corrupt=true")
    image, _ = skipping[0]  # replaced by the next decodable image
    assert torch.equal(image, skipping[1][0])


def test_mode_detection_and_forcing(tmp_path: Path) -> None:
    save(tmp_path / "a.png", mode="L")
    save(tmp_path / "b.png", mode="RGB")
    assert open_dataset(f"folder:{tmp_path}").num_channels == 3  # any colour image -> RGB
    ds = open_dataset(f"folder:{tmp_path}?grayscale=true")
    assert ds.num_channels == 1 and ds[1][0].shape == (1, 5, 6)


def test_sixteen_bit_png_is_scaled(tmp_path: Path) -> None:
    arr = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.num_channels == 1 and ds[0][0][0].tolist() == [[0, 1, 255, 128]]


def test_classes_filter_on_folder(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2, "b": 1, "c": 3})
    ds = open_dataset(f"folder:{tmp_path}?classes=2,0")
    assert ds.class_names == ["c", "a"] and ds.labels is not None and ds.labels.tolist() == [1, 1, 0, 0, 0]


def test_float_tiff_rejected_at_open(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 3), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(HptError, match="floating-point pixels"):
        open_dataset(f"folder:{tmp_path}")


def test_summary_line(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2, "b": 1})
    ds = open_dataset(f"folder:{tmp_path}?size=8")
    assert ds.summary() == f"folder:{tmp_path}?size=8: 3 images 1x8x8, 2 classes"
