"""SimCLR (Chen et al. 2020): an MLP projector with BatchNorm and the NT-Xent loss over the views of the batch.

There is no momentum encoder and no queue: the negatives of an anchor are the other 2N-2 views of the batch -- of
the global batch under DDP, whose embeddings are all-gathered with a gradient. What the training loop asks of a
method: hpt.methods.base.Method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hpt import distributed
from hpt.errors import HptError
from hpt.methods.base import StepOutput, TrainingSize
from hpt.models.resnet import ResNet
from hpt.models.resnet import set_bn_splits as _set_bn_splits


@dataclass
class SimCLRConfig:
    """SimCLR's hyper-parameters.

    ``temperature`` defaults to 0.2, not the 0.5 of SimCLR's paper defaults (its ImageNet runs used 0.1): 0.2 is
    the temperature of this recipe's MoCo-v2, so that swapping the method changes the method and not also the
    sharpness of the softmax, and it lies between the two values SimCLR itself used.
    """

    dim: int = 128  # output of the projector
    hidden_dim: int | None = None  # None: the backbone's feature size (2048 for ResNet-50), as in SimCLR
    temperature: float = 0.2

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise HptError(f"simclr.dim must be >= 1, got {self.dim}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise HptError(f"simclr.hidden_dim must be >= 1 (or null for the backbone's feature size), "
                           f"got {self.hidden_dim}")
        if not self.temperature > 0:
            raise HptError(f"simclr.temperature must be > 0, got {self.temperature}")


class MLPHead(nn.Sequential):
    """fc -> BatchNorm1d -> ReLU -> fc (SimCLR's projector; BYOL's projector and predictor)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the gradient summed over all ranks.

    Written here rather than taken from ``torch.distributed.nn.functional.all_gather`` (deprecated in recent
    torch); an all-reduce in the backward works with every backend (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.local = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, differentiably; the identity on one process.

    Every rank must pass the same shape. The gradient each rank gets is the sum of all ranks' losses'
    gradients, so DDP's averaging of parameter gradients yields the gradient of the mean of the ranks' losses.
    """
    if distributed.world_size() == 1:
        return x
    out: torch.Tensor = _GatherWithGrad.apply(x)
    return out


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of the local anchors against the global batch: returns (loss, accuracy).

    ``z1[i]`` and ``z2[i]`` (L2-normalised, shape (N, d)) are the two views of image i. Each of the 2N local
    views is an anchor; its positive is the other view of its image, its negatives the other 2N-2 views
    (2NW-2 under DDP with W processes). The loss is the mean over the local anchors of
    ``-log(exp(s_pos / t) / sum_{k != anchor} exp(s_k / t))`` with cosine similarities ``s``. The accuracy is
    the fraction of anchors whose positive has the highest similarity among all candidates (detached).
    """
    n = z1.shape[0]
    local = torch.cat([z1, z2], dim=0)
    everything = gather_with_grad(local)
    offset = distributed.rank() * 2 * n  # where this rank's views sit in the gathered batch
    logits = local @ everything.T / temperature
    rows = torch.arange(2 * n, device=local.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, offset + rows] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    labels = offset + (rows + n) % (2 * n)
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
    return loss, accuracy


class SimCLR(nn.Module):
    """Backbone + projector trained with NT-Xent; no momentum encoder, no queue."""

    def __init__(self, backbone: ResNet, config: SimCLRConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        hidden = config.hidden_dim or backbone.feature_dim
        self.projector = MLPHead(backbone.feature_dim, hidden, config.dim)
        self.description = "SimCLR: negatives from the global batch, no queue"

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the backbone and the projector."""
        return list(self.backbone.parameters()) + list(self.projector.parameters())

    def set_bn_splits(self, splits: int) -> None:
        """Compute the backbone's training BatchNorm statistics over `splits` groups of the (2N-view) batch.

        Only the backbone's SplitBatchNorm2d layers split; the projector's BatchNorm1d spans the whole batch.
        SimCLR normalises over the whole (global) batch, so 1 (with SyncBatchNorm under DDP) is its setting.
        """
        _set_bn_splits(self, splits)

    def setup_batchnorm(self, shuffle: bool, per_process: int, world_size: int) -> int:
        """BatchNorm over the whole batch: SimCLR has no key encoder to shuffle for (one group per process)."""
        self.set_bn_splits(1)
        return 1

    def before_step(self, step: int, steps: int) -> None:
        """Nothing is scheduled."""

    def recorded(self) -> dict[str, Any]:
        return {"queue_size": None}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 projections of a batch of images."""
        return F.normalize(self.projector(self.backbone.forward_features(x)).float(), dim=1)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> StepOutput:
        """NT-Xent loss of the two views; both go through the network as one batch (BatchNorm over all 2N)."""
        both = torch.cat([view1, view2], dim=0)
        features = self.backbone.forward_features(both)
        z1, z2 = F.normalize(self.projector(features).float(), dim=1).chunk(2, dim=0)
        loss, accuracy = nt_xent(z1, z2, self.config.temperature)
        return StepOutput(loss=loss, logged={"simclr_acc": accuracy}, embeddings=z1.detach(), features=features,
                          feature_inputs=both)


def build_simclr(backbone: ResNet, config: SimCLRConfig, size: TrainingSize) -> SimCLR:
    """SimCLR around `backbone` (its size does not depend on the training's)."""
    return SimCLR(backbone, config)
