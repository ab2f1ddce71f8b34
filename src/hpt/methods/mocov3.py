"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"), after
facebookresearch/moco-v3's ``moco/builder.py``.

The base encoder (backbone + projection MLP) and a prediction MLP give queries; a momentum encoder (an EMA copy of
backbone + projector, no predictor) gives keys, without gradient (the stop-grad). Each query meets the keys of
the other view of the same (global) batch: its own image's key is the positive, the other images' keys are the
negatives -- there is no queue. The loss is symmetric, ``ctr(q1, k2) + ctr(q2, k1)``, each term InfoNCE at
temperature T scaled by 2T as the reference does (which keeps the gradient's scale from growing as 1/T).

As in the reference, each view goes through the networks as a batch of its own (BatchNorm statistics per view);
the Base anchor gets the first view's backbone features. Defaults follow the ViT recipe (3-layer projector,
predictor ending in BatchNorm, T = 0.2, momentum 0.99 rising to 1 on a cosine); the ResNet recipe is
``proj_layers: 2, pred_last_bn: false`` (and T = 1.0 in the reference's ResNet runs). The heads' hidden width is
sized from the backbone unless set (momentum.hidden_width): the reference's 4,096 for ViT-S/B and ResNet-50.

Small batches: the negatives are the batch's other images only (N - 1 per query on one process, the gathered
global batch under DDP), so the logged ``mocov3_acc`` (fraction of queries whose own key scores highest) starts
near 1/N and is easier to reach than with a large batch; the heads' BatchNorm needs at least 2 images per
process. The reference normalises over the global batch (SyncBatchNorm): use ``batchnorm: sync`` under DDP.
Not here: the ViT recipe's frozen random patch projection (``--stop-grad-conv1``, a ViT detail).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpt import distributed
from hpt.errors import HptError
from hpt.methods.base import StepOutput, TrainingSize
from hpt.methods.momentum import (
    MomentumSchedule,
    check_momentum,
    ema_update_,
    freeze,
    hidden_width,
    pooled_features,
    scheduled_momentum,
)
from hpt.models.resnet import ResNet
from hpt.models.resnet import set_bn_splits as _set_bn_splits

log = logging.getLogger("hpt")

REFERENCE_HIDDEN = 4096  # the reference's mlp_dim


