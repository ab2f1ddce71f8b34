"""Subsetting: classes filter with remapping, fraction/count stratified by class, seeded and stable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpt.data import open_dataset
from hpt.data.sampling import stratified_choice
from hpt.errors import HptError


@pytest.fixture()
def npz(tmp_path: Path) -> Path:
    """Imbalanced 5-class set: class c has 10 * (c + 1) images (150 in all); pixel (0,0) = row index % 256."""
    labels = np.repeat(np.arange(5), [10, 20, 30, 40, 50])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    x = np.zeros((len(labels), 4, 4), np.uint8)
    x[:, 0, 0] = np.arange(len(labels))
    path = tmp_path / "d.npz"
    np.savez(path, train_images=x, train_labels=labels, val_images=x[:20], val_labels=labels[:20],
             test_images=x[:5], test_labels=labels[:5] * 0 + 4)
    return path


def rows(ds) -> list[int]:  # noqa: ANN001
    return [int(ds[i][0][0, 0, 0]) for i in range(len(ds))]


def test_classes_filter_and_remap(npz: Path) -> None:
    ds = open_dataset(f"npz:{npz}?classes=4,1")
    assert ds.num_classes == 2 and len(ds) == 70
    original = np.load(npz)["train_labels"]
    kept = rows(ds)
    assert kept == sorted(kept)  # stable file order
    assert [int(original[r]) for r in kept] == [4 if lab == 0 else 1 for lab in ds.labels.tolist()]


def test_classes_unknown_or_absent(npz: Path) -> None:
    with pytest.raises(HptError, match=r"classes \[7\] do not exist.*0..4"):
        open_dataset(f"npz:{npz}?classes=1,7")
    with pytest.raises(HptError, match="no images of classes"):
        open_dataset(f"npz:{npz}?split=test&classes=0")


def test_classes_on_multilabel_or_unlabelled(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, train_images=np.zeros((3, 2, 2), np.uint8), train_labels=np.eye(3, dtype=np.int64))
    with pytest.raises(HptError, match="single-label"):
        open_dataset(f"npz:{path}?classes=0")
    np.savez(path, train_images=np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(HptError, match="unlabelled"):
        open_dataset(f"npz:{path}?classes=0")


def test_fraction_is_stratified_seeded_and_sorted(npz: Path) -> None:
    ds = open_dataset(f"npz:{npz}?fraction=0.1&seed=3")
    assert len(ds) == 15
    assert np.bincount(ds.labels, minlength=5).tolist() == [1, 2, 3, 4, 5]
    assert rows(ds) == sorted(rows(ds))
    assert rows(open_dataset(f"npz:{npz}?fraction=0.1&seed=3")) == rows(ds)
    assert rows(open_dataset(f"npz:{npz}?fraction=0.1&seed=4")) != rows(ds)


def test_small_fraction_keeps_every_class(npz: Path) -> None:
    ds = open_dataset(f"npz:{npz}?fraction=0.04")  # 6 images for 5 classes: smallest class would get 0.4
    assert len(ds) == 6 and set(ds.labels.tolist()) == {0, 1, 2, 3, 4}


def test_exact_count(npz: Path) -> None:
    for count in (5, 7, 33, 149, 150):
        ds = open_dataset(f"npz:{npz}?count={count}")
        assert len(ds) == count
        assert len(set(ds.labels.tolist())) == 5
    with pytest.raises(HptError, match="count=151 but the data set has only 150 images"):
        open_dataset(f"npz:{npz}?count=151")


def test_count_after_classes_filter(npz: Path) -> None:
    ds = open_dataset(f"npz:{npz}?classes=0,4&count=12")
    assert len(ds) == 12 and sorted(set(ds.labels.tolist())) == [0, 1]
    assert np.bincount(ds.labels).tolist() == [2, 10]


def test_unlabelled_and_multilabel_subsets(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, train_images=np.zeros((40, 2, 2), np.uint8),
             train_labels=np.random.default_rng(0).integers(0, 2, (40, 3)))
    assert len(open_dataset(f"npz:{path}?count=9")) == 9
    np.savez(path, train_images=np.zeros((40, 2, 2), np.uint8))
    assert len(open_dataset(f"npz:{path}?fraction=0.5")) == 20


def test_stratified_choice_fewer_images_than_classes() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    picked = stratified_choice(labels, 2, np.random.default_rng(0))
    assert len(picked) == 2 and len(set(picked.tolist())) == 2
    assert picked.tolist() == sorted(picked.tolist())


def test_folder_fraction_applies_after_skipping_corrupt(tmp_path: Path) -> None:
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((3, 3), i, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "z.png").write_bytes(b"bad")
    ds = open_dataset(f"folder:{tmp_path}?count=20&skip_corrupt=true")
    assert len(ds) == 20 and len(ds.skipped) == 1
