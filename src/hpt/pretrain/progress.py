"""What a stage's training tells: the line that opens it, and at logged steps a row of metrics.csv (rank 0), the
progress bar (or a console line where there is none) and the collapse watch."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hpt import distributed
from hpt.methods import StepOutput
from hpt.methods.collapse import CollapseWatch, embedding_spread
from hpt.metrics_log import MetricsLog
from hpt.pretrain.build import Training
from hpt.pretrain.config import StageConfig

log = logging.getLogger("hpt")


def log_start(config: StageConfig, training: Training, num_images: int, per_rank: int, start_step: int,
              info: distributed.DistInfo) -> None:
    if not info.is_main:
        return
    log.info(
        "stage '%s': %s images of %s | mode %s (%s trainable parameters) | %d steps from step %d | "
        "global batch %d = %d per process x %d | lr %.4g (= %.4g x %d/%d, linear scaling) | %s | "
        "BatchNorm over %d groups per process | %s | %s on %s | augment: %s%s%s",
        config.name, f"{num_images:,}", config.data, config.train, f"{training.trainable:,}", config.steps,
        start_step, config.batch_size, per_rank, info.world_size, training.lr, config.lr, config.batch_size,
        config.lr_reference_batch, training.method.description, training.bn_groups, config.precision,
        "channels_last" if config.channels_last else "contiguous", info.device, ",".join(config.augment.active),
        f" | anchored to its start, weight {config.anchor.weight:g}" if training.anchor is not None else "",
        f" | budget auto, at most {config.steps} steps" if config.budget == "auto" else "",
    )


class StepLog:
    """metrics.csv (on rank 0), the progress bar and the collapse watch of a stage's steps."""

    def __init__(self, config: StageConfig, stage_dir: Path, start_step: int, info: distributed.DistInfo) -> None:
        self.config, self.info = config, info
        self.metrics = MetricsLog(stage_dir, resume_step=start_step) if info.is_main else None
        self.collapse = CollapseWatch(config.name, warmup_steps=max(config.log_every, config.steps // 4))
        self.progress = tqdm(total=config.steps, initial=start_step, disable=not info.is_main or None, unit="step",
                             desc=config.name, dynamic_ncols=True)
        self.last_loss = float("nan")  # the method's loss at the last logged step
        self.window_start, self.window_images = time.perf_counter(), 0

    def start(self) -> float:
        """The clock of the first step (and of the throughput of the first row)."""
        self.window_start = time.perf_counter()
        return self.window_start

    def step(self, done: int, out: StepOutput, anchor_term: torch.Tensor | None, lr: float, logged: bool) -> None:
        """Step `done` (1-based) is finished: its row where `logged`, and the progress bar."""
        self.window_images += self.config.batch_size
        if logged:
            self._row(done, out, anchor_term, lr)
        self.progress.update(1)

    def _row(self, done: int, out: StepOutput, anchor_term: torch.Tensor | None, lr: float) -> None:
        config = self.config
        self.last_loss = out.loss.item()
        now = time.perf_counter()
        rate = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        logged = {name: value.item() for name, value in out.logged.items()}
        row = {"loss": self.last_loss, **logged, "embedding_spread": embedding_spread(out.embeddings).item(),
               "lr": lr, "images_per_s": rate}
        if anchor_term is not None:
            row["anchor"] = anchor_term.item()
        if self.info.is_main:
            self.collapse.check(done, row["embedding_spread"])
        if self.metrics is None:
            return
        self.metrics.add(done, row)
        self.progress.set_postfix(loss=f"{self.last_loss:.3f}", img_s=f"{rate:.0f}")
        if self.progress.disable:
            eta = (config.steps - done) * config.batch_size / max(rate, 1e-9)
            log.info("%s step %d/%d loss %.4f %s spread %.3f lr %.4g %.0f img/s eta %.0fs%s", config.name, done,
                     config.steps, self.last_loss, " ".join(f"{name} {value:.3f}" for name, value in logged.items()),
                     row["embedding_spread"], row["lr"], rate, eta,
                     f" anchor {row['anchor']:.4f}" if "anchor" in row else "")

    def close(self) -> None:
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
