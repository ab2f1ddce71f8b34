"""npy folders: memory-mapped <split>_images.npy read by rows, options like npz, errors, npz conversion."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hpt.data import (
    NpyDataset,
    make_loader,
    npz_to_npy_dir,
    open_dataset,
    parse_data_spec,
)
from hpt.errors import HptError

from ..conftest import write_npz


@pytest.fixture
def npy_dir(tiny_npz: Path, tmp_path: Path) -> Path:
    return npz_to_npy_dir(tiny_npz, tmp_path / "npy")


def test_conversion_round_trip(tiny_npz: Path, npy_dir: Path, tiny_gray_npz: Path, tmp_path: Path) -> None:
    for source, folder in ((tiny_npz, npy_dir), (tiny_gray_npz, npz_to_npy_dir(tiny_gray_npz, tmp_path / "g"))):
        with np.load(source) as archive:
            assert sorted(p.name for p in folder.iterdir()) == sorted(f"{k}.npy" for k in archive.files)
            for key in archive.files:
                saved = np.load(folder / f"{key}.npy")
                assert saved.dtype == archive[key].dtype and np.array_equal(saved, archive[key])


@pytest.mark.parametrize("options", ["", "split=val", "split=all", "split=test&fraction=0.5&seed=3", "count=10",
                                     "classes=3,1", "grayscale=true", "size=8&split=val"])
def test_same_content_as_npz(tiny_npz: Path, npy_dir: Path, options: str) -> None:
    a = open_dataset(f"npz:{tiny_npz}?{options}")
    b = open_dataset(f"npy:{npy_dir}?{options}")
    assert isinstance(b, NpyDataset) and not b.in_memory
    assert (len(b), b.num_classes, b.num_channels, b.image_size) == (len(a), a.num_classes, a.num_channels,
                                                                     a.image_size)
    idx = [5, 0, 5, len(a) - 1, 2]  # unsorted, with a repeat
    xa, ya = a.get_batch(idx)
    xb, yb = b.get_batch(idx)
    assert xb.dtype == torch.uint8 and xb.is_contiguous() and torch.equal(xa, xb) and torch.equal(ya, yb)
    image, label = b[3]
    assert torch.equal(image, a[3][0]) and int(label) == int(a[3][1])


def test_gray_multilabel_and_unlabelled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train_images.npy", rng.integers(0, 256, (12, 7, 5), dtype=np.uint8))
    np.save(tmp_path / "train_labels.npy", rng.integers(0, 2, (12, 4)))
    np.save(tmp_path / "extra_images.npy", rng.integers(0, 256, (3, 7, 5), dtype=np.uint8))
    ds = open_dataset(f"npy:{tmp_path}")
    assert ds.multilabel and ds.num_classes == 4 and ds.num_channels == 1 and ds.image_size == (7, 5)
    x, y = ds.get_batch([0, 11])
    assert x.shape == (2, 1, 7, 5) and y.shape == (2, 4)
    extra = open_dataset(f"npy:{tmp_path}?split=extra&grayscale=false")
    assert extra.labels is None and extra.num_channels == 3 and extra.get_batch([2])[1].tolist() == [-1]
    assert len(open_dataset(f"npy:{tmp_path}?split=all")) == 12  # all = the standard splits present


def test_pickle_is_small_and_loader_works(npy_dir: Path) -> None:
    ds = open_dataset(f"npy:{npy_dir}")
    assert len(pickle.dumps(ds)) < 8_000  # no image data travels to DataLoader workers
    images, labels = next(iter(make_loader(ds, 8, seed=1, workers=0)))
    assert images.shape == (8, 3, 16, 16) and labels.shape == (8,)
    assert ds.fingerprint().startswith("npy:")


def test_fortran_order_file(tmp_path: Path) -> None:
    x = np.asfortranarray(np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2))
    np.save(tmp_path / "train_images.npy", x)
    ds = open_dataset(f"npy:{tmp_path}")
    assert torch.equal(ds.get_batch([3, 1])[0][:, 0], torch.from_numpy(np.ascontiguousarray(x[[3, 1]])))


def _write(folder: Path, images: np.ndarray, labels: np.ndarray | None = None, split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_images.npy", images)
    if labels is not None:
        np.save(folder / f"{split}_labels.npy", labels)
    return folder


def test_errors(tmp_path: Path, tiny_npz: Path) -> None:
    with pytest.raises(HptError, match="does not exist"):
        open_dataset(f"npy:{tmp_path / 'missing'}")
    with pytest.raises(HptError, match="is a file.*write npz:PATH"):
        open_dataset(f"npy:{tiny_npz}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HptError, match="holds no <split>_images.npy.*npz_to_npy_dir"):
        open_dataset(f"npy:{tmp_path / 'empty'}")
    ok = _write(tmp_path / "ok", np.zeros((4, 3, 3), np.uint8))
    with pytest.raises(HptError, match=r"no val_images.npy for split=val \(splits in the folder: train\)"):
        open_dataset(f"npy:{ok}?split=val")
    with pytest.raises(HptError, match=r"shape \(4, 3, 3, 2\); expected"):
        open_dataset(f"npy:{_write(tmp_path / 'shape', np.zeros((4, 3, 3, 2), np.uint8))}")
    with pytest.raises(HptError, match="is float32, but npy images must be uint8"):
        open_dataset(f"npy:{_write(tmp_path / 'dtype', np.zeros((4, 3, 3), np.float32))}")
    with pytest.raises(HptError, match="holds no images"):
        open_dataset(f"npy:{_write(tmp_path / 'none', np.zeros((0, 3, 3), np.uint8))}")
    with pytest.raises(HptError, match="has 3 labels but train_images has 4 images"):
        open_dataset(f"npy:{_write(tmp_path / 'count', np.zeros((4, 3, 3), np.uint8), np.arange(3))}")
    truncated = _write(tmp_path / "cut", np.zeros((40, 8, 8), np.uint8))
    data = (truncated / "train_images.npy").read_bytes()
    (truncated / "train_images.npy").write_bytes(data[:-100])
    with pytest.raises(HptError, match="cannot read .*train_images.npy as an .npy array"):
        open_dataset(f"npy:{truncated}")
    with pytest.raises(HptError, match="skip_corrupt only applies to image files"):
        parse_data_spec(f"npy:{ok}?skip_corrupt=true")
    with pytest.raises(HptError, match="has no <split>_images array"):
        np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 3), np.uint8))
        npz_to_npy_dir(tmp_path / "bad.npz", tmp_path / "out")


def test_conversion_checks_and_converts(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", train_images=np.full((3, 4, 4), 0.5, np.float32), train_labels=np.arange(3))
    out = npz_to_npy_dir(tmp_path / "f.npz", tmp_path / "out")
    saved = np.load(out / "train_images.npy")
    assert saved.dtype == np.uint8 and saved.shape == (3, 4, 4) and int(saved[0, 0, 0]) == 128
    np.savez(tmp_path / "g.npz", train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.arange(2))
    with pytest.raises(HptError, match="has 2 labels but train_images has 3 images"):
        npz_to_npy_dir(tmp_path / "g.npz", tmp_path / "out2")


def test_classes_agree_across_splits(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", n_train=8, n_val=8, n_test=8, classes=4)
    folder = npz_to_npy_dir(path, tmp_path / "d")
    labels = np.load(folder / "val_labels.npy")
    np.save(folder / "val_labels.npy", np.minimum(labels, 1))  # val only has classes 0 and 1
    assert open_dataset(f"npy:{folder}?split=val").num_classes == 4
