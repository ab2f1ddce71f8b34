"""The step loop of a stage (modes all and bn), to be read top to bottom.

The method (hpt.methods, built by name from the registry) gives each step's loss and does its own updates; the
loop never names one. Around the steps: the data (batches.py), what trains (build.py), the learning rate
(schedule.py), the rows of metrics.csv (progress.py), the probe and the guard (checks.py), non-finite numbers
(health.py), Ctrl-C (interrupt.py) and the resume state (state.py). stage.py decides what runs; this file runs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpt import distributed
from hpt.augment import MocoAugment
from hpt.errors import HptError
from hpt.methods import StepOutput
from hpt.models import ResNet, save_backbone, weights_sha256
from hpt.models.lora import merge_lora
from hpt.pretrain.anchor import BaseAnchor
from hpt.pretrain.batches import fit_stem, per_rank_batch, prepare_data, step_seed
from hpt.pretrain.batchnorm import average_bn_statistics, restore_batchnorm
from hpt.pretrain.build import Training, build_training, parallel, restore
from hpt.pretrain.checks import guard_stop, probe_stop, start_guard, start_probe
from hpt.pretrain.config import StageConfig
from hpt.pretrain.continued import load_continued
from hpt.pretrain.early_stop import OnlineProbe
from hpt.pretrain.guard import Guard, build_guard
from hpt.pretrain.health import FiniteCheck
from hpt.pretrain.interrupt import DeferredInterrupt
from hpt.pretrain.progress import StepLog, log_start
from hpt.pretrain.schedule import set_lr
from hpt.pretrain.state import Saver

log = logging.getLogger("hpt")


def train_ssl(
    config: StageConfig,
    backbone: ResNet,
    stage_dir: Path,
    state: dict[str, Any] | None,
    semantic: dict[str, Any],
    info: distributed.DistInfo,
    continued: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Self-supervised training of the backbone (mode all or bn) for config.steps steps with config.method.

    continued: the previous stage's method state (continue_method) to start from instead of a new head and queue.
    """
    # the data, from the step the saved state reached
    per_rank = per_rank_batch(config, info)
    start_step = int(state["step"]) if state else 0
    dataset, side, mean, std, loader = prepare_data(config, info, per_rank, start_step)
    fit_stem(backbone, dataset, config)  # N-channel data: the stem of a 3-channel backbone is adapted

    # the method and what trains it, then a saved state (or the previous stage's method) over them
    training = build_training(config, backbone, len(dataset), per_rank, info)
    method, optimizer = training.method, training.optimizer
    if continued is not None:
        load_continued(method, continued, backbone, config.name)
    guard = build_guard(config.guard, config.data, info.device, config.budget == "auto") if config.guard else None
    if state:
        restore(training, state, guard)
    train_model = parallel(method, config, info)
    augment = MocoAugment(config.augment, mean, std, side).to(info.device)
    method.train()
    log_start(config, training, len(dataset), per_rank, start_step, info)

    # what reads the backbone between steps, and what saves
    probe = start_probe(config, state, start_step, method.backbone, info.device)
    saver = Saver(stage_dir, method, optimizer, training.scaler, semantic, info, start_step if state else None)
    health = FiniteCheck(config, method, optimizer, stage_dir, info.device)  # type: ignore[arg-type]
    if guard is not None and start_step == 0:
        start_guard(guard, config, method, optimizer, saver, info, dataset, per_rank, mean, std, side)
    steplog = StepLog(config, stage_dir, start_step, info)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)

    stopped: dict[str, Any] | None = None
    step = start_step
    interrupt = DeferredInterrupt()  # Ctrl-C: finish the step, save it, stop
    try:
        interrupt.install()  # before the DataLoader forks its workers, which inherit the handler
        iterator = iter(loader)
        loop_start = steplog.start()
        for step in range(start_step, config.steps):
            images, _ = next(iterator)
            images = images.to(info.device, non_blocking=True)
            torch.manual_seed(step_seed(config.seed, step, info.rank))  # this step's augmentation and shuffle
            view1, view2 = augment(images), augment(images)
            if config.channels_last:
                view1 = view1.contiguous(memory_format=torch.channels_last)
                view2 = view2.contiguous(memory_format=torch.channels_last)
            set_lr(optimizer, config, training.lr, step, guard.lr_scale if guard is not None else 1.0)
            method.before_step(step, config.steps)
            out, anchor_term = forward(train_model, training.anchor, view1, view2, autocast_dtype, info)
            loss = out.loss if anchor_term is None else out.loss + config.anchor.weight * anchor_term
            optimizer_step(training, loss)

            done = step + 1
            health.note_loss(done, loss)
            due = Due.after(done, config, probe, guard)
            interrupted = health.check(done, due.scan, interrupt.requested, saver.last_step) if (
                due.log or due.scan or (interrupt.requested and not info.distributed)) else False
            steplog.step(done, out, anchor_term, optimizer.param_groups[-1]["lr"], due.log)
            if due.probe and probe is not None:
                stopped = probe_stop(probe, done, config, method.backbone) or stopped
            if due.guard and guard is not None:
                stopped = guard_stop(guard, done, config, method, optimizer, saver, info) or stopped
            if due.save or stopped or interrupted:
                saver.save(done, extras(probe, guard))
            if due.keep and info.is_main:
                save_backbone(method.backbone, stage_dir / f"backbone-step{done}.safetensors",
                              {"stage": config.name, "step": str(done), "data": str(config.data)})
            if interrupted and not stopped and done < config.steps:
                raise HptError(f"interrupted after step {done}; its state is saved in {stage_dir / 'state'}: "
                               "run the same command with --resume to continue")
            if stopped:
                break
    except KeyboardInterrupt:  # a second Ctrl-C: the step in progress is dropped, the last saved state kept
        kept = (f"the last saved state (step {saver.last_step}) is kept in {stage_dir / 'state'}: run the same "
                "command with --resume to continue from it" if saver.last_step else
                "no state was saved yet: run the same command again to start the stage over")
        raise HptError(f"interrupted during step {step + 1}; {kept}") from None
    finally:
        interrupt.restore()
        steplog.close()
    train_time = time.perf_counter() - loop_start

    last_step = stopped["step"] if stopped else config.steps
    checksums = finish_backbone(training, backbone, info)
    steps_run = last_step - start_step
    return {
        "steps_done": last_step,
        "steps_this_run": steps_run,
        "stopped_early": stopped,
        "collapse": steplog.collapse.warning,  # None, or the first logged step whose embedding spread was below 0.1
        "guard": guard.record() if guard is not None else None,
        "anchor_weight": config.anchor.weight,
        "resumed_from": start_step,
        "train_time_s": round(train_time, 3),
        "images_per_s": round(steps_run * config.batch_size / max(train_time, 1e-9), 2),
        "final_loss": steplog.last_loss,
        "global_batch": config.batch_size,
        **method.recorded(),
        "queue_reason": method.description,
        "bn_splits_per_process": training.bn_groups,
        "trained": training.trained,
        "lr": training.lr,
        "num_images": len(dataset),
        "rank_checksums": checksums,
    }


