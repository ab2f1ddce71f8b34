"""The self-supervised training loop of a stage (modes all and bn): method, optimizer, precision, DDP, resume state.

stage.py decides what runs; this file runs it, step by step, and writes the resume state and metrics.csv.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hpt import distributed
from hpt.augment import EvalTransform, MocoAugment
from hpt.convergence import OnlineProbe
from hpt.data import channel_stats, make_eval_loader, make_loader, open_any
from hpt.errors import HptError
from hpt.methods import BYOL, SSLMethod, build_method
from hpt.methods.collapse import CollapseWatch, embedding_spread
from hpt.metrics_log import MetricsLog
from hpt.models import ResNet, save_backbone, weights_sha256
from hpt.pretrain.anchor import BaseAnchor
from hpt.pretrain.batchnorm import (
    average_bn_statistics,
    reestimate_bn_statistics,
    restore_batchnorm,
)
from hpt.pretrain.continued import load_continued
from hpt.pretrain.guard import Guard, build_guard
from hpt.pretrain.health import FiniteCheck
from hpt.pretrain.interrupt import DeferredInterrupt
from hpt.resume import load_state, rng_state, save_state, set_rng_state

if TYPE_CHECKING:
    from hpt.stage import StageConfig, TrainMode

log = logging.getLogger("hpt")

KEPT_DIR = "guard-kept"  # the guard's kept state, beside state/
#: metrics.csv's accuracy column: the positive key ranked first (MoCo, SimCLR); BYOL: mean cosine to the target
ACCURACY_COLUMN = {"mocov2": "moco_acc", "simclr": "simclr_acc", "byol": "byol_cosine"}


def set_trainable(backbone: ResNet, mode: TrainMode) -> None:
    """all: every parameter; bn: only BatchNorm affine parameters (conv weights frozen); others: nothing."""
    for module in backbone.modules():
        for param in module.parameters(recurse=False):
            if mode == "all":
                param.requires_grad_(True)
            elif mode == "bn":
                param.requires_grad_(isinstance(module, nn.BatchNorm2d))
            else:
                param.requires_grad_(False)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's random draws (augmentation, shuffle-BN): resumed runs repeat them exactly."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def prepare_data(config: StageConfig, info: distributed.DistInfo, per_rank: int, start_step: int):
    dataset = open_any(config.data)  # indexable data sets, or a WebDataset stream
    height, width = dataset.image_size
    side = config.augment.image_size or height
    if height != width and config.augment.image_size is None:
        raise HptError(f"images are {height}x{width}, not square; set augment.image_size (or size= in the data spec)")
    mean, std = channel_stats(dataset)
    loader = make_loader(
        dataset, per_rank, seed=config.seed, start_step=start_step, rank=info.rank, world_size=info.world_size,
        workers=config.workers, device_type=info.device.type,
    )
    return dataset, side, mean, std, loader


def per_rank_batch(config: StageConfig, info: distributed.DistInfo) -> int:
    if config.batch_size % info.world_size:
        raise HptError(
            f"the global batch {config.batch_size} is not divisible by the {info.world_size} processes; "
            "choose a batch_size that is a multiple of the world size"
        )
    return config.batch_size // info.world_size


def _bn_splits(config: StageConfig, info: distributed.DistInfo, per_rank: int) -> int:
    """BatchNorm groups per process: the configured groups per global batch, spread over the processes."""
    wanted = max(1, config.moco.bn_splits // info.world_size)
    return max(g for g in range(1, wanted + 1) if per_rank % g == 0)


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
    per_rank = per_rank_batch(config, info)
    start_step = int(state["step"]) if state else 0
    dataset, side, mean, std, loader = prepare_data(config, info, per_rank, start_step)
    set_trainable(backbone, config.train)  # before any DDP wrapping: DDP fixes the parameters it reduces when built
    torch.manual_seed(config.seed)  # the new head and queue
    model, queue_size, queue_reason = build_method(
        config.method, backbone, moco=config.moco, simclr=config.simclr, byol=config.byol, steps=config.steps,
        global_batch=config.batch_size, num_images=len(dataset))
    model = model.to(info.device)
    shuffle = config.batchnorm == "shuffle" and config.method == "mocov2"  # shuffle-BN is MoCo's
    splits = _bn_splits(config, info, per_rank) if shuffle else 1
    model.set_bn_splits(splits)
    model.shuffle_keys = shuffle
    # The Base of this stage: its starting backbone, before any resume state is loaded.
    anchor = BaseAnchor(config.anchor, model.backbone).to(info.device) if config.anchor.active else None
    sync_bn = config.batchnorm == "sync" and info.distributed
    if sync_bn:
        if info.device.type != "cuda":
            raise HptError("batchnorm: sync needs CUDA GPUs (torch's SyncBatchNorm runs on GPUs only); "
                           "use batchnorm: shuffle on CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BatchNorm layers in place
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.query_parameters() if p.requires_grad]
    lr = config.lr * config.batch_size / config.lr_reference_batch
    optimizer = torch.optim.SGD(_param_groups(config, model, params), lr=lr, momentum=config.sgd_momentum,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(info.device.type, enabled=config.precision == "fp16")
    if continued is not None:
        load_continued(model, continued, backbone, config.name)
    guard = build_guard(config.guard, config.data, info.device, config.budget == "auto") if config.guard else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if guard is not None and "guard" in state:
            guard.load_state(state["guard"])
    train_model: nn.Module = model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    augment = MocoAugment(config.augment, mean, std, side).to(info.device)
    model.train()

    n_trainable = sum(p.numel() for p in params)
    if info.is_main:
        log.info(
            "stage '%s': %s images of %s | mode %s (%s trainable parameters) | %d steps from step %d | "
            "global batch %d = %d per process x %d | lr %.4g (= %.4g x %d/%d, linear scaling) | %s | "
            "BatchNorm over %d groups per process | %s | %s on %s | augment: %s%s%s",
            config.name, f"{len(dataset):,}", config.data, config.train, f"{n_trainable:,}", config.steps,
            start_step, config.batch_size, per_rank, info.world_size, lr, config.lr, config.batch_size,
            config.lr_reference_batch, queue_reason, splits, config.precision,
            "channels_last" if config.channels_last else "contiguous", info.device, ",".join(config.augment.active),
            f" | anchored to its start, weight {config.anchor.weight:g}" if anchor is not None else "",
            f" | budget auto, at most {config.steps} steps" if config.budget == "auto" else "",
        )
    metrics = MetricsLog(stage_dir, resume_step=start_step) if info.is_main else None
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    probe = None
    if config.stop is not None:
        probe = OnlineProbe(config.stop, config.stop.data or config.data, info.device)
        probe.history = [tuple(item) for item in (state or {}).get("probe_history", [])]
        if start_step == 0 and not probe.history:  # the start's score: a stage that never beats it is said so
            probe.decide(0, model.backbone, config.name)
    stopped: dict[str, Any] | None = None
    saver = _Saver(stage_dir, model, optimizer, scaler, semantic, queue_size, info, start_step if state else None)
    health = FiniteCheck(config, model, optimizer, stage_dir, info.device)
    if guard is not None and start_step == 0:
        _reestimate_start(config, dataset, per_rank, mean, std, side, model.backbone, info)
        _guard_check(guard, 0, config, model, optimizer, saver, info)
    collapse = CollapseWatch(config.name, warmup_steps=max(config.log_every, config.steps // 4))
    progress = tqdm(total=config.steps, initial=start_step, disable=not info.is_main or None, unit="step",
                    desc=config.name, dynamic_ncols=True)
    loss_value = float("nan")
    step = start_step
    interrupt = DeferredInterrupt()  # Ctrl-C: finish the step, save it, stop
    try:
        interrupt.install()  # before the DataLoader forks its workers, which inherit the handler
        iterator = iter(loader)
        loop_start = time.perf_counter()
        window_start, window_images = loop_start, 0
        for step in range(start_step, config.steps):
            images, _ = next(iterator)
            images = images.to(info.device, non_blocking=True)
            torch.manual_seed(step_seed(config.seed, step, info.rank))
            im_q, im_k = augment(images), augment(images)
            if config.channels_last:
                im_q = im_q.contiguous(memory_format=torch.channels_last)
                im_k = im_k.contiguous(memory_format=torch.channels_last)
            scale = guard.lr_scale if guard is not None else 1.0
            for group in optimizer.param_groups:
                warming = group.get("is_backbone") and step < config.head_warmup_steps
                group["lr"] = 0.0 if warming else scale * scheduled_lr(lr, step, config.steps, config.lr_warmup_steps)
                if group.get("is_backbone") and step == config.head_warmup_steps:
                    for param in group["params"]:  # no momentum carried over from the warm-up's gradients
                        optimizer.state.pop(param, None)
            if isinstance(model, BYOL):
                model.schedule_momentum(step, config.steps)
            with torch.autocast(info.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                out = train_model(im_q, im_k)
                anchor_term = anchor(out.feature_inputs, out.features) if anchor is not None else None
            loss = out.loss if anchor_term is None else out.loss + config.anchor.weight * anchor_term
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done = step + 1
            health.note_loss(done, loss)
            window_images += config.batch_size
            logged = done % config.log_every == 0 or done == config.steps
            probe_due = probe is not None and config.stop is not None and done % config.stop.every == 0
            guard_due = guard is not None and guard.due(done, config.steps)
            scan = done % config.checkpoint_every == 0 or done == config.steps or done in config.keep_backbones \
                or probe_due or guard_due  # before anything is saved or read: every weight and statistic
            interrupted = health.check(done, scan, interrupt.requested, saver.last_step) if (
                logged or scan or (interrupt.requested and not info.distributed)) else False
            if logged:
                loss_value = out.loss.item()
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                window_start, window_images = now, 0
                row = {"loss": loss_value, ACCURACY_COLUMN[config.method]: out.accuracy.item(),
                       "embedding_spread": embedding_spread(out.embeddings).item(),
                       "lr": optimizer.param_groups[-1]["lr"], "images_per_s": rate}
                if anchor_term is not None:
                    row["anchor"] = anchor_term.item()
                if info.is_main:
                    collapse.check(done, row["embedding_spread"])
                if metrics is not None:
                    metrics.add(done, row)
                    progress.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}")
                    if progress.disable:
                        eta = (config.steps - done) * config.batch_size / max(rate, 1e-9)
                        log.info("%s step %d/%d loss %.4f acc %.3f spread %.3f lr %.4g %.0f img/s eta %.0fs%s",
                                 config.name, done, config.steps, loss_value, row[ACCURACY_COLUMN[config.method]],
                                 row["embedding_spread"], row["lr"], rate, eta,
                                 f" anchor {row['anchor']:.4f}" if "anchor" in row else "")
            progress.update(1)
            if probe_due and probe is not None:
                decision = probe.decide(done, model.backbone, config.name)  # rank 0's, on every rank
                if decision.stop:
                    stopped = {"step": done, "reason": decision.reason, "steps_saved": config.steps - done,
                               "probe_history": probe.history}
            if (guard_due and guard is not None
                    and _guard_check(guard, done, config, model, optimizer, saver, info) and done < config.steps):
                stopped = {"step": done, "reason": guard.reason, "steps_saved": config.steps - done}
            extra = {"probe_history": probe.history} if probe is not None else {}
            if guard is not None:
                extra["guard"] = guard.state()
            if done % config.checkpoint_every == 0 or done == config.steps or stopped or interrupted:
                saver.save(done, extra)
            if done in config.keep_backbones and info.is_main:
                save_backbone(model.backbone, stage_dir / f"backbone-step{done}.safetensors",
                              {"stage": config.name, "step": str(done), "data": config.data})
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
        progress.close()
        if metrics is not None:
            metrics.close()
    train_time = time.perf_counter() - loop_start
    last_step = stopped["step"] if stopped else config.steps
    steps_run = last_step - start_step
    if sync_bn:  # plain (split) BatchNorm again in the backbones, for later stages and evaluation
        for name in ("backbone", "backbone_k", "target_backbone"):
            if hasattr(model, name):
                restore_batchnorm(getattr(model, name))
    if info.distributed:  # after the last forward each rank holds its own running statistics: average them
        average_bn_statistics(backbone)
    checksums = distributed.all_gather_objects(weights_sha256(backbone))
    if len(set(checksums)) != 1:
        raise RuntimeError(f"the backbones differ between ranks after training: {checksums}")
    return {
        "steps_done": last_step,
        "steps_this_run": steps_run,
        "stopped_early": stopped,
        "collapse": collapse.warning,  # None, or the first logged step whose embedding spread was below 0.1
        "guard": guard.record() if guard is not None else None,
        "anchor_weight": config.anchor.weight,
        "resumed_from": start_step,
        "train_time_s": round(train_time, 3),
        "images_per_s": round(steps_run * config.batch_size / max(train_time, 1e-9), 2),
        "final_loss": loss_value,
        "global_batch": config.batch_size,
        "queue_size": queue_size,
        "queue_reason": queue_reason,
        "bn_splits_per_process": splits,
        "lr": lr,
        "num_images": len(dataset),
        "rank_checksums": checksums,
    }


def _param_groups(config: StageConfig, model: SSLMethod, params: list[nn.Parameter]) -> list[dict[str, Any]]:
    """One group, or two during a head warm-up: the backbone's lr is 0 until head_warmup_steps."""
    if not config.head_warmup_steps:
        return [{"params": params, "is_backbone": False}]
    in_backbone = {id(p) for p in model.backbone.parameters()}
    log.info("%s: head warm-up for %d steps (backbone lr 0), then all trainable weights", config.name,
             config.head_warmup_steps)
    return [{"params": [p for p in params if id(p) in in_backbone], "is_backbone": True},
            {"params": [p for p in params if id(p) not in in_backbone], "is_backbone": False}]


