"""Cheap health signals of a backbone during a stage, scored on validation images (never on test images).

- `knn` / `linear`: top-1 (or mean AUROC) of a kNN (k=20, T=0.07) or a short linear probe on pooled features,
  with a labelled subset of the training split as memory and the validation split as queries. Top-1 keeps the
  per-image outcomes, so that two readings can be compared paired over the same validation images.
- `rank`: the effective rank of the pooled features of a fixed slice of images (RankMe, Garrido et al., ICML 2023:
  exp of the entropy of the normalised singular values). It needs no labels and sees a collapse (the rank falls
  towards 1), but it is a health check, not a score: RankMe's link between rank and downstream scores holds
  across runs trained from scratch, while in continued pretraining from a Base the rank dips and recovers as the
  new head settles, with kNN accuracy steady or rising (docs/results.md, "Agreement with the Base").

`measures_quality` says which: a guard keeps the best reading of a signal that measures quality, and the latest
healthy reading of one that does not.

Every reading also returns the pooled features it scored (the validation images, or the rank's slice: the same
images at every reading), from which the guard measures the agreement with the stage's start (linear CKA).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")


@dataclass
class Reading:
    """One score of a backbone: its value (higher is better), for top-1 which validation images were right, and
    the pooled features of the images it scored (the same images at every reading of a signal)."""

    value: float
    correct: np.ndarray | None = None
    features: torch.Tensor | None = None


class LabelledSignal:
    """kNN or linear-probe score on the validation split of labelled data (the memory: `labels` training images)."""

    measures_quality = True

    def __init__(self, data: DataSpec, probe: str, labels: int, device: torch.device) -> None:
        if probe not in ("knn", "linear"):
            raise HptError(f"unknown labelled signal '{probe}'; choose knn or linear")
        self.data, self.probe, self.labels, self.device = data, probe, labels, device
        self._splits: Any = None
        self._transform: Any = None

    @property
    def name(self) -> str:
        return self.probe

    def _prepare(self) -> None:
        from hpt.eval.features import eval_transform
        from hpt.eval.finetune import labelled_subset
        from hpt.eval.splits import SplitView, load_splits

        splits = load_splits(self.data)
        keep = labelled_subset(splits, min(self.labels, len(splits.train)), seed=0)
        splits.train = SplitView(splits.train.dataset, splits.train.indices[keep])
        self._splits = splits
        self._transform = eval_transform(splits, None).to(self.device)
        log.info("%s signal on %s: %d labelled training images as memory, %d validation images scored",
                 self.probe, splits.spec.describe(), len(splits.train), len(splits.val))

    @property
    def val_images(self) -> int:
        if self._splits is None:
            self._prepare()
        return len(self._splits.val)

    @torch.no_grad()
    def read(self, backbone: torch.nn.Module) -> Reading:
        """Score `backbone` (evaluated on a BatchNorm-folded copy: the backbone itself is left as it is)."""
        from hpt.eval.features import extract_features
        from hpt.eval.knn import knn_scores
        from hpt.eval.metrics import evaluate

        if self._splits is None:
            self._prepare()
        splits = self._splits
        train = torch.from_numpy(extract_features(backbone, splits.train, self._transform, self.device))
        val = torch.from_numpy(extract_features(backbone, splits.val, self._transform, self.device))
        labels = torch.from_numpy(np.ascontiguousarray(splits.train.labels))
        if self.probe == "knn":
            scores = knn_scores(train, labels, val, k=20, temperature=0.07, num_classes=splits.num_classes,
                                multilabel=splits.multilabel)
        else:
            scores = linear_probe_scores(train, labels, val, splits)
        truth = np.asarray(splits.val.labels)
        value = float(evaluate(scores, truth, splits.class_names).value)
        correct = None if splits.multilabel else np.argmax(scores, axis=1) == truth
        return Reading(value, correct, val)


class RankSignal:
    """Effective rank of the pooled features of the first `images` images of a data set (no labels needed)."""

    measures_quality = False

    name = "rank"

    def __init__(self, data: DataSpec, images: int, device: torch.device) -> None:
        self.data, self.images, self.device = data, images, device
        self._view: Any = None
        self._transform: Any = None

    def _prepare(self) -> None:
        from hpt.augment import EvalTransform
        from hpt.data import channel_stats, open_any
        from hpt.eval.splits import SplitView

        dataset = open_any(self.data)
        if not hasattr(dataset, "__getitem__"):
            raise HptError(f"the rank signal needs indexable data, not a stream: {self.data}; give guard.data")
        count = min(self.images, len(dataset))
        self._view = SplitView(dataset, np.arange(count))
        mean, std = channel_stats(dataset)
        self._transform = EvalTransform(mean, std, dataset.image_size[0]).to(self.device)
        log.info("rank signal on the first %d images of %s", count, self.data)

    @torch.no_grad()
    def read(self, backbone: torch.nn.Module) -> Reading:
        from hpt.eval.features import extract_features

        if self._view is None:
            self._prepare()
        feats = torch.from_numpy(extract_features(backbone, self._view, self._transform, self.device))
        return Reading(effective_rank(feats), None, feats)


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the singular values normalised to sum 1) of an (N, D) matrix: 1 (collapsed) to min(N, D)."""
    s = torch.linalg.svdvals(features.double())
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum() + 1e-12
    return float(torch.exp(-(p * p.log()).sum()))


def linear_probe_scores(train: torch.Tensor, labels: torch.Tensor, val: torch.Tensor, splits: Any,
                        steps: int = 1000) -> np.ndarray:
    """Scores of `val` under a linear classifier trained for `steps` SGD steps on `train` (the recipe's lr 30)."""
    from hpt.eval.common import loss_function, milestones, new_head

    with torch.enable_grad():
        head = new_head(train.shape[1], splits.num_classes, 0)
        opt = torch.optim.SGD(head.parameters(), lr=30.0, momentum=0.9)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(steps), gamma=0.1)
        criterion = loss_function(splits.multilabel)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            idx = torch.from_numpy(rng.integers(0, len(train), min(256, len(train))))
            loss = criterion(head(train[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head(val).detach().numpy()
