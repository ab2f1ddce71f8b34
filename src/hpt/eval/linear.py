"""Linear separability: a linear classifier on a frozen backbone's pooled features, scored along its training.

The recipe's protocol: init N(0, 0.01); cross-entropy (binary cross-entropy for multi-label data); SGD lr 30,
momentum 0.9, no weight decay, batch 512, 5,000 steps, lr x0.1 at 1/3 and 2/3 of the steps; val and test scored
every 100 steps; the reported number is the test score at the best val score. By default the features are
computed once without augmentation (fast on a CPU); `augmented=True` is the paper's on-the-fly variant
(random-resized-crop + flip through the frozen backbone at every step).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.common import loss_function, milestones, new_head, write_outputs
from hpt.eval.features import (
    EvalBackbone,
    check_unchanged,
    eval_transform,
    snapshot,
    split_features,
)
from hpt.eval.result import BestVal, SeedRun, summarize
from hpt.eval.splits import LabelledSplits

log = logging.getLogger("hpt")


@dataclass
class LinearConfig:
    steps: int = 5000
    lr: float = 30.0
    momentum: float = 0.9
    batch_size: int = 512
    eval_every: int = 100
    seeds: int = 1  # classifiers trained with seeds seed, seed+1, ...
    seed: int = 0
    augmented: bool = False
    image_size: int | None = None  # None: the data's own size
    device: str = "auto"
    cache_features: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "seeds"):
            if getattr(self, name) < 1:
                raise HptError(f"linear {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise HptError(f"linear lr must be > 0, got {self.lr}")


def train_linear_head(batches: Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
                      dim: int, splits: LabelledSplits, val_x: torch.Tensor, test_x: torch.Tensor,
                      config: LinearConfig, seed: int, device: torch.device) -> SeedRun:
    """SGD on a linear head; val/test scored every eval_every steps and at the end; best val -> test."""
    torch.manual_seed(seed)
    head = new_head(dim, splits.num_classes, seed).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(config.steps), gamma=0.1)
    criterion = loss_function(splits.multilabel)
    rng = np.random.default_rng(seed)
    tracker = BestVal(seed, splits)
    for step in range(1, config.steps + 1):
        x, y = batches(step, rng)
        lr = optimizer.param_groups[0]["lr"]
        loss = criterion(head(x), y.to(device))
        if not torch.isfinite(loss):
            raise HptError(f"the linear classifier diverged (loss {loss.item()} at step {step}, lr {lr}); "
                           "lower the lr (--lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % config.eval_every == 0 or step == config.steps:
            with torch.no_grad():
                val_scores = head(val_x).float().cpu().numpy()
                test_scores = head(test_x).float().cpu().numpy()
            tracker.add(step, lr, val_scores, test_scores)
    return tracker.result()


def linear_eval(backbone: EvalBackbone, splits: LabelledSplits, config: LinearConfig,
                out_dir: Path | None = None) -> dict[str, Any]:
    """Run the protocol for each seed; write results.json, curve.csv and curve.png to out_dir; return the record."""
    started = time.time()
    device = resolve_device(config.device)
    model = backbone.model.to(device).eval()
    transform = eval_transform(splits, config.image_size, model).to(device)
    before = snapshot(model)
    feats = split_features(backbone, splits, transform, device, cache=config.cache_features)
    train_x = torch.from_numpy(feats["train"]).to(device)
    train_y = torch.from_numpy(np.ascontiguousarray(splits.train.labels))
    val_x = torch.from_numpy(feats["val"]).to(device)
    test_x = torch.from_numpy(feats["test"]).to(device)
    n = len(splits.train)
    batch = min(config.batch_size, n)
    augment = _crop_flip(transform.image_size).to(device) if config.augmented else None

    def batches(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.choice(n, size=batch, replace=False)
        if augment is None:
            return train_x[idx], train_y[idx]
        images, labels = splits.train.get_batch(idx)
        with torch.no_grad():
            x = transform(images.to(device))
            return model(augment(x)).float(), labels

    runs = []
    for i in range(config.seeds):
        seed = config.seed + i
        with few_threads(device.type == "cpu" and not config.augmented):
            runs.append(train_linear_head(batches, model.feature_dim, splits, val_x, test_x, config, seed, device))
        log.info("linear seed %d: best val %.4f at step %d", seed, runs[-1].val, runs[-1].step)
    check_unchanged(before, model)
    settings = {**asdict(config), "milestones": milestones(config.steps), "batch_size_used": batch,
                "image_size_used": transform.image_size, "weight_decay": 0.0, "init": "N(0, 0.01)"}
    record = summarize("linear", runs, splits, settings=settings, backbone=backbone.record(),
                       wall_time_s=time.time() - started, bootstrap_seed=config.seed)
    if out_dir is not None:
        write_outputs(Path(out_dir), record, [r.curve for r in runs if r.curve is not None], backbone,
                      "linear separability")
    return record


@contextlib.contextmanager
def few_threads(active: bool) -> Iterator[None]:
    """One CPU thread for the tiny matrix products of a linear head: several threads only add overhead there
    (5,000 steps: 6 s with one thread, 39 s with two on a busy 2-core machine)."""
    before = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _crop_flip(size: int) -> nn.Module:
    """The paper's augmented linear variant: random-resized-crop (0.08-1) + horizontal flip, per image."""
    return nn.Sequential(K.RandomResizedCrop((size, size), scale=(0.08, 1.0)), K.RandomHorizontalFlip())


