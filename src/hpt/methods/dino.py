"""DINO self-distillation (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"), after
facebookresearch/dino's ``main_dino.py`` (DINOLoss, the training step) and ``vision_transformer.py`` (DINOHead).

A student (backbone + DINOHead) is trained to match, on the other view, the output distribution of a teacher --
an EMA copy of the student (momentum rising on a cosine from 0.996 to 1), given no gradient. Collapse is avoided by
centering (a running mean of the teacher's outputs, EMA 0.9, subtracted before its softmax) and sharpening (a low
teacher temperature, warmed up linearly from warmup_teacher_temp to teacher_temp; the student's is 0.1).

Two global views only: the training loop gives each step two augmented views, so the loss is the reference's with
no local crops -- the mean of ``H(teacher(view1), student(view2))`` and ``H(teacher(view2), student(view1))``.
Multi-crop (the reference's small local views, seen by the student only) is not implemented here.

The last layer of prototypes is kept still for the first freeze_last_layer_steps steps (the reference cancels its
gradients during the first epoch): its gradient is zero there, not absent, so DDP sees every parameter each step.
With SGD's weight decay the frozen weight_v is only rescaled, which leaves the normalised weight unchanged
(norm_last_layer: true); a trainable weight_g (norm_last_layer: false) shrinks by the weight decay only.
Not here: the reference's gradient clipping (clip_grad 3.0), which the training loop does not do.
"""

from __future__ import annotations

import copy
import itertools
import math
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

REFERENCE_HIDDEN = 2048  # DINOHead's hidden_dim


@dataclass
class DinoConfig:
    """DINO's hyper-parameters (the `dino:` section of a stage): the reference's defaults, but 4,096 prototypes
    rather than its 65,536 (sized for ImageNet's 1.3 million images: a 256 x 65,536 last layer, twice over with the
    teacher, would outweigh a ResNet-18 three times) and heads sized from the backbone (the reference's 2,048
    wide for ViT-S/B and ResNets). Two global views per step: no multi-crop local views (no local_crops
    settings)."""

    out_dim: int = 4096  # prototypes: the last layer's outputs (the reference's 65536)
    hidden_dim: int | None = None  # the head's hidden width; None: 16 x the backbone's features, <= 2048
    bottleneck_dim: int = 256  # the l2-normalised output before the last layer
    nlayers: int = 3  # MLP layers before the bottleneck output
    use_bn_in_head: bool = False
    norm_last_layer: bool = True  # weight-normalised last layer with its norm fixed at 1 (false: trained)
    momentum: float = 0.996  # teacher EMA rate (the base value under the cosine schedule)
    momentum_schedule: MomentumSchedule = "cosine"  # cosine: from `momentum` to 1 over the stage
    teacher_temp: float = 0.04  # after the warm-up
    warmup_teacher_temp: float = 0.04  # at step 0
    warmup_teacher_temp_steps: int = 0  # steps of the linear warm-up of the teacher's temperature
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # steps at the start with the last layer kept still; None: one epoch of the data set (the reference's
    # freeze_last_layer 1), at most a tenth of the stage's steps; 0: never
    freeze_last_layer_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("out_dim", "bottleneck_dim", "nlayers"):
            if getattr(self, name) < 1:
                raise HptError(f"dino.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise HptError(f"dino.hidden_dim must be >= 1 (or null to size it from the backbone), "
                           f"got {self.hidden_dim}")
        check_momentum("dino", self.momentum, self.momentum_schedule)
        for name in ("teacher_temp", "warmup_teacher_temp", "student_temp"):
            if not getattr(self, name) > 0:
                raise HptError(f"dino.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.center_momentum < 1.0:
            raise HptError(f"dino.center_momentum must be in [0, 1) (the reference's is 0.9), "
                           f"got {self.center_momentum}")
        if self.warmup_teacher_temp_steps < 0:
            raise HptError(f"dino.warmup_teacher_temp_steps must be >= 0, got {self.warmup_teacher_temp_steps}")
        if self.freeze_last_layer_steps is not None and self.freeze_last_layer_steps < 0:
            raise HptError(f"dino.freeze_last_layer_steps must be >= 0 (or null for one epoch), "
                           f"got {self.freeze_last_layer_steps}")


def teacher_temperature(step: int, warmup_temp: float, temp: float, warmup_steps: int) -> float:
    """The reference's schedule per step: ``linspace(warmup_temp, temp, warmup_steps)`` over the warm-up's steps,
    then `temp`."""
    if step >= warmup_steps:
        return temp
    if warmup_steps == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * step / (warmup_steps - 1)


def dino_loss(s1: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DINOLoss over two views: student logits s1, s2 (N x K, with gradients), teacher logits t1, t2 (no gradient)
    and the center (1 x K). The teacher's targets are ``softmax((t - center) / teacher_temp)``; the loss is the
    mean of the cross-entropies ``-sum_k p_t1 log softmax(s2 / student_temp)`` and the same of t2 against s1.

    Returns (loss, metrics): ``dino_entropy``, the mean entropy of the teacher's targets (0: one-hot; log K:
    uniform), and ``dino_agreement``, the fraction of images whose student's top prototype on one view is the
    teacher's on the other (both detached)."""
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in (t1, t2)]
    students = [F.log_softmax(s.float() / student_temp, dim=-1) for s in (s2, s1)]  # the other view's
    terms = [torch.sum(-p * log_q, dim=-1).mean() for p, log_q in zip(targets, students, strict=True)]
    loss = torch.stack(terms).mean()
    with torch.no_grad():
        entropy = torch.stack([torch.special.entr(p).sum(dim=-1).mean() for p in targets]).mean()
        agreement = torch.stack([(p.argmax(dim=-1) == log_q.argmax(dim=-1)).float().mean()
                                 for p, log_q in zip(targets, students, strict=True)]).mean()
    return loss, {"dino_entropy": entropy, "dino_agreement": agreement}


