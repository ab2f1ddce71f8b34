"""In-memory image arrays from a MedMNIST-style .npz (train_images, train_labels, val_..., test_...)."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hpt.data.base import ImageDataset, select
from hpt.data.decode import resize
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class NpzDataset(ImageDataset):
    """All images of one split (or "all" splits) of an .npz file, held as one uint8 (N,C,H,W) array."""

    in_memory = True

    def __init__(self, spec: DataSpec) -> None:
        if spec.kind != "npz":
            raise ValueError(f"NpzDataset needs an npz spec, got {spec.kind}")
        self.spec = spec
        self.skipped = []
        path = spec.path.expanduser()
        self.path = path
        with _open_npz(path) as archive:
            keys = sorted(archive.files)
            splits = _splits_to_read(spec.split, keys, path)
            images, labels = _read_splits(archive, splits, path)
            num_classes = _count_classes(archive, keys, labels, path)
        self.multilabel = labels is not None and labels.ndim == 2
        chosen = select(spec, len(images), labels, num_classes, None)
        if len(chosen.indices) < len(images):
            images = images[chosen.indices]
        self.labels = chosen.labels
        self.num_classes = chosen.num_classes
        self.class_names = None
        images = _to_channels(images, spec.grayscale)
        if spec.size is not None and images.shape[1:3] != (spec.size, spec.size):
            images = _resize_all(images, spec.size)
        # Stored channels-first once, so __getitem__ is a zero-copy view and batches are one gather.
        self.images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        self.num_channels = int(self.images.shape[1])
        self.image_size = (int(self.images.shape[2]), int(self.images.shape[3]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i])

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.images[idx]), self.batch_labels(idx)

    def fingerprint(self) -> str:
        st = os.stat(self.path)
        return f"npz:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise HptError(f"npz file {path} {where}; check the path in the data spec")
    try:
        archive: np.lib.npyio.NpzFile = np.load(path, allow_pickle=False)
        return archive
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise HptError(f"cannot read {path} as an .npz archive ({err}); check that the file is complete") from None


def read_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of an npz archive; an array of Python objects (never unpickled) is an HptError naming the fix."""
    try:
        return archive[key]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise HptError(f"cannot read {key} of {path} ({err}); check that the file is complete") from None
        raise object_array_error(path, key) from None


def object_array_error(path: Path, key: str) -> HptError:
    """The error for an array saved with dtype=object: hpt never unpickles data files."""
    fix = f"{key}.astype(np.int64)" if key.endswith("labels") else f"{key}.astype(np.uint8) of one image shape"
    return HptError(f"{path}: {key} holds Python objects (dtype=object), which hpt does not load (unpickling can run "
                    f"code); save it as a numeric array, e.g. {fix}")


def _splits_to_read(split: str, keys: list[str], path: Path) -> list[str]:
    present = [s for s in SPLITS if f"{s}_images" in keys]
    if split == "all":
        if not present:
            raise HptError(f"{path} has none of train_images, val_images, test_images (it has: {', '.join(keys)}); "
                           "an npz data set needs <split>_images arrays")
        return present
    if f"{split}_images" not in keys:
        available = [k[: -len("_images")] for k in keys if k.endswith("_images")]
        hint = f"splits in the file: {', '.join(available)}" if available else f"keys in the file: {', '.join(keys)}"
        raise HptError(f"{path} has no '{split}_images' array for split={split} ({hint}); "
                       f"pick one of those splits{' or all' if available else ''}")
    return [split]


