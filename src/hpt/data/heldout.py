"""The val and test images that evaluation holds out of a data set's train split when the data has no such split,
so that pretraining can leave them out (``exclude_heldout=true`` in a data spec).

Evaluation (hpt.eval.splits.load_splits, with its default seed 0, as experiments, the guard and the convergence
probe call it) takes a missing test split as a stratified 20% of train (seed 2), then a missing val split as 10% of
the rest (seed 1). :func:`heldout_rows` computes the same rows, so a stage that pretrains on ``split=train`` with
``exclude_heldout=true`` never sees an image that evaluation scores.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from hpt.data.sampling import stratified_choice
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")

SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "test": ("test",)}
CARVE_FRACTION = {"val": 0.1, "test": 0.2}  # of train, when the data has no such split
CARVE_ORDER = ("test", "val")  # test is carved first, then val from the rest


def carve_seed(seed: int, split: str) -> int:
    """The seed with which evaluation's `seed` carves `split` out of train."""
    return seed + (1 if split == "val" else 2)


def find_split(spec: DataSpec, name: str) -> str | None:
    """The name under which the data holds split `name` (val / valid / validation), or None."""
    for candidate in SPLIT_ALIASES[name]:
        if has_split(spec, candidate):
            return candidate
    return None


def has_split(spec: DataSpec, split: str) -> bool:
    """Whether the data of `spec` holds a split of that name (npz keys, npy files, folders, a csv split column)."""
    path = spec.path.expanduser()
    if spec.kind == "npz":
        with np.load(path) as arrays:
            return f"{split}_images" in arrays.files
    if spec.kind == "npy":
        return (path / f"{split}_images.npy").is_file()
    if spec.kind in ("folder", "dicom"):  # a dicom list file has no splits
        return (path / split).is_dir()
    if spec.kind != "csv":
        return False
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if "split" not in header:
            return False
        col = header.index("split")
        return any(len(row) > col and row[col].strip() == split for row in reader)


def carve(labels: np.ndarray, multilabel: bool, pool: np.ndarray, fraction: float, seed: int,
          what: str) -> tuple[np.ndarray, np.ndarray]:
    """Take a stratified `fraction` of `pool` (indices into `labels`) out of it: (carved, rest), both sorted."""
    k = max(1, round(fraction * len(pool)))
    if k >= len(pool):
        raise HptError(f"{what} has only {len(pool)} training images, too few to set aside a val or test split; add "
                       "images or provide val/test splits")
    rng = np.random.default_rng(seed)
    if multilabel:
        chosen = np.sort(rng.choice(len(pool), size=k, replace=False))
    else:
        chosen = stratified_choice(labels[pool], k, rng)
    mask = np.zeros(len(pool), dtype=bool)
    mask[chosen] = True
    return pool[mask], pool[~mask]


def heldout_rows(spec: DataSpec, labels: np.ndarray) -> np.ndarray:
    """Sorted rows of the train split (after its classes filter; `labels` are theirs) that evaluation with seed 0
    sets aside as val and test because the data has no such split; empty when it has both."""
    pool = np.arange(len(labels), dtype=np.int64)
    held: list[np.ndarray] = []
    for name in CARVE_ORDER:
        if find_split(spec, name) is None:
            carved, pool = carve(labels, labels.ndim == 2, pool, CARVE_FRACTION[name], carve_seed(0, name),
                                 spec.describe())
            held.append(carved)
    return np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)


def evaluation_carves(spec: DataSpec) -> bool:
    """Whether evaluation on this data carves val or test out of its train split: it may be labelled (a cheap look,
    without reading the data) and lacks one of the splits."""
    return spec.kind != "wds" and _may_be_labelled(spec) and any(find_split(spec, n) is None for n in CARVE_ORDER)


def _may_be_labelled(spec: DataSpec) -> bool:
    path = spec.path.expanduser()
    if spec.kind == "npz":
        with np.load(path) as arrays:
            return "train_labels" in arrays.files
    if spec.kind == "npy":
        return (path / "train_labels.npy").is_file()
    if spec.kind == "dicom" and not path.is_dir():  # a list of files: unlabelled
        return False
    if spec.kind in ("folder", "dicom"):  # labelled: class subfolders under the train folder (or the folder itself)
        root = path / "train" if (path / "train").is_dir() else path
        return any(entry.is_dir() and not entry.name.startswith(".") for entry in root.iterdir())
    return True


def without_heldout(spec: DataSpec, evaluated: DataSpec | None, why: str) -> DataSpec:
    """`spec` with exclude_heldout=true when evaluation on `evaluated` (None: `spec` itself) carves its val or test
    from the train split that `spec` pretrains on; `spec` as it is otherwise."""
    data = spec
    scored = spec if evaluated is None else evaluated
    if spec.exclude_heldout or spec.split != "train" or spec.kind == "wds" or not _same_files(spec, scored):
        return data
    try:
        carves = evaluation_carves(spec)
    except (OSError, ValueError):
        return data  # unreadable here: opening the data reports it
    if not carves:
        return data
    if spec.classes != scored.classes:
        log.warning("%s: %s carves its val/test from this data's train split with classes=%s, not this spec's "
                    "classes=%s, so they cannot be left out of pretraining; give both the same classes", data, why,
                    scored.classes, spec.classes)
        return data
    log.info("%s has no val or no test split: the images %s holds out of train as val/test are left out of "
             "pretraining (exclude_heldout=true)", data, why)
    return replace(spec, exclude_heldout=True)


def _same_files(a: DataSpec, b: DataSpec) -> bool:
    if a.kind != b.kind:
        return False
    try:
        return Path(a.path).expanduser().resolve() == Path(b.path).expanduser().resolve()
    except OSError:
        return False