def next_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """The reference's update_center on one process: ``momentum * center + (1 - momentum) * batch mean`` of the
    teacher's logits (N x K; both views together)."""
    return center * momentum + teacher.detach().float().mean(dim=0, keepdim=True) * (1.0 - momentum)


class WeightNormLinear(nn.Module):
    """A bias-free Linear with weight = weight_g * weight_v / ||weight_v|| (row-wise), as torch's weight_norm;
    `frozen` gives its parameters a zero gradient (the reference's freeze_last_layer)."""

    def __init__(self, in_dim: int, out_dim: int, norm_fixed: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_fixed)
        self.frozen = False

    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight()
        if self.frozen:
            weight = weight.detach() + 0.0 * weight  # same value, zero gradient
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """The reference's DINOHead: MLP (GELU, optional BatchNorm) to a bottleneck, l2-normalised, then a
    weight-normalised last layer of `out_dim` prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int = 3,
                 use_bn: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        for index, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if index < nlayers - 1:
                layers += [nn.BatchNorm1d(b)] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_fixed=norm_last_layer)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The l2-normalised bottleneck output (N x bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.last_layer(self.bottleneck(x))
        return logits


class DINO(nn.Module):
    """Student (backbone + DINOHead), teacher (EMA copy of both, no gradient), and the center of the teacher."""

    def __init__(self, backbone: ResNet, config: DinoConfig, freeze_last_layer_steps: int = 0) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.hidden_dim = config.hidden_dim or hidden_width(backbone.feature_dim, REFERENCE_HIDDEN)
        self.head = DINOHead(backbone.feature_dim, config.out_dim, self.hidden_dim, config.bottleneck_dim,
                             config.nlayers, config.use_bn_in_head, config.norm_last_layer)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        freeze(self.teacher_backbone)
        freeze(self.teacher_head)
        self.register_buffer("center", torch.zeros(1, config.out_dim))
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.momentum = config.momentum  # the teacher's EMA rate of the next step (before_step schedules it)
        self.teacher_temp = teacher_temperature(0, config.warmup_teacher_temp, config.teacher_temp,
                                                config.warmup_teacher_temp_steps)
        self.description = (f"DINO: {config.out_dim} prototypes, two global views (no multi-crop), teacher "
                            f"momentum {config.momentum}{' -> 1' if config.momentum_schedule == 'cosine' else ''}, "
                            f"last layer still for {freeze_last_layer_steps} steps")

    def student_parameters(self) -> list[nn.Parameter]:
        """The student's parameters, in the order of teacher_parameters()."""
        return list(self.backbone.parameters()) + list(self.head.parameters())

    def teacher_parameters(self) -> list[nn.Parameter]:
        return list(self.teacher_backbone.parameters()) + list(self.teacher_head.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the student (a fixed weight_g, norm_last_layer, has no gradient)."""
        return self.student_parameters()

    def setup_batchnorm(self, shuffle: bool, per_process: int, world_size: int) -> int:
        """BatchNorm over the whole two-view batch (one group per process): DINO has no negatives to leak."""
        _set_bn_splits(self, 1)
        return 1

    def before_step(self, step: int, steps: int) -> None:
        """The teacher's momentum and temperature of this step; the last layer still in the first steps."""
        config = self.config
        self.momentum = scheduled_momentum(config.momentum, config.momentum_schedule, step, steps)
        self.teacher_temp = teacher_temperature(step, config.warmup_teacher_temp, config.teacher_temp,
                                                config.warmup_teacher_temp_steps)
        self.head.last_layer.frozen = step < self.freeze_last_layer_steps

    def recorded(self) -> dict[str, Any]:
        return {"queue_size": None}

    @torch.no_grad()
    def momentum_update(self) -> None:
        """teacher <- m * teacher + (1 - m) * student (parameters only)."""
        ema_update_(self.student_parameters(), self.teacher_parameters(), self.momentum)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """The center's EMA step towards the mean teacher output of the global batch (all processes)."""
        batch_mean = distributed.all_reduce_mean_(teacher.detach().float().mean(dim=0, keepdim=True))
        self.center.copy_(next_center(self.center, batch_mean, self.config.center_momentum))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> StepOutput:
        """The teacher's EMA step and its outputs, the student's, the loss (dino_loss), then the center's step;
        both views go through each network as one batch (the reference's MultiCropWrapper)."""
        both = torch.cat([view1, view2], dim=0)
        with torch.no_grad():
            self.momentum_update()
            teacher = self.teacher_head(pooled_features(self.teacher_backbone, both)).float()
        features = pooled_features(self.backbone, both)
        z = self.head.bottleneck(features)
        student = self.head.last_layer(z).float()
        s1, s2 = student.chunk(2, dim=0)
        t1, t2 = teacher.chunk(2, dim=0)
        loss, logged = dino_loss(s1, s2, t1, t2, self.center.clone(), self.config.student_temp, self.teacher_temp)
        self.update_center(teacher)
        embeddings = z[: view1.shape[0]].detach().float()
        return StepOutput(loss=loss, logged=logged, embeddings=embeddings, features=features, feature_inputs=both)


def freeze_steps(config: DinoConfig, size: TrainingSize) -> int:
    """config.freeze_last_layer_steps, or (None) one epoch of the data set, at most a tenth of the stage."""
    if config.freeze_last_layer_steps is not None:
        return config.freeze_last_layer_steps
    epoch = math.ceil(size.num_images / max(size.global_batch, 1))
    return min(epoch, size.steps // 10)


def build_dino(backbone: ResNet, config: DinoConfig, size: TrainingSize) -> DINO:
    """DINO around `backbone`; the last layer's still steps sized to the training (freeze_steps)."""
    return DINO(backbone, config, freeze_steps(config, size))
