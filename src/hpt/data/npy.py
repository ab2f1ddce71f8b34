"""Image arrays too large for memory: a folder of ``<split>_images.npy`` (+ ``<split>_labels.npy``) read by rows.

The images are never loaded whole: opening reads the .npy headers (``np.load(..., mmap_mode="r")``), and
:meth:`NpyDataset.get_batch` reads only the requested rows with plain file reads (contiguous rows in one
read), so the pages are not kept mapped in the process. Labels are small and read into memory.
:func:`npz_to_npy_dir` turns a MedMNIST-style .npz into such a folder.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.atomic import atomic_write
from hpt.data.arrays import (
    SPLITS,
    _check_images,
    _check_labels,
    _open_npz,
    _to_channels,
    object_array_error,
    read_array,
    resize_batch,
)
from hpt.data.base import ImageDataset, select
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")
IMAGES_SUFFIX = "_images.npy"
LABELS_SUFFIX = "_labels.npy"


@dataclass(frozen=True)
class _Part:
    """One split's image file: where the row data starts and its (N,H,W,C) shape (C added for (N,H,W))."""

    path: Path
    offset: int
    shape: tuple[int, int, int, int]
    fortran: bool

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:]))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows),H,W,C) for sorted, unique row indices; runs of consecutive rows are one read."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        if len(rows) == 0:
            return out
        if self.fortran:  # rows are not contiguous on disk: let the memory map gather them
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
            out[:] = np.asarray(mapped[rows]).reshape(out.shape)
            del mapped
            return out
        flat = out.reshape(len(rows), -1)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [len(rows)]))
        with open(self.path, "rb") as f:
            for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                f.seek(self.offset + int(rows[a]) * self.row_bytes)
                got = f.readinto(memoryview(flat[a:b]).cast("B"))
                if got != (b - a) * self.row_bytes:
                    raise HptError(f"{self.path} ended early (rows {rows[a]}..{rows[b - 1]} are missing); "
                                   "the file is truncated: write it again")
        return out


class NpyDataset(ImageDataset):
    """Images of one split (or "all" splits) of an npy folder, read from disk batch by batch."""

    in_memory = False

    def __init__(self, spec: DataSpec) -> None:
        if spec.kind != "npy":
            raise ValueError(f"NpyDataset needs an npy spec, got {spec.kind}")
        self.spec = spec
        self.skipped = []
        root = spec.path.expanduser()
        if not root.is_dir():
            where = "is a file" if root.exists() else "does not exist"
            hint = " (for an .npz file write npz:PATH)" if root.suffix.lower() == ".npz" else ""
            raise HptError(f"npy folder {root} {where}{hint}; check the path in the data spec")
        self.root = root
        splits = _splits_to_read(root, spec.split)
        self._parts = [_open_images(root / f"{s}{IMAGES_SUFFIX}") for s in splits]
        for s, part in zip(splits[1:], self._parts[1:], strict=True):
            if part.shape[1:] != self._parts[0].shape[1:]:
                raise HptError(f"{root}: {s}{IMAGES_SUFFIX} has images of shape {part.shape[1:]} but "
                               f"{splits[0]}{IMAGES_SUFFIX} has {self._parts[0].shape[1:]}; split=all needs "
                               "the same shape in every split")
        labels = _read_labels(root, splits, self._parts)
        self._files = [p.path for p in self._parts] + [root / f"{s}{LABELS_SUFFIX}" for s in splits
                                                        if (root / f"{s}{LABELS_SUFFIX}").is_file()]
        self._starts = np.cumsum([0] + [p.shape[0] for p in self._parts])
        self.multilabel = labels is not None and labels.ndim == 2
        chosen = select(spec, int(self._starts[-1]), labels, _count_classes(root, labels), None)
        self._rows = chosen.indices
        self.labels = chosen.labels
        self.num_classes = chosen.num_classes
        self.class_names = None
        stored = self._parts[0].shape[3]
        self.num_channels = stored if spec.grayscale is None else (1 if spec.grayscale else 3)
        h, w = self._parts[0].shape[1:3]
        self.image_size = (spec.size, spec.size) if spec.size is not None else (h, w)

    def __len__(self) -> int:
        return len(self._rows)

    def _image(self, i: int) -> torch.Tensor:
        return self.get_batch([i])[0][0]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) == 0:
            return super().get_batch([])
        rows = self._rows[idx]
        unique, inverse = np.unique(rows, return_inverse=True)
        gathered = np.empty((len(unique), *self._parts[0].shape[1:]), dtype=np.uint8)
        for p, part in enumerate(self._parts):
            lo, hi = np.searchsorted(unique, [self._starts[p], self._starts[p + 1]])
            if hi > lo:
                gathered[lo:hi] = part.read(unique[lo:hi] - self._starts[p])
        images = _to_channels(gathered[inverse.reshape(-1)], self.spec.grayscale)
        if self.spec.size is not None and images.shape[1:3] != (self.spec.size, self.spec.size):
            images = resize_batch(images, self.spec.size)
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), self.batch_labels(idx)

    def fingerprint(self) -> str:
        parts = []
        for path in self._files:
            st = os.stat(path)
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
        return f"npy:{self.root.resolve()}:" + ";".join(parts)