def _read_splits(archive: np.lib.npyio.NpzFile, splits: list[str], path: Path
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    images: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    for split in splits:
        x = _check_images(read_array(archive, f"{split}_images", path), f"{split}_images", path)
        y = _check_labels(read_array(archive, f"{split}_labels", path), f"{split}_labels", len(x), path) \
            if f"{split}_labels" in archive.files else None
        if images and x.shape[1:] != images[0].shape[1:]:
            raise HptError(f"{path}: {split}_images has images of shape {x.shape[1:]} but {splits[0]}_images has "
                           f"{images[0].shape[1:]}; split=all needs the same shape in every split")
        images.append(x)
        labels.append(y)
    if any(y is None for y in labels):
        if any(y is not None for y in labels):
            log.warning("%s: some splits have no labels; split=%s is used unlabelled", path, "+".join(splits))
        label_array = None
    else:
        shapes = {y.shape[1:] for y in labels if y is not None}
        if len(shapes) > 1:
            raise HptError(f"{path}: the splits have different label shapes {sorted(shapes)}; "
                           "split=all needs the same label layout in every split")
        present = [y for y in labels if y is not None]
        label_array = np.concatenate(present) if len(present) > 1 else present[0]
    image_array = np.concatenate(images) if len(images) > 1 else images[0]
    return image_array, label_array


def _check_images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Images as uint8 (N,H,W,C) with C in {1, 3}; integer 0..255 and float 0..1 arrays are converted."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise HptError(f"{path}: {key} has shape {x.shape}; expected (N,H,W) grayscale or (N,H,W,1|3) "
                       "channels-last images")
    if len(x) == 0:
        raise HptError(f"{path}: {key} holds no images")
    if x.dtype == np.uint8:
        return x
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if np.issubdtype(x.dtype, np.integer) and lo >= 0 and hi <= 255:
        log.info("%s: %s is %s with values in [0, 255]; converted to uint8", path, key, x.dtype)
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        log.info("%s: %s is %s in [0, 1]; converted to uint8 as round(x * 255)", path, key, x.dtype)
        return np.rint(x * 255.0).astype(np.uint8)
    raise HptError(f"{path}: {key} is {x.dtype} with values in [{lo:g}, {hi:g}]; expected uint8 images "
                   "(integers 0..255 or floats in [0, 1] are converted); rescale the images and save them as uint8")


def _check_labels(y: np.ndarray, key: str, num_images: int, path: Path) -> np.ndarray:
    """Labels as int64 (N,) single-label or (N,K) 0/1 multi-label; (N,1) is squeezed."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise HptError(f"{path}: {key} has shape {y.shape}; expected (N,), (N,1) or (N,K) labels")
    if len(y) != num_images:
        raise HptError(f"{path}: {key} has {len(y)} labels but {key.replace('_labels', '_images')} has "
                       f"{num_images} images; they must match one to one")
    integral = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)
    whole_floats = np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    if not (integral or whole_floats):
        raise HptError(f"{path}: {key} is {y.dtype} with non-integer values; labels must be class indices "
                           "or 0/1 multi-label vectors")
    y = y.astype(np.int64)
    if y.ndim == 2 and not np.isin(y, (0, 1)).all():
        raise HptError(f"{path}: {key} is (N,K) but holds values other than 0 and 1; multi-label vectors "
                       "must be 0/1 (single-label data should be (N,))")
    if y.ndim == 1 and len(y) and y.min() < 0:
        raise HptError(f"{path}: {key} has negative class indices (min {y.min()}); classes must be 0..K-1")
    return y


def _count_classes(archive: np.lib.npyio.NpzFile, keys: list[str], labels: np.ndarray | None,
                   path: Path) -> int | None:
    """K for multi-label; for single-label 1 + the largest label over every split (so splits agree)."""
    if labels is None:
        return None
    if labels.ndim == 2:
        return int(labels.shape[1])
    top = int(labels.max())
    for key in keys:
        if key.endswith("_labels") and key[: -len("_labels")] in SPLITS:
            other = read_array(archive, key, path)
            single = other.ndim == 1 or (other.ndim == 2 and other.shape[1] == 1)
            if other.size and single and np.issubdtype(other.dtype, np.number):
                top = max(top, int(np.max(other)))
    return top + 1


def _to_channels(images: np.ndarray, grayscale: bool | None) -> np.ndarray:
    """Force 1 channel (ITU-R 601 luma, as PIL's convert('L')) or 3 channels (repeat) when asked."""
    channels = images.shape[-1]
    if grayscale is True and channels == 3:
        rgb = images.astype(np.uint32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)[..., None]
    if grayscale is False and channels == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N,H,W,C) uint8 images to size x size (bilinear, antialiased: resize_batch)."""
    out = resize_batch(images, size)
    log.info("resized %d images to %dx%d in memory", len(images), size, size)
    return out


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W,C) uint8 -> (N,size,size,C) uint8, bilinear and antialiased as every 8-bit image (hpt.data.decode)."""
    return np.ascontiguousarray(resize(images, size).permute(0, 2, 3, 1).numpy())