def forward(train_model: nn.Module, anchor: BaseAnchor | None, view1: torch.Tensor, view2: torch.Tensor,
            autocast_dtype: torch.dtype | None, info: distributed.DistInfo) -> tuple[StepOutput, torch.Tensor | None]:
    """The method's step and the anchor term on the batch its backbone saw, in the stage's precision."""
    with torch.autocast(info.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out: StepOutput = train_model(view1, view2)
        anchor_term = anchor(out.feature_inputs, out.features) if anchor is not None else None
    return out, anchor_term


def optimizer_step(training: Training, loss: torch.Tensor) -> None:
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    training.scaler.step(training.optimizer)
    training.scaler.update()


@dataclass(frozen=True)
class Due:
    """What falls due after a step besides the step itself."""

    log: bool  # a row of metrics.csv
    probe: bool  # a reading of the convergence probe
    guard: bool  # a reading of the guard
    save: bool  # the resume state (every checkpoint_every steps, and the last step)
    keep: bool  # a copy of the backbone (keep_backbones)

    @classmethod
    def after(cls, done: int, config: StageConfig, probe: OnlineProbe | None, guard: Guard | None) -> Due:
        return cls(log=done % config.log_every == 0 or done == config.steps,
                   probe=probe is not None and config.stop is not None and done % config.stop.every == 0,
                   guard=guard is not None and guard.due(done, config.steps),
                   save=done % config.checkpoint_every == 0 or done == config.steps,
                   keep=done in config.keep_backbones)

    @property
    def scan(self) -> bool:
        """Before anything is saved or read: every weight and statistic is checked for non-finite numbers."""
        return self.save or self.keep or self.probe or self.guard


def extras(probe: OnlineProbe | None, guard: Guard | None) -> dict[str, Any]:
    """The resume state's part beyond the method and the optimizer: the probe's history, the guard's state."""
    extra: dict[str, Any] = {"probe_history": probe.history} if probe is not None else {}
    if guard is not None:
        extra["guard"] = guard.state()
    return extra


def finish_backbone(training: Training, backbone: ResNet, info: distributed.DistInfo) -> list[str]:
    """The trained backbone as later stages and evaluation take it: plain (split) BatchNorm again after
    SyncBatchNorm, LoRA adapters merged into their weights (the original keys), the ranks' running statistics
    averaged; returns every rank's checksum (they must agree)."""
    if training.sync_bn:
        restore_batchnorm(training.method.backbone)
    merge_lora(backbone)
    if info.distributed:  # after the last forward each rank holds its own running statistics: average them
        average_bn_statistics(backbone)
    checksums = distributed.all_gather_objects(weights_sha256(backbone))
    if len(set(checksums)) != 1:
        raise RuntimeError(f"the backbones differ between ranks after training: {checksums}")
    return checksums
