"""MoCo-v2 (He et al. 2020; Chen et al. 2020) as the recipe sets it: MLP head, queue, momentum encoder, shuffle-BN.

A method owns its config, its heads, its momentum encoder and its queue; it knows nothing of stages, files or the
CLI (what the training loop asks of it: hpt.methods.base.Method).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hpt import distributed
from hpt.errors import HptError
from hpt.methods.base import StepOutput, TrainingSize
from hpt.methods.momentum import ema_update_
from hpt.models.resnet import (
    ResNet,
    SplitBatchNorm2d,
    chunks_to_strided,
    strided_to_chunks,
)

MAX_QUEUE = 65536


@dataclass
class MocoV2Config:
    """The method's hyper-parameters (recipe defaults)."""

    dim: int = 128  # output of the projection head
    hidden_dim: int | None = None  # None: the backbone's feature size (2048 for ResNet-50)
    queue_size: int | None = None  # None: sized to what the stage will refresh (auto_queue_size)
    momentum: float = 0.999  # key-encoder EMA
    temperature: float = 0.2
    bn_splits: int = 8  # BatchNorm groups per global batch for shuffle-BN (MoCo: 8 GPUs x 32 images)
    # BatchNorm after the projection head's hidden layer (as SimCLR, BYOL and MoCo-v3 heads). MoCo-v2 has none;
    # from random weights it lets training escape the narrow cone a random network maps all images into.
    head_bn: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise HptError(f"moco.momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0:
            raise HptError(f"moco.temperature must be > 0, got {self.temperature}")
        if self.bn_splits < 1:
            raise HptError(f"moco.bn_splits must be >= 1, got {self.bn_splits}")


def auto_queue_size(steps: int, global_batch: int, num_images: int, min_refreshes: int = 2) -> tuple[int, str]:
    """A queue the stage refreshes at least `min_refreshes` times, holding at most half of the data set's images
    (so that few queries meet an older key of their own image among the negatives).

    A fixed queue of 65,536 keys is never refilled in a short stage (a 50-step run of 256 images produces 12,800
    keys), so most of its negatives would stay the random vectors it starts with.
    Returns the size (a multiple of the global batch) and a sentence saying why.
    """
    seen = steps * global_batch
    limits = {
        "the 65,536 of the recipe": MAX_QUEUE,
        f"1/{min_refreshes} of the {seen:,} keys this stage produces": seen // min_refreshes,
        f"half of the {num_images:,} images of the data set": num_images // 2,
    }
    reason, limit = min(limits.items(), key=lambda item: item[1])
    size = max(global_batch, (limit // global_batch) * global_batch)
    return size, f"queue of {size:,} keys, bounded by {reason}"


def shuffle_bn_groups(groups: int, per_process: int, world_size: int) -> int:
    """BatchNorm groups per process: `groups` per global batch spread over the processes, the most that divide
    the per-process batch evenly."""
    wanted = max(1, groups // world_size)
    return max(g for g in range(1, wanted + 1) if per_process % g == 0)


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's contrastive loss: each query `q` (N x D, L2-normalised) against its positive key `k` (N x D) and the
    queue's `negatives` (D x K); returns (loss, accuracy), the accuracy the fraction of queries whose positive
    has the highest logit (detached)."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ negatives
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=1) == 0).float().mean().detach()
    return loss, accuracy


class SplitBatchNorm1d(SplitBatchNorm2d):
    """BatchNorm of (N, C) vectors whose groups are the contiguous chunks of the batch, as the backbone's
    SplitBatchNorm2d groups are inside the ResNet (the shuffle-BN groups)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        groups = self.groups_for(input.shape[0])
        if groups == 1:
            return super().forward(input[:, :, None, None]).flatten(1)
        out = super().forward(chunks_to_strided(input, groups)[:, :, None, None]).flatten(1)
        return strided_to_chunks(out, groups)


class ProjectionHead(nn.Sequential):
    """fc -> ReLU -> fc (MoCo-v2), or fc -> BatchNorm -> ReLU -> fc with `batch_norm`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> None:
        hidden: list[nn.Module] = [SplitBatchNorm1d(hidden_dim)] if batch_norm else []
        super().__init__(nn.Linear(in_dim, hidden_dim), *hidden, nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class MocoV2(nn.Module):
    """Query encoder (backbone + head), momentum key encoder, and a queue of negative keys."""

    def __init__(self, backbone: ResNet, config: MocoV2Config, queue_size: int, description: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.queue_size = queue_size
        self.description = description or f"queue of {queue_size:,} keys"
        hidden = config.hidden_dim or backbone.feature_dim
        self.head = ProjectionHead(backbone.feature_dim, hidden, config.dim, batch_norm=config.head_bn)
        self.backbone_k = copy.deepcopy(backbone)
        self.head_k = copy.deepcopy(self.head)
        for param in self.key_parameters():
            param.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(config.dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.shuffle_keys = True  # shuffle-BN; False with SyncBatchNorm, whose statistics span the global batch

    def key_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone_k.parameters()) + list(self.head_k.parameters())

    def query_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.head.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The query encoder: backbone and head (the key encoder follows it by EMA)."""
        return self.query_parameters()

    def set_bn_splits(self, splits: int) -> None:
        """Compute training BatchNorm statistics over `splits` groups of each (per-process) batch."""
        for module in self.modules():
            if isinstance(module, SplitBatchNorm2d):
                module.num_splits = splits

    def setup_batchnorm(self, shuffle: bool, per_process: int, world_size: int) -> int:
        """Shuffle-BN with config.bn_splits groups per global batch, or (shuffle False: SyncBatchNorm) neither
        shuffled keys nor groups. Returns the groups per process."""
        splits = shuffle_bn_groups(self.config.bn_splits, per_process, world_size) if shuffle else 1
        self.set_bn_splits(splits)
        self.shuffle_keys = shuffle
        return splits

    def before_step(self, step: int, steps: int) -> None:
        """Nothing is scheduled: the momentum is constant."""

    def recorded(self) -> dict[str, Any]:
        return {"queue_size": self.queue_size}

    @torch.no_grad()
    def momentum_update(self) -> None:
        ema_update_(self.query_parameters(), self.key_parameters(), self.config.momentum)

    @torch.no_grad()
    def encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Key features with shuffle-BN: real across processes, emulated by split BatchNorm on one."""
        if not self.shuffle_keys:
            return F.normalize(self.head_k(self.backbone_k.forward_features(im_k)), dim=1)
        if distributed.world_size() > 1:
            im_k, idx_unshuffle = _shuffle_across_ranks(im_k)
            k = F.normalize(self.head_k(self.backbone_k.forward_features(im_k)), dim=1)
            return _unshuffle_across_ranks(k, idx_unshuffle)
        perm = torch.randperm(im_k.shape[0], device=im_k.device)
        k = F.normalize(self.head_k(self.backbone_k.forward_features(im_k[perm])), dim=1)
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = distributed.concat_all_gather(keys.float())
        size = self.queue.shape[1]
        ptr = int(self.queue_ptr)
        if size % keys.shape[0] != 0:
            raise HptError(f"the queue size {size} is not a multiple of the global batch {keys.shape[0]}")
        self.queue[:, ptr : ptr + keys.shape[0]] = keys.T
        self.queue_ptr[0] = (ptr + keys.shape[0]) % size

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> StepOutput:
        """Queries, then the key encoder's EMA step and the keys, the loss against the queue, the keys enqueued."""
        features = self.backbone.forward_features(im_q)
        q = F.normalize(self.head(features).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_keys(im_k).float()
        loss, accuracy = info_nce(q, k, self.queue.clone().detach(), self.config.temperature)
        self.enqueue(k)
        return StepOutput(loss=loss, logged={"moco_acc": accuracy}, embeddings=q.detach(), features=features,
                          feature_inputs=im_q)


def build_mocov2(backbone: ResNet, config: MocoV2Config, size: TrainingSize) -> MocoV2:
    """MoCo-v2 around `backbone`, its queue as set in the config or sized to the training (auto_queue_size)."""
    if config.queue_size:
        queue_size, reason = config.queue_size, "queue size set in the config"
    else:
        queue_size, reason = auto_queue_size(size.steps, size.global_batch, size.num_images)
    if queue_size % size.global_batch:
        raise HptError(f"moco.queue_size {queue_size} must be a multiple of the global batch {size.global_batch}")
    return MocoV2(backbone, config, queue_size, reason)


def _shuffle_across_ranks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the key batch of all ranks, shuffle it with a permutation from rank 0, keep this rank's slice."""
    local = x.shape[0]
    gathered = distributed.concat_all_gather(x)
    idx_shuffle = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    mine = idx_shuffle.view(-1, local)[distributed.rank()]
    return gathered[mine], idx_unshuffle


def _unshuffle_across_ranks(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    local = x.shape[0]
    gathered = distributed.concat_all_gather(x)
    mine = idx_unshuffle.view(-1, local)[distributed.rank()]
    return gathered[mine]