def _splits_to_read(root: Path, split: str) -> list[str]:
    present = sorted(p.name[: -len(IMAGES_SUFFIX)] for p in root.glob(f"*{IMAGES_SUFFIX}"))
    if not present:
        listed = sorted(p.name for p in root.iterdir())[:10]
        raise HptError(f"{root} holds no <split>{IMAGES_SUFFIX} file (it has: {', '.join(listed) or 'nothing'}); "
                       "an npy data set needs e.g. train_images.npy (convert an .npz with npz_to_npy_dir)")
    if split == "all":
        standard = [s for s in SPLITS if s in present]
        return standard or present
    if split not in present:
        raise HptError(f"{root} has no {split}{IMAGES_SUFFIX} for split={split} (splits in the folder: "
                       f"{', '.join(present)}); pick one of those splits or all")
    return [split]


def _open_images(path: Path) -> _Part:
    """Check an images .npy without reading its rows: uint8, (N,H,W) or (N,H,W,1|3), not empty."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        if _holds_objects(err):
            raise object_array_error(path, path.name[: -len(".npy")]) from None
        raise HptError(f"cannot read {path} as an .npy array ({err}); check that the file is complete") from None
    try:
        if not isinstance(mapped, np.memmap):
            raise HptError(f"{path} is not a plain .npy array; save it with np.save")
        shape = tuple(int(d) for d in mapped.shape)
        fortran = mapped.ndim > 1 and bool(mapped.flags.f_contiguous) and not bool(mapped.flags.c_contiguous)
        offset, dtype = int(mapped.offset), mapped.dtype
    finally:
        del mapped
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise HptError(f"{path} has shape {tuple(shape)}; expected (N,H,W) grayscale or (N,H,W,1|3) "
                       "channels-last images")
    if shape[0] == 0:
        raise HptError(f"{path} holds no images")
    if dtype != np.uint8:
        raise HptError(f"{path} is {dtype}, but npy images must be uint8 (they are read as they are, not "
                       "converted); save them as uint8, e.g. with npz_to_npy_dir or np.save(path, x.astype(np.uint8))")
    return _Part(path, offset, (shape[0], shape[1], shape[2], shape[3]), fortran)


def _load_small(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as err:
        if _holds_objects(err):
            raise object_array_error(path, path.name[: -len(".npy")]) from None
        raise HptError(f"cannot read {path} as an .npy array ({err}); check that the file is complete") from None


def _holds_objects(err: Exception) -> bool:
    """True for numpy's refusal of an array of Python objects (dtype=object) without allow_pickle."""
    return "allow_pickle" in str(err) or "Python objects" in str(err)


def _read_labels(root: Path, splits: list[str], parts: list[_Part]) -> np.ndarray | None:
    """Labels of the splits, concatenated; None (unlabelled) when any split lacks a labels file."""
    found: list[np.ndarray] = []
    for split, part in zip(splits, parts, strict=True):
        path = root / f"{split}{LABELS_SUFFIX}"
        if path.is_file():
            found.append(_check_labels(_load_small(path), f"{split}_labels", part.shape[0], root))
    if len(found) < len(splits):
        if found:
            log.warning("%s: some splits have no labels; split=%s is used unlabelled", root, "+".join(splits))
        return None
    if len({y.shape[1:] for y in found}) > 1:
        raise HptError(f"{root}: the splits have different label shapes {sorted({y.shape[1:] for y in found})}; "
                       "split=all needs the same label layout in every split")
    return np.concatenate(found) if len(found) > 1 else found[0]


def _count_classes(root: Path, labels: np.ndarray | None) -> int | None:
    """K for multi-label; for single-label 1 + the largest label of every standard split (so splits agree)."""
    if labels is None:
        return None
    if labels.ndim == 2:
        return int(labels.shape[1])
    top = int(labels.max())
    for split in SPLITS:
        path = root / f"{split}{LABELS_SUFFIX}"
        if path.is_file():
            other = _load_small(path)
            single = other.ndim == 1 or (other.ndim == 2 and other.shape[1] == 1)
            if other.size and single and np.issubdtype(other.dtype, np.number):
                top = max(top, int(np.max(other)))
    return top + 1


def npz_to_npy_dir(npz_path: str | Path, out_dir: str | Path) -> Path:
    """Write every ``<split>_images`` / ``<split>_labels`` array of a MedMNIST-style .npz as ``<key>.npy`` in
    out_dir (images checked and converted to uint8 as the npz kind does); one array in memory at a time."""
    source = Path(npz_path).expanduser()
    out = Path(out_dir).expanduser()
    with _open_npz(source) as archive:
        keys = sorted(archive.files)
        splits = [k[: -len("_images")] for k in keys if k.endswith("_images") and re.fullmatch(
            r"[A-Za-z0-9_.\-]+_images", k)]
        if not splits:
            raise HptError(f"{source} has no <split>_images array (it has: {', '.join(keys)}); nothing to convert")
        out.mkdir(parents=True, exist_ok=True)
        for split in splits:
            raw = read_array(archive, f"{split}_images", source)
            images = _check_images(raw, f"{split}_images", source)
            _save(out / f"{split}{IMAGES_SUFFIX}", images[..., 0] if raw.ndim == 3 else images)
            count = len(images)
            del raw, images
            if f"{split}_labels" in keys:
                labels = read_array(archive, f"{split}_labels", source)
                _check_labels(labels, f"{split}_labels", count, source)
                _save(out / f"{split}{LABELS_SUFFIX}", labels)
    log.info("converted %s to the npy folder %s (splits: %s)", source, out, ", ".join(splits))
    return out


def _save(path: Path, array: Any) -> None:
    try:
        atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))
    except OSError as err:
        raise HptError(f"cannot write {path} ({err}); check the output folder and the free disk space") from None
