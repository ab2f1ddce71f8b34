"""Few-label fine-tuning: the whole network trained on N labelled images (the recipe's semi-supervised transfer).

A stratified, seeded subset of N training images with at least one per class; SGD momentum 0.9, lr 0.01 for the
backbone and x100 for the new head; an effective batch of 256 (gradient accumulation over micro-batches when
memory requires it); lr x0.1 at 1/3 and 2/3 of the optimizer steps actually run; random-resized-crop + flip;
val and test scored every `eval_every` optimizer steps; best val -> test. `labels=None` fine-tunes on all.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from hpt.data.sampling import stratified_choice
from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.common import loss_function, milestones, new_head, write_outputs
from hpt.eval.features import EvalBackbone, eval_transform
from hpt.eval.result import BestVal, SeedRun, summarize
from hpt.eval.splits import LabelledSplits, SplitView

log = logging.getLogger("hpt")


@dataclass
class FinetuneConfig:
    labels: int | str | None = 1000  # labelled training images; None or "all": all of them
    steps: int = 2500  # optimizer steps of one effective batch
    lr: float = 0.01
    head_lr_scale: float = 100.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256  # effective batch per optimizer step
    micro_batch: int | None = None  # images per forward pass; None: the whole batch
    eval_every: int = 100
    seeds: int = 1
    seed: int = 0
    image_size: int | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.labels, str):
            if self.labels != "all":
                raise HptError(f"finetune labels must be a number or 'all', got {self.labels!r}")
            self.labels = None
        for name in ("steps", "batch_size", "eval_every", "seeds"):
            if getattr(self, name) < 1:
                raise HptError(f"finetune {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.labels is not None and self.labels < 1:
            raise HptError(f"finetune labels must be >= 1 (or 'all'), got {self.labels}")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise HptError(f"micro-batch must be in 1..{self.batch_size} (the batch size), got {self.micro_batch}")

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step."""
        return -(-self.batch_size // (self.micro_batch or self.batch_size))


def labelled_subset(splits: LabelledSplits, n: int | None, seed: int) -> np.ndarray:
    """Positions (into splits.train) of N labelled images: stratified with at least one per class (for multi-label:
    at least one positive per class that has any), seeded."""
    total = len(splits.train)
    if n is None or n == total:
        return np.arange(total, dtype=np.int64)
    if n > total:
        raise HptError(f"--labels {n} is more than the {total} labelled training images; lower it or use all")
    if n < splits.num_classes:
        raise HptError(f"--labels {n} is fewer than the {splits.num_classes} classes; at least one image per class "
                       f"is needed, so use --labels {splits.num_classes} or more")
    rng = np.random.default_rng(seed)
    labels = splits.train.labels
    if not splits.multilabel:
        return stratified_choice(labels, n, rng)
    chosen: set[int] = set()
    for k in rng.permutation(splits.num_classes):
        positives = np.flatnonzero(labels[:, k] == 1)
        if len(positives) and not any(labels[i, k] == 1 for i in chosen):
            chosen.add(int(rng.choice(positives)))
    rest = np.setdiff1d(np.arange(total), np.fromiter(chosen, np.int64, len(chosen)))
    extra = rng.choice(rest, size=n - len(chosen), replace=False) if n > len(chosen) else []
    return np.sort(np.concatenate([np.fromiter(chosen, np.int64, len(chosen)), np.asarray(extra, np.int64)]))


class Classifier(nn.Module):
    """Backbone (any family: its forward gives the pooled features) + linear head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@torch.no_grad()
def _scores(model: Classifier, view: SplitView, transform: nn.Module, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(view), 256):
        images, _ = view.get_batch(np.arange(start, min(start + 256, len(view))))
        out.append(model(transform(images.to(device))).float().cpu())
    model.train()
    return torch.cat(out).numpy()


def finetune_run(backbone: EvalBackbone, splits: LabelledSplits, config: FinetuneConfig, seed: int,
                 device: torch.device, lr_log: list[float] | None = None) -> SeedRun:
    """One fine-tuning run from a fresh copy of the backbone."""
    torch.manual_seed(seed)
    positions = labelled_subset(splits, config.labels, seed)
    model = Classifier(copy.deepcopy(backbone.model), new_head(backbone.model.feature_dim, splits.num_classes,
                                                               seed)).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    transform = eval_transform(splits, config.image_size, backbone.model).to(device)
    size = transform.image_size
    augment = nn.Sequential(K.RandomResizedCrop((size, size), scale=config.crop_scale),
                            K.RandomHorizontalFlip()).to(device)
    optimizer = torch.optim.SGD([
        {"params": model.backbone.parameters(), "lr": config.lr},
        {"params": model.head.parameters(), "lr": config.lr * config.head_lr_scale},
    ], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(config.steps), gamma=0.1)
    criterion = loss_function(splits.multilabel)
    rng = np.random.default_rng(seed)
    batch = min(config.batch_size, len(positions))
    micro = min(config.micro_batch or batch, batch)
    tracker = BestVal(seed, splits)
    for step in range(1, config.steps + 1):
        chosen = positions[rng.choice(len(positions), size=batch, replace=False)]
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, batch, micro):
            part = chosen[start:start + micro]
            images, labels = splits.train.get_batch(part)
            x = augment(transform(images.to(device)))
            loss = criterion(model(x), labels.to(device)) * (len(part) / batch)
            if not torch.isfinite(loss):
                raise HptError(f"fine-tuning diverged (loss {loss.item()} at step {step}); lower the lr (--lr)")
            loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        if lr_log is not None:
            lr_log.append(lr)
        optimizer.step()
        scheduler.step()
        if step % config.eval_every == 0 or step == config.steps:
            val = tracker.add(step, lr, _scores(model, splits.val, transform, device),
                              _scores(model, splits.test, transform, device))
            log.info("finetune seed %d step %d/%d: val %.4f", seed, step, config.steps, val)
    return tracker.result()


def finetune_eval(backbone: EvalBackbone, splits: LabelledSplits, config: FinetuneConfig,
                  out_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune once per seed (each with its own labelled subset); write results.json and the curves."""
    started = time.time()
    device = resolve_device(config.device)
    runs = [finetune_run(backbone, splits, config, config.seed + i, device) for i in range(config.seeds)]
    n = len(splits.train) if config.labels is None else config.labels
    settings = {**asdict(config), "labels_used": n, "milestones": milestones(config.steps),
                "accumulation": config.accumulation, "head_lr": config.lr * config.head_lr_scale}
    record = summarize(f"finetune-{'all' if config.labels is None else config.labels}", runs, splits,
                       settings=settings, backbone=backbone.record(), wall_time_s=time.time() - started,
                       bootstrap_seed=config.seed)
    if out_dir is not None:
        write_outputs(Path(out_dir), record, [r.curve for r in runs if r.curve is not None], backbone,
                       "few-label fine-tuning")
    return record