def _reestimate_start(config: StageConfig, dataset: Any, per_rank: int, mean: Any, std: Any, side: int,
                      backbone: ResNet, info: distributed.DistInfo) -> None:
    """The start's BatchNorm statistics re-estimated on the stage's images (as the Base baseline has them), so
    that the guard's reading at step 0 - and a roll-back to it - is the Base at its best. Training uses batch
    statistics, so this changes only the running statistics the stage starts from."""
    batches = (images for images, _ in itertools.islice(make_eval_loader(dataset, per_rank), config.guard.bn_batches))
    transform = EvalTransform(mean, std, side).to(info.device)
    seen = reestimate_bn_statistics(backbone, batches, transform, info.device)
    log.info("%s: the start's BatchNorm statistics re-estimated over %d batches before the guard's first reading",
             config.name, seen)


def _guard_check(guard: Guard, step: int, config: StageConfig, model: SSLMethod, optimizer: torch.optim.Optimizer,
                 saver: _Saver, info: distributed.DistInfo) -> bool:
    """Read the signal (rank 0), act on the guard's decision on every rank; True when the stage stops here."""
    action = None
    if info.is_main:
        action = guard.observe(step, guard.read(step, model.backbone), config.steps)
        log.info("%s step %d: guard: %s", config.name, step, action.message)
    action, guard.reason = distributed.broadcast_object((action, guard.reason))  # rank 0's, taken by every rank
    guard.lr_scale = action.lr_scale
    if action.keep:
        saver.save(step, {"guard": guard.state()}, KEPT_DIR)
    if action.rollback:
        kept = load_state(saver.stage_dir / KEPT_DIR)
        if kept is None:
            raise HptError(f"the guard's kept state in {saver.stage_dir / KEPT_DIR} is missing; delete "
                           f"{saver.stage_dir} and train the stage again")
        model.load_state_dict(kept["model"])
        optimizer.load_state_dict(kept["optimizer"])
        log.info("%s step %d: rolled back to the guard's kept step %d", config.name, step, int(kept["step"]))
    return action.stop


class _Saver:
    """Writes the stage's resume state (or the guard's kept state) on rank 0; every rank waits for it."""

    def __init__(self, stage_dir: Path, model: SSLMethod, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, semantic: dict[str, Any], queue_size: int | None,
                 info: distributed.DistInfo, last_step: int | None = None) -> None:
        self.stage_dir, self.model, self.optimizer, self.scaler = stage_dir, model, optimizer, scaler
        self.semantic, self.queue_size, self.info = semantic, queue_size, info
        self.last_step = last_step  # the step of the resume state in state/ (None: none)

    def save(self, step: int, extra: dict[str, Any] | None = None, folder: str = "state") -> None:
        if self.info.is_main:
            save_state(self.stage_dir / folder, {
                "step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "semantic": self.semantic,
                "queue_size": self.queue_size, **(extra or {}),
            })
        if folder == "state":
            self.last_step = step
        distributed.barrier()


def scheduled_lr(peak: float, step: int, steps: int, warmup_steps: int = 0) -> float:
    """The lr of optimizer step `step` (0-based): linear warm-up to `peak`, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (steps - warmup_steps)))
