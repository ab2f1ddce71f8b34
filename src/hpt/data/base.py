"""What every data kind returns (:class:`ImageDataset`) and the shared subsetting: classes filter, fraction, count."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from hpt.data.heldout import heldout_rows
from hpt.data.sampling import stratified_choice
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images as uint8 (C,H,W) tensors with an int64 label: scalar, (K,) 0/1 multi-label, or -1 when unlabelled.
    Data sets of 16-bit, multi-channel or DICOM files give float32 images in [0, 1] instead (``pixel_dtype``).

    Subclasses set the attributes below and implement :meth:`_image`; in-memory ones may override
    :meth:`get_batch` with a faster gather.
    """

    spec: DataSpec
    num_channels: int
    image_size: tuple[int, int]
    labels: np.ndarray | None
    num_classes: int | None
    multilabel: bool
    class_names: list[str] | None
    skipped: list[str]
    in_memory: bool = False  # True: images live in one array, loading in the main process is fastest
    pixel_dtype: torch.dtype = torch.uint8  # float32 (values in [0, 1]) for wide data (hpt.data.files)

    def __len__(self) -> int:
        raise NotImplementedError

    def _image(self, i: int) -> torch.Tensor:
        """The uint8 (C,H,W) contiguous image at index i (no bounds check needed)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A string that changes when the underlying files change (used in cache keys)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        index = int(i)
        if not -n <= index < n:
            raise IndexError(f"index {i} out of range for a data set of {n} images")
        index %= n
        return self._image(index), self.label(index)

    def label(self, i: int) -> torch.Tensor:
        """Label of image i: int64 scalar, int64 (K,) for multi-label, tensor(-1) when unlabelled."""
        if self.labels is None:
            return torch.tensor(-1, dtype=torch.int64)
        if self.multilabel:
            return torch.from_numpy(self.labels[i].copy())
        return torch.tensor(int(self.labels[i]), dtype=torch.int64)

    def batch_labels(self, indices: np.ndarray) -> torch.Tensor:
        """Labels of several images: (B,) or (B,K) int64; (B,) of -1 when unlabelled."""
        if self.labels is None:
            return torch.full((len(indices),), -1, dtype=torch.int64)
        return torch.from_numpy(np.ascontiguousarray(self.labels[indices]))

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B,C,H,W) uint8 and labels (B,) / (B,K) int64 for a list of indices, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        images = torch.stack([self._image(int(i)) for i in idx]) if len(idx) else torch.empty(
            (0, self.num_channels, *self.image_size), dtype=self.pixel_dtype)
        return images, self.batch_labels(idx)

    def summary(self) -> str:
        """One line for logs: spec, image count and shape, label kind."""
        h, w = self.image_size
        if self.labels is None:
            what = "unlabelled"
        elif self.multilabel:
            what = f"{self.num_classes} labels (multi-label)"
        else:
            what = f"{self.num_classes} classes"
        extra = f", {len(self.skipped)} corrupt skipped" if self.skipped else ""
        return f"{self.spec.describe()}: {len(self)} images {self.num_channels}x{h}x{w}, {what}{extra}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.summary()}>"


def check_batch_and_rank(batch_size: int, rank: int, world_size: int) -> None:
    """The batch size and this process's place among the processes, as every sampler needs them."""
    if batch_size < 1:
        raise HptError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not valid for world size {world_size}")


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select`: which rows to keep and their (possibly remapped) labels."""

    indices: np.ndarray  # sorted int64 row indices into the split
    labels: np.ndarray | None
    num_classes: int | None
    class_names: list[str] | None


def select(spec: DataSpec, num_rows: int, labels: np.ndarray | None, num_classes: int | None = None,
           class_names: list[str] | None = None) -> Selection:
    """Apply the spec's classes filter (remapping labels to 0..len-1), then exclude_heldout (the rows evaluation
    holds out as val/test; labelled data only), then fraction/count to a split's rows."""
    indices = np.arange(num_rows, dtype=np.int64)
    if spec.classes is not None:
        if labels is None:
            raise HptError(f"classes={','.join(map(str, spec.classes))} needs labels, but {spec.path} is "
                           "unlabelled; remove classes= from the data spec")
        if labels.ndim == 2:
            raise HptError("classes= applies to single-label data, but this data set is multi-label; "
                           "remove classes= (for csv data choose the label columns with label_columns=)")
        assert num_classes is not None
        unknown = [c for c in spec.classes if c >= num_classes]
        if unknown:
            names = f" ({_name_list(class_names)})" if class_names else ""
            raise HptError(f"classes {unknown} do not exist: the data set has classes 0..{num_classes - 1}"
                           f"{names}; pick class indices below {num_classes}")
        remap = np.full(num_classes, -1, dtype=np.int64)
        remap[list(spec.classes)] = np.arange(len(spec.classes))
        mapped = remap[labels]
        indices = np.flatnonzero(mapped >= 0).astype(np.int64)
        if len(indices) == 0:
            raise HptError(f"no images of classes {list(spec.classes)} in split '{spec.split}' of {spec.path}; "
                           "check the class indices and the split")
        labels = mapped[indices]
        num_classes = len(spec.classes)
        if class_names is not None:
            class_names = [class_names[c] for c in spec.classes]
    if spec.exclude_heldout and labels is not None and (labels.ndim == 2 or not (labels < 0).any()):
        kept = np.setdiff1d(np.arange(len(indices)), heldout_rows(spec, labels), assume_unique=True)
        log.info("%s: %d of %d training images left out: evaluation holds them out as val/test", spec.describe(),
                 len(indices) - len(kept), len(indices))
        indices, labels = indices[kept], labels[kept]
    strata = labels if labels is not None and labels.ndim == 1 else None
    chosen = _subsample(spec, len(indices), strata)
    if chosen is not None:
        indices = indices[chosen]
        labels = labels[chosen] if labels is not None else None
    return Selection(indices, labels, num_classes, class_names)


def _subsample(spec: DataSpec, n: int, single_labels: np.ndarray | None) -> np.ndarray | None:
    """Sorted indices of the fraction/count subset (stratified when single labels are given); None = keep all."""
    if spec.fraction is None and spec.count is None:
        return None
    if n == 0:
        raise HptError(f"the data set {spec.describe()} has no images to take a fraction or count of")
    if spec.count is not None:
        if spec.count > n:
            raise HptError(f"count={spec.count} but the data set has only {n} images (after split and classes); "
                           f"lower count or use fraction=")
        k = spec.count
    else:
        assert spec.fraction is not None
        k = max(1, int(round(spec.fraction * n)))
    if k == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(spec.seed)
    if single_labels is None:
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    return stratified_choice(single_labels, k, rng)


def _name_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
