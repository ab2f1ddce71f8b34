"""evaluate(): a backbone measured on labelled data with one of `hpt eval`'s protocols, and what it returns.

The keywords are the options of `hpt eval linear|finetune|knn` in snake_case, with their defaults; steps, lr and
batch_size default to None, which is the protocol's own default (that of LinearConfig or FinetuneConfig, which the
commands show). tests/api/test_signatures.py holds the two together.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hpt.api.output import holding
from hpt.errors import HptError
from hpt.eval import (
    EvalBackbone,
    FinetuneConfig,
    KnnConfig,
    LinearConfig,
    finetune_eval,
    headline,
    knn_eval,
    linear_eval,
    load_eval_backbone,
    load_splits,
)
from hpt.eval.metrics import Interval
from hpt.eval.result import interval_of
from hpt.eval.suite import PROTOCOLS
from hpt.models import weights_sha256
from hpt.report.evals import load_evaluation
from hpt.report.published import Published, recognise

log = logging.getLogger("hpt")

#: Each protocol's settings (the fields of its config) and the function that runs it.
_PROTOCOLS: dict[str, tuple[type, Any]] = {
    "linear": (LinearConfig, linear_eval), "finetune": (FinetuneConfig, finetune_eval), "knn": (KnnConfig, knn_eval),
}


@dataclass(frozen=True)
class EvalResult:
    """One finished evaluation: the test score at the best val score with its 95% bootstrap interval.

    `record` is the whole results record (what results.json holds: settings, splits, seeds, per-image outcomes).
    """

    protocol: str  # linear, finetune-N (N labelled images), finetune-all or knn
    metric: str  # top1 (accuracy) or auroc (mean per-class AUROC, for multi-label data)
    score: float  # in [0, 1]
    low: float
    high: float
    path: Path | None  # results.json; None when evaluate() was given no out
    record: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, record: dict[str, Any], path: Path | None = None) -> EvalResult:
        low, high = record["interval"]
        return cls(record["protocol"], record["metric"], float(record["test"]), float(low), float(high), path, record)

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """A finished evaluation from its results.json (or the folder holding it)."""
        file = Path(path)
        file = file / "results.json" if file.is_dir() else file
        return cls.of(load_evaluation(file), file)

    @property
    def interval(self) -> Interval:
        return interval_of(self.record)

    @property
    def headline(self) -> str:
        """The line `hpt eval` prints: protocol, score with its interval, test images, the seeds' spread."""
        return headline(self.record)

    @property
    def published(self) -> Published | None:
        """The published supervised reference for the data evaluated on, when it is a known public set (by its file
        name: MedMNIST v2, CIFAR-10); it places the score, under another protocol, and never ranks it."""
        data = self.record.get("data")
        return recognise(data) if isinstance(data, str) else None

    def __str__(self) -> str:
        return self.headline


def evaluate(
    backbone: str | Path | nn.Module,
    data: str,
    protocol: str = "linear",
    *,
    arch: str | None = None,
    small_stem: bool | None = None,
    width: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    eval_every: int = 100,
    augmented: bool = False,
    seeds: int = 1,
    seed: int = 0,
    labels: int | str | None = None,
    micro_batch: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
) -> EvalResult:
    """Evaluate `backbone` on the labelled `data` (train/val/test splits taken from it): `hpt eval PROTOCOL`.

    backbone: what load_backbone() takes ('random' with arch, a checkpoint file, named weights), or a module it
    returned (evaluated on a copy). protocol: 'linear' (a linear classifier on frozen features), 'finetune' (the
    whole network on `labels` labelled images, a number or 'all') or 'knn' (k nearest neighbours). With `out`,
    results.json and the curves are written there (and compare() can read them). A setting the protocol does not
    take (k for linear, say) raises HptError, as every bad input does.
    """
    if protocol not in _PROTOCOLS:
        raise HptError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    config_type, run = _PROTOCOLS[protocol]
    if isinstance(labels, str) and labels.isdigit():
        labels = int(labels)
    takes = {f.name for f in dataclasses.fields(config_type)}
    given = {"steps": steps, "lr": lr, "batch_size": batch_size, "eval_every": eval_every, "augmented": augmented,
             "seeds": seeds, "labels": labels, "micro_batch": micro_batch, "k": k, "temperature": temperature}
    foreign = [name for name, value in given.items() if name not in takes and value != _DEFAULTS[name]]
    if foreign:
        what = "not a setting" if len(foreign) == 1 else "not settings"
        raise HptError(f"{', '.join(foreign)}: {what} of the {protocol} protocol; it takes "
                       f"{', '.join(n for n in given if n in takes)}")
    if protocol == "finetune" and labels is None:
        raise HptError("the finetune protocol needs labels: the number of labelled training images (at least one "
                       "per class), or 'all'")
    settings = {name: value for name, value in given.items() if name in takes and value is not None}
    config = config_type(**settings, **({"seed": seed} if "seed" in takes else {}), image_size=image_size,
                         device=device)
    out_dir = None if out is None else Path(out)
    with holding(out_dir):
        model = _backbone(backbone, arch, small_stem, width, seed)
        splits = load_splits(data, seed=seed)
        log.info("data: %s: %s", splits.spec.describe(), splits.describe())
        record = run(model, splits, config, out_dir)
    return EvalResult.of(record, None if out_dir is None else out_dir / "results.json")


_DEFAULTS = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()}


def _backbone(backbone: str | Path | nn.Module, arch: str | None, small_stem: bool | None, width: int | None,
              seed: int) -> EvalBackbone:
    if not isinstance(backbone, nn.Module):
        return load_eval_backbone(str(backbone), arch=arch, small_stem=small_stem, width=width, seed=seed)
    if arch is not None or small_stem is not None or width is not None:
        raise HptError("arch, small_stem and width describe a backbone to build; a module is evaluated as it is")
    model = copy.deepcopy(backbone)  # the protocols may adapt it (a stem for other channel counts)
    return EvalBackbone(model, f"{type(backbone).__name__} (in memory)", "module", weights_sha256(model))
