"""npz data sets: MedMNIST layouts, label shapes, splits, conversions and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpt.data import NpzDataset, open_dataset
from hpt.errors import HptError


def write_npz(path: Path, n: dict[str, int] | None = None, shape: tuple[int, ...] = (8, 8),
              labels: str = "flat", num_classes: int = 3, **extra: np.ndarray) -> Path:
    """Small MedMNIST-style file; pixel (0,0) of image i of split s holds i, so rows can be traced."""
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {}
    for split, count in (n or {"train": 12, "val": 6, "test": 6}).items():
        x = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        x.reshape(count, -1)[:, 0] = np.arange(count)
        arrays[f"{split}_images"] = x
        y = np.arange(count) % num_classes
        if labels == "column":
            arrays[f"{split}_labels"] = y[:, None].astype(np.uint8)
        elif labels == "multi":
            arrays[f"{split}_labels"] = rng.integers(0, 2, (count, num_classes))
        elif labels == "flat":
            arrays[f"{split}_labels"] = y
    arrays.update(extra)
    np.savez_compressed(path, **arrays)
    return path


def test_grayscale_flat_labels(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz')}")
    assert isinstance(ds, NpzDataset)
    assert len(ds) == 12 and ds.num_channels == 1 and ds.image_size == (8, 8)
    assert ds.num_classes == 3 and not ds.multilabel and ds.class_names is None
    image, label = ds[5]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8) and image.is_contiguous()
    assert int(image[0, 0, 0]) == 5
    assert label.dtype == torch.int64 and label.shape == () and int(label) == 5 % 3


def test_rgb_and_column_labels(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz', shape=(6, 5, 3), labels='column')}?split=val")
    assert len(ds) == 6 and ds.num_channels == 3 and ds.image_size == (6, 5)
    assert ds.labels is not None and ds.labels.shape == (6,) and ds.labels.dtype == np.int64
    image, label = ds[1]
    assert image.shape == (3, 6, 5) and image.is_contiguous() and int(label) == 1


def test_single_channel_last_axis(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz', shape=(4, 4, 1))}")
    assert ds.num_channels == 1 and ds[0][0].shape == (1, 4, 4)


def test_multilabel(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz', labels='multi', num_classes=4)}?split=test")
    assert ds.multilabel and ds.num_classes == 4 and ds.labels is not None and ds.labels.shape == (6, 4)
    _, label = ds[2]
    assert label.dtype == torch.int64 and label.shape == (4,)
    images, labels = ds.get_batch([0, 3])
    assert images.shape == (2, 1, 8, 8) and labels.shape == (2, 4)


def test_unlabelled(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz', labels='none')}")
    assert ds.labels is None and ds.num_classes is None
    assert int(ds[0][1]) == -1
    assert ds.get_batch([0, 1])[1].tolist() == [-1, -1]


def test_split_all_concatenates_in_order(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz')}?split=all")
    assert len(ds) == 24
    assert [int(ds[i][0][0, 0, 0]) for i in (0, 11, 12, 18)] == [0, 11, 0, 0]


def test_num_classes_agrees_across_splits(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    x = np.zeros((4, 3, 3), np.uint8)
    np.savez(path, train_images=x, train_labels=np.array([0, 1, 2, 3]), val_images=x, val_labels=np.zeros(4, int))
    assert open_dataset(f"npz:{path}?split=val").num_classes == 4


def test_missing_split_lists_keys(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "a.npz", n={"train": 4})
    with pytest.raises(HptError, match=r"no 'val_images'.*splits in the file: train"):
        open_dataset(f"npz:{path}?split=val")
    other = tmp_path / "b.npz"
    np.savez(other, x=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(HptError, match="keys in the file: x"):
        open_dataset(f"npz:{other}")


def test_label_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, train_images=np.zeros((5, 4, 4), np.uint8), train_labels=np.zeros(4, np.int64))
    with pytest.raises(HptError, match="4 labels but train_images has 5 images"):
        open_dataset(f"npz:{path}")


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(HptError, match="does not exist"):
        open_dataset(f"npz:{tmp_path / 'nope.npz'}")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(HptError, match="cannot read"):
        open_dataset(f"npz:{broken}")


def test_float_images(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    x = np.array([[[0.0, 0.5], [1.0, 0.2]]], dtype=np.float32)
    np.savez(path, train_images=x, train_labels=np.array([0]))
    assert open_dataset(f"npz:{path}")[0][0][0].tolist() == [[0, 128], [255, 51]]
    np.savez(path, train_images=x * 300, train_labels=np.array([0]))
    with pytest.raises(HptError, match=r"float32 with values in \[0, 300\]"):
        open_dataset(f"npz:{path}")


def test_bad_shapes_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4, 4), np.uint8))
    with pytest.raises(HptError, match="channels-last"):
        open_dataset(f"npz:{path}")
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([[0, 2], [1, 0]]))
    with pytest.raises(HptError, match="other than 0 and 1"):
        open_dataset(f"npz:{path}")


def test_grayscale_and_rgb_conversion(tmp_path: Path) -> None:
    rgb = write_npz(tmp_path / "rgb.npz", shape=(5, 5, 3))
    gray = open_dataset(f"npz:{rgb}?grayscale=true")
    assert gray.num_channels == 1
    raw = np.load(rgb)["train_images"][3]
    assert np.array_equal(gray[3][0][0].numpy(), np.asarray(Image.fromarray(raw).convert("L")))
    three = open_dataset(f"npz:{write_npz(tmp_path / 'g.npz')}?grayscale=false")
    image = three[0][0]
    assert image.shape == (3, 8, 8) and torch.equal(image[0], image[2])


def test_size_resizes_with_pil(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "a.npz", shape=(8, 8, 3))
    ds = open_dataset(f"npz:{path}?size=4")
    assert ds.image_size == (4, 4) and ds[0][0].shape == (3, 4, 4)
    expected = np.asarray(Image.fromarray(np.load(path)["train_images"][2]).resize((4, 4), Image.Resampling.BILINEAR))
    assert np.array_equal(ds[2][0].permute(1, 2, 0).numpy(), expected)


def test_get_batch_matches_getitem(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{write_npz(tmp_path / 'a.npz', shape=(4, 4, 3))}")
    images, labels = ds.get_batch([7, 2, 7])
    assert images.shape == (3, 3, 4, 4) and images.is_contiguous()
    for row, i in enumerate([7, 2, 7]):
        assert torch.equal(images[row], ds[i][0]) and int(labels[row]) == int(ds[i][1])
    with pytest.raises(IndexError):
        ds[12]
