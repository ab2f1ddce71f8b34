"""Labelled train / val / test splits for evaluation: val selects, test reports; missing ones are carved from train.

The data spec's classes filter applies to every split; its fraction/count (a labelled subset) to train only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from hpt.data import DataSpec, ImageDataset, open_dataset, parse_data_spec
from hpt.data.heldout import CARVE_FRACTION, CARVE_ORDER, carve, carve_seed, find_split
from hpt.data.sampling import stratified_choice
from hpt.errors import HptError

log = logging.getLogger("hpt")

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class SplitView:
    """Some images of a data set, by index: what one split of an evaluation is."""

    dataset: ImageDataset
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        assert self.dataset.labels is not None
        return self.dataset.labels[self.indices]

    def get_batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of the given positions of this view (not indices of the data set)."""
        return self.dataset.get_batch(self.indices[np.asarray(positions, dtype=np.int64)])


@dataclass
class LabelledSplits:
    """The three splits of an evaluation, with how each was obtained (recorded in results)."""

    train: SplitView
    val: SplitView
    test: SplitView
    origin: dict[str, str]  # split -> "split 'val' of the data" or "carved: 10% of train (seed 0)"
    num_classes: int
    multilabel: bool
    class_names: list[str] | None
    spec: DataSpec

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def record(self) -> dict[str, Any]:
        return {"sizes": self.sizes(), "origin": dict(self.origin), "num_classes": self.num_classes,
                "multilabel": self.multilabel}

    def describe(self) -> str:
        return ", ".join(f"{name} {len(getattr(self, name))} ({self.origin[name]})" for name in SPLIT_NAMES)


def load_splits(spec: str | DataSpec | dict[str, Any], *, seed: int = 0) -> LabelledSplits:
    """Open train, val and test of a labelled data set; carve val (10%) and test (20%) from train if absent.

    exclude_heldout in the spec (a stage's pretraining data) is ignored here: these are the images it left out."""
    base = parse_data_spec(spec)
    train_spec = replace(base, split="train", exclude_heldout=False)
    whole = replace(train_spec, fraction=None, count=None)
    train_ds = open_dataset(whole)
    _require_labels(train_ds)
    origin = {"train": "split 'train' of the data"}
    views: dict[str, SplitView] = {}
    pool = np.arange(len(train_ds), dtype=np.int64)
    for name in CARVE_ORDER:
        found = find_split(base, name)
        if found is not None:
            ds = open_dataset(replace(whole, split=found))
            _require_labels(ds)
            _check_same_classes(train_ds, ds, found)
            views[name] = SplitView(ds, np.arange(len(ds), dtype=np.int64))
            origin[name] = f"split '{found}' of the data"
        else:
            assert train_ds.labels is not None
            carved, pool = carve(train_ds.labels, train_ds.multilabel, pool, CARVE_FRACTION[name],
                                 carve_seed(seed, name), train_ds.spec.describe())
            views[name] = SplitView(train_ds, carved)
            origin[name] = f"carved from train: {CARVE_FRACTION[name]:.0%} of it (seed {seed}), the data has no {name} split"
            hint = "left out of pretraining (exclude_heldout=true)" if base.exclude_heldout else \
                "a stage pretraining on this data leaves them out with exclude_heldout=true in its data spec" + \
                ("" if seed == 0 else ", which carves with seed 0")
            log.info("%s: no %s split; %d training images set aside as %s (seed %d); %s", base.describe(), name,
                     len(carved), name, seed, hint)
    pool = _labelled_subset(train_spec, train_ds, pool)
    if train_spec.fraction is not None or train_spec.count is not None:
        origin["train"] += f", subset {'fraction=' + str(train_spec.fraction) if train_spec.fraction else 'count=' + str(train_spec.count)} (seed {train_spec.seed})"
    for name, view in (("train", SplitView(train_ds, pool)), *views.items()):
        if len(view) == 0:
            raise HptError(f"the {name} split of {base.describe()} has no images; evaluation needs images in "
                           "train, val and test")
        _require_two_classes(view, name, base.describe(), any(o.startswith("carved") for o in origin.values()))
    assert train_ds.num_classes is not None
    return LabelledSplits(SplitView(train_ds, pool), views["val"], views["test"], origin, train_ds.num_classes,
                          train_ds.multilabel, train_ds.class_names, base)


