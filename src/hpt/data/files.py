"""Shared code for data sets of image files (folder, csv and dicom kinds): header checks and the dataset base.

Ordinary images (8-bit, gray or RGB) are decoded by Pillow to uint8 (hpt.data.decode). A data set holding a DICOM
file, or a TIFF with more than 8 bits per sample or a channel count other than 1 or 3, is read "wide": every image
as float32 (C, H, W) in [0, 1] (hpt.data.dicom, hpt.data.tiff), with the channel count of its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hpt.data.base import ImageDataset, select
from hpt.data.decode import GRAY_MODES, decode, decode_wide
from hpt.data.dicom import is_dicom_file, probe_dicom
from hpt.data.header import Header
from hpt.data.spec import DataSpec
from hpt.data.tiff import is_tiff, needs_tifffile, pillow_tiff_check, tiff_layout
from hpt.errors import HptError
from hpt.extras import has_extra

log = logging.getLogger("hpt")

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_LISTED = 10


def is_image_file(name: str) -> bool:
    """True for the image suffixes we decode (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def probe(path: str) -> Header:
    """Read one file's header and verify its structure (cheap: no pixel decoding)."""
    if is_dicom_file(path):
        return probe_dicom(path)
    if is_tiff(path):
        return _probe_tiff(path)
    return _probe_pillow(path)


def _probe_tiff(path: str) -> Header:
    """A TIFF's header through tifffile when installed (else Pillow, refusing what it would read only in part)."""
    if not has_extra("tifffile"):
        pillow_tiff_check(path)
        return _probe_pillow(path)
    try:
        size, channels, dtype = tiff_layout(path)
    except FileNotFoundError:
        return Header(None, None, "missing", missing=True)
    except HptError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for damaged files
        return Header(None, None, f"{type(err).__name__}: {err}")
    if dtype.kind == "f":
        return Header(size, "F", None, channels=channels)
    mode = "I;16" if dtype.itemsize > 1 else "L" if channels == 1 else "RGB"
    return Header(size, mode, None, channels=channels, wide=needs_tifffile(mode, channels))


def _probe_pillow(path: str) -> Header:
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
            img.verify()
        return Header(size, mode, None)
    except FileNotFoundError:
        return Header(None, None, "missing", missing=True)
    except Exception as err:  # PIL raises many types for damaged files
        return Header(None, None, f"{type(err).__name__}: {err}")


def probe_all(paths: Sequence[str]) -> list[Header]:
    """Headers of many files, read with threads (file opening is I/O bound)."""
    if len(paths) < 256:
        return [probe(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(probe, paths, chunksize=64))


def _listing(items: list[str], total: int) -> str:
    more = f" and {total - len(items)} more" if total > len(items) else ""
    return ", ".join(items) + more


def mixed_size_error(a: tuple[int, int], name_a: str, b: tuple[int, int], name_b: str) -> HptError:
    """The one message for images whose sizes differ while no size= was given."""
    return HptError(f"images of mixed sizes ({a[0]}x{a[1]} in {name_a}, {b[0]}x{b[1]} in {name_b}); "
                    "pass size=N in the data spec to resize every image to N x N")


@dataclass
class FileCheck:
    """Outcome of :func:`check_files`: rows to keep, skipped files, common (W,H) size and channel count."""

    keep: np.ndarray
    skipped: list[str]
    size: tuple[int, int] | None
    channels: int
    wide: bool = False


def check_files(paths: list[str], spec: DataSpec, display_root: Path, missing_hint: str) -> FileCheck:
    """Verify every file's header: missing files and (unless skip_corrupt) damaged ones are errors;
    without size= all images must share one size; channels = 1 if every image is grayscale, else 3."""
    headers = probe_all(paths)

    def show(i: int) -> str:
        return _display(paths[i], display_root)

    missing = [i for i, h in enumerate(headers) if h.missing]
    if missing:
        raise HptError(f"{len(missing)} image files listed in {spec.path} do not exist: "
                       f"{_listing([show(i) for i in missing[:MAX_LISTED]], len(missing))}; {missing_hint}")
    bad = [i for i, h in enumerate(headers) if h.error is not None]
    if bad and not spec.skip_corrupt:
        shown = [f"{show(i)} ({headers[i].error})" for i in bad[:MAX_LISTED]]
        raise HptError(f"{len(bad)} of {len(paths)} image files cannot be read: {_listing(shown, len(bad))}; "
                       "delete or replace them, or pass skip_corrupt=true in the data spec to skip them")
    skipped = [paths[i] for i in bad]
    if skipped:
        log.warning("skipped %d unreadable image files of %s (skip_corrupt=true), e.g. %s",
                    len(skipped), spec.describe(), show(bad[0]))
    keep = np.array([i for i, h in enumerate(headers) if h.error is None], dtype=np.int64)
    if len(keep) == 0:
        raise HptError(f"none of the {len(paths)} image files of {spec.describe()} can be read")
    floats = [int(i) for i in keep if headers[int(i)].mode == "F"]
    if floats:
        raise HptError(f"{len(floats)} image files hold floating-point pixels (PIL mode F), which have no fixed "
                       f"range: {_listing([show(i) for i in floats[:MAX_LISTED]], len(floats))}; "
                       "convert them to 8- or 16-bit images")
    first = int(keep[0])
    size = headers[first].size
    if spec.size is None:
        for i in keep:
            if headers[int(i)].size != size:
                raise mixed_size_error(size, show(first), headers[int(i)].size, show(int(i)))  # type: ignore[arg-type]
    if any(headers[int(i)].wide for i in keep):
        return FileCheck(keep, skipped, size, _wide_channels([headers[int(i)] for i in keep], spec,
                                                             [show(int(i)) for i in keep]), wide=True)
    if spec.grayscale is not None:
        channels = 1 if spec.grayscale else 3
    else:
        channels = 1 if all(headers[int(i)].mode in GRAY_MODES for i in keep) else 3
    return FileCheck(keep, skipped, size, channels)


def _wide_channels(headers: list[Header], spec: DataSpec, names: list[str]) -> int:
    """The channel count of a wide data set: its files' own (gray and RGB files together are RGB); grayscale=
    converts between 1 and 3 channels only."""
    counts = [h.channels or (1 if h.mode in GRAY_MODES else 3) for h in headers]
    found = sorted(set(counts))
    if len(found) > 1 and not set(found) <= {1, 3}:
        a, b = counts.index(found[0]), counts.index(found[-1])
        raise HptError(f"images with different channel counts ({found[0]} in {names[a]}, {found[-1]} in {names[b]}); "
                       "every image of a data set needs the same channels")
    channels = max(found)
    if spec.grayscale is not None:
        if channels not in (1, 3):
            raise HptError(f"grayscale= applies to gray or RGB images, but these have {channels} channels; remove it")
        channels = 1 if spec.grayscale else 3
    return channels


def _display(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


class FileImageDataset(ImageDataset):
    """Images decoded from files in __getitem__ (runs in DataLoader workers); subclasses list files and labels."""

    in_memory = False
    files: list[str]

    def _setup(self, spec: DataSpec, files: list[str], labels: np.ndarray | None, num_classes: int | None,
               class_names: list[str] | None, display_root: Path, missing_hint: str, source: Path) -> None:
        """Classes filter -> header checks (corrupt/missing/mixed sizes) -> fraction/count, then set attributes."""
        self.spec = spec
        self.display_root = display_root
        self._source = source
        self.multilabel = labels is not None and labels.ndim == 2
        first = select(dataclasses.replace(spec, fraction=None, count=None), len(files), labels,
                       num_classes, class_names)
        files = [files[i] for i in first.indices]
        labels = first.labels
        check = check_files(files, spec, display_root, missing_hint)
        files = [files[i] for i in check.keep]
        labels = labels[check.keep] if labels is not None else None
        second = select(dataclasses.replace(spec, classes=None), len(files), labels,
                        first.num_classes, first.class_names)
        self.files = [files[i] for i in second.indices]
        self.labels = second.labels
        self.num_classes = second.num_classes
        self.class_names = second.class_names
        self.skipped = check.skipped
        self.num_channels = check.channels
        self.wide = check.wide
        self.pixel_dtype = torch.float32 if check.wide else torch.uint8
        assert check.size is not None
        self._reference = (check.size, _display(files[0], display_root))
        self.image_size = (spec.size, spec.size) if spec.size is not None else (check.size[1], check.size[0])

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, i: int) -> torch.Tensor:
        path = self.files[i]
        if self.wide:
            data = decode_wide(path, self.spec, self.num_channels)
            height, width = int(data.shape[1]), int(data.shape[2])
            if self.spec.size is None and (width, height) != self._reference[0]:
                raise mixed_size_error(self._reference[0], self._reference[1], (width, height),
                                       _display(path, self.display_root))
            return data
        image = decode(path, self.num_channels, self.spec.size)
        size = (int(image.shape[2]), int(image.shape[1]))
        if self.spec.size is None and size != self._reference[0]:
            raise mixed_size_error(self._reference[0], self._reference[1], size, _display(path, self.display_root))
        return image

    def _load(self, i: int) -> tuple[torch.Tensor, int]:
        """Image i, or with skip_corrupt the next decodable one if i fails to decode; returns the index used."""
        for step in range(len(self)):
            j = (i + step) % len(self)
            try:
                return self._decode(j), j
            except HptError:
                raise
            except Exception as err:
                if not self.spec.skip_corrupt:
                    raise HptError(f"cannot decode {self.files[j]} ({type(err).__name__}: {err}); the file is "
                                   "damaged: replace or delete it, or pass skip_corrupt=true to skip it") from None
                log.warning("cannot decode %s (%s); using the next image instead (skip_corrupt=true)",
                            self.files[j], err)
        raise HptError(f"no image of {self.spec.describe()} can be decoded")

    def _image(self, i: int) -> torch.Tensor:
        return self._load(i)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} out of range for a data set of {n} images")
        image, used = self._load(int(i) % n)
        return image, self.label(used)

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = [self._load(int(i)) for i in indices]
        if not loaded:
            return super().get_batch([])
        used = np.array([j for _, j in loaded], dtype=np.int64)
        return torch.stack([img for img, _ in loaded]), self.batch_labels(used)

    def fingerprint(self) -> str:
        st = os.stat(self._source)
        listing = hashlib.sha256("\n".join(self.files).encode()).hexdigest()
        return f"{self.spec.kind}:{self._source.resolve()}:{st.st_size}:{st.st_mtime_ns}:{listing}"
