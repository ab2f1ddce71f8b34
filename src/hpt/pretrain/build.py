"""What a stage trains and how: the method from the registry around the backbone, the Base anchor beside it,
SyncBatchNorm, the optimizer and the loss scaler; a saved state loaded over them; DDP and torch.compile."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpt import distributed
from hpt.errors import HptError
from hpt.methods import Method, TrainingSize, build_method
from hpt.models import ResNet
from hpt.models.lora import add_lora
from hpt.pretrain.anchor import BaseAnchor
from hpt.pretrain.config import StageConfig
from hpt.pretrain.guard import Guard
from hpt.pretrain.schedule import param_groups, peak_lr
from hpt.pretrain.state import set_rng_state
from hpt.pretrain.trainable import describe_trainable, set_trainable

log = logging.getLogger("hpt")


@dataclass
class Training:
    """The method being trained and what trains it."""

    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    anchor: BaseAnchor | None  # the distillation term to the stage's start (anchor:), or None
    lr: float  # the peak learning rate (linearly scaled to the global batch)
    bn_groups: int  # BatchNorm groups per process
    sync_bn: bool  # SyncBatchNorm across the processes (undone after training)
    trainable: int  # trainable parameters, for the log
    trained: str = ""  # what of the backbone trains, in words (trainable.describe_trainable)


def build_training(config: StageConfig, backbone: ResNet, num_images: int, per_rank: int,
                   info: distributed.DistInfo) -> Training:
    if config.train == "lora":  # before the method copies the backbone (key encoder) and the optimizer is built
        lora = config.lora
        add_lora(backbone, lora.rank, lora.alpha, lora.targets, lora.dropout,
                 generator=torch.Generator().manual_seed(config.seed))
    set_trainable(backbone, config.train, config.last_blocks)  # before DDP wrapping: DDP fixes what it reduces
    trained = describe_trainable(backbone, config.train, config.last_blocks)
    log.info("stage '%s' trains %s", config.name, trained)
    torch.manual_seed(config.seed)  # the new head and queue
    method = build_method(config.method, backbone, config, TrainingSize(config.steps, config.batch_size, num_images))
    method.to(info.device)
    bn_groups = method.setup_batchnorm(config.batchnorm == "shuffle", per_rank, info.world_size)
    # The Base of this stage: its starting backbone, before any resume state is loaded.
    anchor = BaseAnchor(config.anchor, method.backbone).to(info.device) if config.anchor.active else None
    sync_bn = config.batchnorm == "sync" and info.distributed
    if sync_bn:
        if info.device.type != "cuda":
            raise HptError("batchnorm: sync needs CUDA GPUs (torch's SyncBatchNorm runs on GPUs only); "
                           "use batchnorm: shuffle on CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(method)  # replaces the BatchNorm layers in place
    if config.channels_last:
        method.to(memory_format=torch.channels_last)
    params = [p for p in method.trainable_parameters() if p.requires_grad]
    lr = peak_lr(config)
    groups = param_groups(config, method.backbone, params)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=config.adamw_betas, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.sgd_momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(info.device.type, enabled=config.precision == "fp16")
    return Training(method, optimizer, scaler, anchor, lr, bn_groups, sync_bn, sum(p.numel() for p in params),
                    trained)


def restore(training: Training, state: dict[str, Any], guard: Guard | None) -> None:
    """Load a resume state: the method's weights, the optimizer, the scaler, the random generators, the guard."""
    training.method.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if guard is not None and "guard" in state:
        guard.load_state(state["guard"])


def parallel(method: Method, config: StageConfig, info: distributed.DistInfo) -> nn.Module:
    """What the loop calls for a step: the method, in DDP across processes and compiled where asked."""
    train_model: nn.Module = method  # type: ignore[assignment]
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=device_ids)
    if config.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return train_model
