"""MoCo-v2 (He et al. 2020; Chen et al. 2020) as the recipe sets it: MLP head, queue, momentum encoder, shuffle-BN.

A method owns its heads, its momentum encoder and its queue; it knows nothing of stages, files or the CLI.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hpt import distributed
from hpt.errors import HptError
from hpt.models.resnet import ResNet, SplitBatchNorm2d

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


class SplitBatchNorm1d(SplitBatchNorm2d):
    """BatchNorm of (N, C) vectors that follows the shuffle-BN groups of the backbone's SplitBatchNorm2d."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input[:, :, None, None]).flatten(1)


class ProjectionHead(nn.Sequential):
    """fc -> ReLU -> fc (MoCo-v2), or fc -> BatchNorm -> ReLU -> fc with `batch_norm`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> None:
        hidden: list[nn.Module] = [SplitBatchNorm1d(hidden_dim)] if batch_norm else []
        super().__init__(nn.Linear(in_dim, hidden_dim), *hidden, nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


@dataclass
class MocoOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor  # fraction of queries whose positive key has the highest logit
    embeddings: torch.Tensor  # detached, for the collapse watch at logged steps (methods/collapse.py)
    # the backbone's pooled features (with gradients) of `feature_inputs`, the very batch the backbone saw (its
    # BatchNorm statistics included): what the Base anchor compares with the frozen Base's features of that batch
    features: torch.Tensor | None = None
    feature_inputs: torch.Tensor | None = None


class MocoV2(nn.Module):
    """Query encoder (backbone + head), momentum key encoder, and a queue of negative keys."""

    def __init__(self, backbone: ResNet, config: MocoV2Config, queue_size: int) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
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

    def set_bn_splits(self, splits: int) -> None:
        """Compute training BatchNorm statistics over `splits` groups of each (per-process) batch."""
        for module in self.modules():
            if isinstance(module, SplitBatchNorm2d):
                module.num_splits = splits

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.config.momentum
        for q, k in zip(self.query_parameters(), self.key_parameters()):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

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

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> MocoOutput:
        features = self.backbone.forward_features(im_q)
        q = F.normalize(self.head(features).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_keys(im_k).float()
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.config.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == 0).float().mean().detach()
        self.enqueue(k)
        return MocoOutput(loss=loss, accuracy=accuracy, embeddings=q.detach(), features=features, feature_inputs=im_q)


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
