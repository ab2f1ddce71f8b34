"""Pre-decoded caches (hpt.data.cache, `hpt data cache`): the same images as decoding the files, as an npy folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpt.data import open_dataset
from hpt.data.cache import cache_images
from hpt.errors import HptError

from ..conftest import write_npz
from ..helpers import assert_one_line_error, call


def image_tree(root: Path, splits: dict[str, dict[str, int]], mode: str = "RGB") -> Path:
    """split/class/i.{png,jpg} of mixed sizes (20-40 px), so that size= resizes every one."""
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                w, h = (int(v) for v in rng.integers(20, 41, 2))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(root / split / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_the_cache_holds_what_decoding_the_files_gives(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "images", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 2}})
    out = tmp_path / "cached"
    written = cache_images(f"folder:{root}", 16, out, workers=0, batch_size=2)
    assert (written.images, written.split, written.labelled) == (5, "train", True)
    assert written.spec == f"npy:{out}"
    assert sorted(p.name for p in out.iterdir()) == ["train_images.npy", "train_labels.npy"]
    assert np.load(out / "train_images.npy").shape == (5, 16, 16, 3)
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "train_images.npy").stat().st_mode & 0o777 == 0o666 & ~mask  # the mode of a plain new file
    files = open_dataset(f"folder:{root}?size=16")
    cached = open_dataset(written.spec)
    assert cached.image_size == (16, 16) and cached.num_channels == 3 and cached.num_classes == 2
    for indices in ([0, 1, 2, 3, 4], [4, 0]):
        expected, labels = files.get_batch(indices)
        got, got_labels = cached.get_batch(indices)
        assert torch.equal(got, expected) and torch.equal(got_labels, labels)
    cache_images(f"folder:{root}?split=val", 16, out, workers=1)  # a second split beside the first
    val = open_dataset(f"npy:{out}?split=val")
    assert torch.equal(val.get_batch([0, 1, 2])[0], open_dataset(f"folder:{root}?split=val&size=16").get_batch(
        [0, 1, 2])[0])
    assert len(open_dataset(f"npy:{out}?split=all")) == 8


def test_gray_images_are_cached_as_one_channel_and_the_spec_selects_the_images(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "images", {"train": {"a": 4, "b": 4}}, mode="L")
    written = cache_images(f"folder:{root}?classes=1&count=3", 12, tmp_path / "cached", workers=0)
    stored = np.load(tmp_path / "cached" / "train_images.npy")
    assert written.images == 3 and stored.shape == (3, 12, 12)
    files = open_dataset(f"folder:{root}?classes=1&count=3&size=12")
    cached = open_dataset(written.spec)
    assert cached.num_channels == 1
    assert torch.equal(cached.get_batch([0, 1, 2])[0], files.get_batch([0, 1, 2])[0])
    assert files.labels is not None and cached.labels.tolist() == files.labels.tolist()  # as the spec numbers them


def test_unlabelled_images_leave_no_labels_behind(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 20, 3), i * 50, np.uint8)).save(flat / f"{i}.png")
    out = tmp_path / "cached"
    out.mkdir()
    np.save(out / "train_labels.npy", np.zeros(7, np.int64))  # from an earlier cache of other images
    written = cache_images(f"folder:{flat}", 8, out, workers=0)
    assert not written.labelled and sorted(p.name for p in out.iterdir()) == ["train_images.npy"]
    assert open_dataset(written.spec).labels is None


def test_an_npz_is_cached_resized(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", n_train=6, size=10)
    written = cache_images(f"npz:{path}", 14, tmp_path / "cached", workers=0)
    expected = open_dataset(f"npz:{path}?size=14").get_batch(list(range(6)))
    got = open_dataset(written.spec).get_batch(list(range(6)))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize(("spec", "words"), [
    ("wds:{root}/shard-{{000000..000001}}.tar", "cannot be cached"),
    ("folder:{root}?split=all", "cache each split"),
])
def test_what_cannot_be_cached(tmp_path: Path, spec: str, words: str) -> None:
    with pytest.raises(HptError, match=words):
        cache_images(spec.format(root=tmp_path), 16, tmp_path / "out")


def test_wide_images_are_refused(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    for i in range(2):
        tifffile.imwrite(tmp_path / f"{i}.tif", np.full((8, 8), 1000 * i, np.uint16))
    with pytest.raises(HptError, match="train on the data itself"):
        cache_images(f"folder:{tmp_path}", 16, tmp_path / "out")


def test_the_command_writes_the_cache_and_names_its_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = image_tree(tmp_path / "images", {"train": {"a": 2, "b": 1}})
    code, out, err = call(capsys, "data", "cache", f"folder:{root}", "--image-size", "16", "--out",
                          str(tmp_path / "c"), "--workers", "0")
    assert code == 0, err
    assert f"wrote 3 images of 16x16 (with labels) to {tmp_path / 'c'}" in out
    assert f"--data npy:{tmp_path / 'c'}" in out
    code, _, err = call(capsys, "data", "cache", f"folder:{root}", "--image-size", "0", "--out", str(tmp_path / "d"))
    assert_one_line_error(code, err, "image size must be a positive number")