def _require_labels(ds: ImageDataset) -> None:
    if ds.labels is None or ds.num_classes is None:
        raise HptError(f"{ds.spec.describe()} has no labels, but evaluation needs them: give an npz with "
                       "*_labels, a folder with one sub-folder per class, or a csv with label columns")
    if not ds.multilabel and (ds.labels < 0).any():
        raise HptError(f"{ds.spec.describe()} has unlabelled images (label -1); evaluation needs a label for each")


def _require_two_classes(view: SplitView, split: str, data: str, carved_any: bool) -> None:
    """Refuse a split whose labels cannot measure anything: one class only (every prediction of it is right), or,
    multi-label, no class with both positive and negative images (AUROC undefined for all)."""
    labels = view.labels
    carved = " (val/test are carved from train here: add images of the rarer classes, or provide val and test " \
        "splits)" if carved_any else ""
    if view.dataset.multilabel:
        positives = np.asarray(labels).sum(axis=0)
        if not ((positives > 0) & (positives < len(labels))).any():
            raise HptError(f"the {split} split of {data} has no class with both positive and negative images, so "
                           f"AUROC is undefined for every class; use a {split} split in which some label is present "
                           f"in some images and absent in others{carved}")
        return
    present = np.unique(labels)
    if len(present) < 2:
        names = view.dataset.class_names
        which = names[int(present[0])] if names and len(present) == 1 and int(present[0]) < len(names) else \
            ", ".join(map(str, present.tolist())) or "none"
        raise HptError(f"the {split} split of {data} holds a single class ({which}), so every score would be "
                       f"trivial; evaluation needs at least two classes in train, val and test: use labelled data "
                       f"with several classes (check the labels and the data spec's classes= filter){carved}")


def _check_same_classes(train: ImageDataset, other: ImageDataset, split: str) -> None:
    if train.multilabel != other.multilabel or train.num_classes != other.num_classes:
        kind = "multi-label" if train.multilabel else "single-label"
        okind = "multi-label" if other.multilabel else "single-label"
        raise HptError(f"labels differ between splits of {train.spec.path}: train has {train.num_classes} classes "
                       f"({kind}), {split} has {other.num_classes} ({okind}); every split needs the same classes")
    if not train.multilabel:
        assert other.labels is not None and train.labels is not None
        unseen = sorted(set(np.unique(other.labels).tolist()) - set(np.unique(train.labels).tolist()))
        if unseen:
            raise HptError(f"labels differ between splits of {train.spec.path}: {split} has classes "
                           f"{', '.join(map(str, unseen[:10]))} that never occur in train; every split needs the "
                           "same classes (check the label columns or the class folders)")


def _labelled_subset(spec: DataSpec, ds: ImageDataset, pool: np.ndarray) -> np.ndarray:
    """Apply the spec's fraction/count to the remaining training images (stratified for single labels)."""
    if spec.fraction is None and spec.count is None:
        return pool
    k = spec.count if spec.count is not None else max(1, int(round((spec.fraction or 1.0) * len(pool))))
    if k > len(pool):
        raise HptError(f"count={k} but only {len(pool)} training images are left; lower count or use fraction=")
    rng = np.random.default_rng(spec.seed)
    assert ds.labels is not None
    if ds.multilabel:
        chosen = np.sort(rng.choice(len(pool), size=k, replace=False))
    else:
        chosen = stratified_choice(ds.labels[pool], k, rng)
    return pool[chosen]
