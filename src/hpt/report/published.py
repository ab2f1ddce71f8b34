"""Published supervised references for well-known public data sets, shown beside hpt's scores.

A reference is recognised only from the file (or folder) name of the evaluation's data spec, and conservatively:
`pneumoniamnist.npz` or `pneumoniamnist_28.npz` is PneumoniaMNIST, anything else is nothing. These numbers come
from supervised training on every label, under another protocol, so they place hpt's scores, never rank them.

Sources:
- MedMNIST v2 2D sets: Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical
  image classification", Scientific Data 10:41 (2023), Table 3, ResNet-18 at 28 px (test AUC and ACC, the mean of
  at least three trials).
- CIFAR-10: the accuracy table of the kuangliu/pytorch-cifar repository's README (ResNet-18 at 32 px).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PUBLISHED", "Published", "published_for_rows", "recognise", "reference_line"]

HEADING = "Published supervised reference, not comparable protocol"


@dataclass(frozen=True)
class Published:
    data: str  # the data set's published name
    scores: tuple[tuple[str, float], ...]  # (metric, value in [0, 1]) as published, e.g. (("AUC", 0.944), ...)
    model: str
    image_size: int
    protocol: str  # how the reference was trained, in a few words
    citation: str

    def score(self, metric: str) -> float | None:
        return dict(self.scores).get(metric)


_MEDMNIST = "Yang et al., \"MedMNIST v2\", Scientific Data 2023, Table 3"
_SUPERVISED = "trained end to end on every training label"


def _medmnist(name: str, auc: float, acc: float) -> Published:
    return Published(name, (("AUC", auc), ("ACC", acc)), "ResNet-18", 28, _SUPERVISED, _MEDMNIST)


PUBLISHED: dict[str, Published] = {
    "pathmnist": _medmnist("PathMNIST", 0.983, 0.907),
    "chestmnist": _medmnist("ChestMNIST", 0.768, 0.947),
    "dermamnist": _medmnist("DermaMNIST", 0.917, 0.735),
    "octmnist": _medmnist("OCTMNIST", 0.943, 0.743),
    "pneumoniamnist": _medmnist("PneumoniaMNIST", 0.944, 0.854),
    "retinamnist": _medmnist("RetinaMNIST", 0.717, 0.524),
    "breastmnist": _medmnist("BreastMNIST", 0.901, 0.863),
    "bloodmnist": _medmnist("BloodMNIST", 0.998, 0.958),
    "tissuemnist": _medmnist("TissueMNIST", 0.930, 0.676),
    "organamnist": _medmnist("OrganAMNIST", 0.997, 0.935),
    "organcmnist": _medmnist("OrganCMNIST", 0.992, 0.900),
    "organsmnist": _medmnist("OrganSMNIST", 0.972, 0.782),
    "cifar10": Published("CIFAR-10", (("ACC", 0.9302),), "ResNet-18", 32, _SUPERVISED,
                         "kuangliu/pytorch-cifar, README accuracy table"),
}

# hpt's metric -> the published metric it is closest to ("top1" is ACC; "auroc", mean AUROC, is AUC).
_METRIC = {"top1": "ACC", "auroc": "AUC"}
# MedMNIST's own files (`pneumoniamnist.npz`, MedMNIST+ `pneumoniamnist_64.npz`); CIFAR-10 as an npz file or a
# folder of that name.
_MEDMNIST_FILE = re.compile(r"([a-z]+mnist)(?:_(?:28|64|128|224))?\.npz")
_CIFAR10_NAME = re.compile(r"cifar[-_]?10(?:_32)?(?:\.npz)?")


def recognise(spec: str) -> Published | None:
    """The published reference for a data spec string (`npz:/data/pneumoniamnist_28.npz`), or None.

    Only the file or folder name counts, matched whole; a spec that keeps some classes only (`classes=`) is another
    task, and gets none."""
    body, _, options = spec.partition("?")
    if re.search(r"(^|&)classes=", options):
        return None
    kind, colon, path = body.partition(":")
    location = path if colon else kind
    name = re.split(r"[\\/]", location.rstrip("\\/"))[-1].lower()
    found = _MEDMNIST_FILE.fullmatch(name)
    if found and found.group(1) in PUBLISHED:  # only MedMNIST's names end in "mnist"
        return PUBLISHED[found.group(1)]
    return PUBLISHED["cifar10"] if _CIFAR10_NAME.fullmatch(name) else None


def reference_line(reference: Published, metric: str | None = None) -> str:
    """One labelled sentence: the published scores in percent (the one closest to hpt's metric first), the model, its
    image size, how it was trained and where it is published."""
    first = _METRIC.get(metric or "")
    ordered = sorted(reference.scores, key=lambda item: item[0] != first)
    scores = ", ".join(f"{name} {100 * value:.1f}" for name, value in ordered)
    return (f"{HEADING}: {reference.model} at {reference.image_size} px on {reference.data}, {reference.protocol}: "
            f"{scores} ({reference.citation}).")


def published_for_rows(rows: list[dict[str, Any]], out: Path) -> Published | None:
    """The reference for the data the rows were evaluated on (read from the first evaluation record they point to,
    OUT/<eval_dir>/<protocol>/results.json), or None when no record says, or its data is not recognised."""
    for row in rows:
        if not row.get("eval_dir") or not row.get("protocol"):
            continue
        path = out / row["eval_dir"] / row["protocol"] / "results.json"
        try:
            data = json.loads(path.read_text()).get("data")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(data, str):
            return recognise(data)
    return None