@dataclass
class MocoV3Config:
    """MoCo v3's hyper-parameters (the `mocov3:` section of a stage): the reference's ViT recipe, heads sized from
    the backbone."""

    dim: int = 256  # output of the projector and the predictor (the reference's moco_dim)
    hidden_dim: int | None = None  # hidden width of the projector; None: 16 x the backbone's features, <= 4096
    pred_hidden_dim: int | None = None  # hidden width of the predictor; None: that of the projector
    proj_layers: int = 3  # projector depth: 3 (ViT recipe) or 2 (ResNet recipe)
    pred_last_bn: bool = True  # the predictor ends in BatchNorm without affine (ViT recipe; ResNet recipe: false)
    temperature: float = 0.2  # the ViT recipe's moco_t (the ResNet runs: 1.0)
    momentum: float = 0.99  # momentum-encoder EMA rate (the base value under the cosine schedule)
    momentum_schedule: MomentumSchedule = "cosine"  # cosine: from `momentum` to 1 over the stage (--moco-m-cos)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise HptError(f"mocov3.dim must be >= 1, got {self.dim}")
        for name in ("hidden_dim", "pred_hidden_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HptError(f"mocov3.{name} must be >= 1 (or null to size it from the backbone), got {value}")
        if self.proj_layers < 1:
            raise HptError(f"mocov3.proj_layers must be >= 1 (3 for the ViT recipe, 2 for ResNet), "
                           f"got {self.proj_layers}")
        if not self.temperature > 0:
            raise HptError(f"mocov3.temperature must be > 0 (the ViT recipe's is 0.2), got {self.temperature}")
        check_momentum("mocov3", self.momentum, self.momentum_schedule)


def build_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """The reference's ``_build_mlp``: bias-free Linear layers, BatchNorm + ReLU after each hidden one, and (with
    `last_bn`) a BatchNorm without affine after the last."""
    layers: list[nn.Module] = []
    for index in range(num_layers):
        first, last = index == 0, index == num_layers - 1
        layers.append(nn.Linear(in_dim if first else hidden_dim, out_dim if last else hidden_dim, bias=False))
        if not last:
            layers += [nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``contrastive_loss`` of queries `q` (N x D) against keys `k` (N x D, no gradient), both
    L2-normalised here: ``2T * CE(q @ K.T / T, own index)`` where K is the keys of every process (this rank's
    images sit at rank * N). Returns (loss, accuracy), the accuracy the fraction of queries whose own key has the
    highest logit (detached)."""
    q = F.normalize(q.float(), dim=1)
    keys = distributed.concat_all_gather(F.normalize(k.detach().float(), dim=1))
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * distributed.rank()
    loss = F.cross_entropy(logits, labels) * (2.0 * temperature)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
    return loss, accuracy


def mocov3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric MoCo v3 loss ``ctr(q1, k2) + ctr(q2, k1)`` (contrastive_loss): each view's queries against the
    other view's keys. Returns (loss, the mean accuracy of the two terms)."""
    loss1, accuracy1 = contrastive_loss(q1, k2, temperature)
    loss2, accuracy2 = contrastive_loss(q2, k1, temperature)
    return loss1 + loss2, (accuracy1 + accuracy2) / 2


class MocoV3(nn.Module):
    """Base encoder (backbone + projector), predictor, and momentum encoder (EMA of backbone + projector)."""

    def __init__(self, backbone: ResNet, config: MocoV3Config) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.hidden_dim = config.hidden_dim or hidden_width(backbone.feature_dim, REFERENCE_HIDDEN)
        self.pred_hidden_dim = config.pred_hidden_dim or self.hidden_dim
        self.projector = build_mlp(config.proj_layers, backbone.feature_dim, self.hidden_dim, config.dim)
        self.predictor = build_mlp(2, config.dim, self.pred_hidden_dim, config.dim, last_bn=config.pred_last_bn)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        freeze(self.momentum_backbone)
        freeze(self.momentum_projector)
        self.momentum = config.momentum  # the EMA rate of the next momentum_update (before_step schedules it)
        schedule = f"{config.momentum} -> 1 (cosine)" if config.momentum_schedule == "cosine" else str(config.momentum)
        self.description = (f"MoCo v3: negatives from the global batch (no queue), T {config.temperature}, "
                            f"momentum {schedule}, heads {self.hidden_dim} wide")

    def online_parameters(self) -> list[nn.Parameter]:
        """The base encoder's parameters that have a momentum copy, in the order of momentum_parameters()."""
        return list(self.backbone.parameters()) + list(self.projector.parameters())

    def momentum_parameters(self) -> list[nn.Parameter]:
        return list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the backbone, the projector and the predictor (not the momentum encoder)."""
        return self.online_parameters() + list(self.predictor.parameters())

    def setup_batchnorm(self, shuffle: bool, per_process: int, world_size: int) -> int:
        """BatchNorm over each view's whole batch (one group per process): MoCo v3 has no shuffle-BN."""
        if shuffle and world_size > 1:
            log.warning("mocov3: the reference normalises over the global batch (SyncBatchNorm); with batchnorm: "
                        "shuffle each process normalises its own images (set batchnorm: sync for the reference's)")
        _set_bn_splits(self, 1)
        return 1

    def before_step(self, step: int, steps: int) -> None:
        """The momentum of this step under config.momentum_schedule."""
        self.momentum = scheduled_momentum(self.config.momentum, self.config.momentum_schedule, step, steps)

    def recorded(self) -> dict[str, Any]:
        return {"queue_size": None}

    @torch.no_grad()
    def momentum_update(self) -> None:
        """momentum encoder <- m * momentum encoder + (1 - m) * base encoder (parameters only)."""
        ema_update_(self.online_parameters(), self.momentum_parameters(), self.momentum)

    def queries(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone features, predictor output) of one view, with gradients."""
        features = pooled_features(self.backbone, images)
        return features, self.predictor(self.projector(features))

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's projections of one view (no gradient)."""
        keys: torch.Tensor = self.momentum_projector(pooled_features(self.momentum_backbone, images))
        return keys

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> StepOutput:
        """Queries of both views, the momentum encoder's EMA step, keys of both views, the symmetric loss."""
        features, q1 = self.queries(view1)
        _, q2 = self.queries(view2)
        self.momentum_update()
        k1, k2 = self.keys(view1), self.keys(view2)
        loss, accuracy = mocov3_loss(q1, q2, k1, k2, self.config.temperature)
        return StepOutput(loss=loss, logged={"mocov3_acc": accuracy},
                          embeddings=F.normalize(q1.detach().float(), dim=1), features=features,
                          feature_inputs=view1)


def build_mocov3(backbone: ResNet, config: MocoV3Config, size: TrainingSize) -> MocoV3:
    """MoCo v3 around `backbone` (no queue to size; its momentum schedule runs over the steps the loop passes to
    before_step)."""
    return MocoV3(backbone, config)
