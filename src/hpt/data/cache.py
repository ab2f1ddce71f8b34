"""A pre-decoded copy of a data set at the training resolution: an npy folder (hpt.data.npy) of uint8 images.

Decoding JPEG or PNG files and resizing them is most of the data path's cost at 224 px; a pre-decoded image is one
plain file read. :func:`cache_images` decodes one split of a data set once, resized to size x size exactly as the
data spec option ``size=`` does, into ``<split>_images.npy`` (and ``<split>_labels.npy`` when labelled) of a
folder, which is then used as ``npy:DIR``. Calling it for each split with the same folder fills in the others.
The images selected by the spec (``fraction=``, ``count=``, ``classes=``) are the ones written; class names are
not kept (the npy kind numbers classes only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.atomic import _mode_for, make_folder, write_error
from hpt.data import STREAM_KINDS, open_dataset
from hpt.data.loader import make_eval_loader
from hpt.data.npy import IMAGES_SUFFIX, LABELS_SUFFIX, _save
from hpt.data.spec import DataSpec, parse_data_spec
from hpt.errors import HptError

log = logging.getLogger("hpt")


@dataclasses.dataclass(frozen=True)
class CachedSplit:
    """What :func:`cache_images` wrote: the npy folder, the split, the image count and the spec to use it with."""

    folder: Path
    split: str
    images: int
    image_size: int
    labelled: bool

    @property
    def spec(self) -> str:
        """The data spec of the written split, e.g. ``npy:/data/x_224?split=val``."""
        return DataSpec(kind="npy", path=self.folder, split=self.split).describe()


def cache_images(spec: str | Path | Mapping[str, Any] | DataSpec, image_size: int, out: str | Path, *,
                 workers: int | None = None, batch_size: int = 256) -> CachedSplit:
    """Decode the images of `spec` (one split) resized to image_size x image_size and write them, with their
    labels, as ``<split>_images.npy`` / ``<split>_labels.npy`` in the folder `out` (replacing that split's files,
    never half-written). `workers` decode in parallel (default: the loader's)."""
    parsed = parse_data_spec(spec)
    if image_size < 1:
        raise HptError(f"the image size must be a positive number of pixels, got {image_size}")
    if parsed.kind in STREAM_KINDS:
        raise HptError(f"{parsed.describe()} is a stream of shards, which cannot be cached; cache a folder, csv, "
                       "dicom, npz or npy data set")
    if parsed.split == "all":
        raise HptError("split=all cannot be cached as one split; cache each split (split=train, split=val, "
                       "split=test) into the same folder")
    source = open_dataset(dataclasses.replace(parsed, size=image_size))
    if source.pixel_dtype != torch.uint8:
        raise HptError(f"{parsed.describe()} holds 16-bit, multi-channel or DICOM images (read as float32), but the "
                       "cache holds 8-bit images; train on the data itself")
    folder = Path(out).expanduser()
    make_folder(folder)
    target = folder / f"{parsed.split}{IMAGES_SUFFIX}"
    channels, n = source.num_channels, len(source)
    shape = (n, image_size, image_size) + ((channels,) if channels != 1 else ())
    start = time.perf_counter()
    _write_images(target, shape, make_eval_loader(source, batch_size, workers))
    labels_path = folder / f"{parsed.split}{LABELS_SUFFIX}"
    if source.labels is not None:
        _save(labels_path, np.asarray(source.labels))
    elif labels_path.exists():
        labels_path.unlink()  # labels of an earlier cache of this split would not belong to these images
    seconds = time.perf_counter() - start
    log.info("cached %d images of %s at %dx%d in %s (%.0f images/s)", n, parsed.describe(), image_size, image_size,
             target, n / max(seconds, 1e-9))
    return CachedSplit(folder, parsed.split, n, image_size, source.labels is not None)


def _write_images(target: Path, shape: tuple[int, ...], batches: Any) -> None:
    """Write the batches' images, channels last, as one .npy array at `target`: into a temp file beside it, renamed
    into place once complete."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, _mode_for(target))  # mkstemp makes 0600 files; the cache gets a plain file's mode
        os.close(fd)
    except OSError as err:
        raise write_error(target, err) from None
    tmp = Path(name)
    try:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        row = 0
        for images, _ in batches:
            pixels = images.permute(0, 2, 3, 1).numpy()
            rows[row:row + len(pixels)] = pixels[..., 0] if len(shape) == 3 else pixels
            row += len(pixels)
        if row != shape[0]:
            raise HptError(f"the data set gave {row} images instead of {shape[0]}; it changed while it was cached: "
                           "cache it again")
        rows.flush()
        del rows
        os.replace(tmp, target)
    except OSError as err:
        raise write_error(target, err) from None
    finally:
        tmp.unlink(missing_ok=True)
