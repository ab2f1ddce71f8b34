"""BatchNorm statistics of a backbone: re-estimated on target images, averaged over processes, un-synced."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from hpt import distributed
from hpt.models import SplitBatchNorm2d


@torch.no_grad()
def reestimate_bn_statistics(backbone: nn.Module, batches: Iterable[torch.Tensor],
                             transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> int:
    """Replace the running statistics of every BatchNorm by their average over `batches` of un-augmented images
    (uint8, transformed by `transform`); weights are untouched. The backbone's BatchNorm settings (momentum,
    splits) and its train/eval mode are restored afterwards; statistics are averaged over processes.
    Returns the number of batches seen."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, getattr(m, "num_splits", None)) for m in norms]
    training = backbone.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch seen
        if isinstance(m, SplitBatchNorm2d):
            m.num_splits = 1
    backbone.train()
    seen = 0
    for images in batches:
        backbone.forward_features(transform(images.to(device)))  # type: ignore[operator]
        seen += 1
    for m, (momentum, splits) in zip(norms, saved):
        m.momentum = momentum
        if splits is not None:
            m.num_splits = splits
    average_bn_statistics(backbone)
    backbone.train(training)
    return seen


def average_bn_statistics(backbone: nn.Module) -> None:
    """Average every BatchNorm's running statistics over the processes (a no-op on one process)."""
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
            distributed.all_reduce_mean_(module.running_mean)
            distributed.all_reduce_mean_(module.running_var)


def restore_batchnorm(module: nn.Module) -> None:
    """Replace every SyncBatchNorm below `module` by a SplitBatchNorm2d (one split) with the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = SplitBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            plain.load_state_dict(child.state_dict())
            plain.to(next(iter(child.state_dict().values())).device)
            for p_new, p_old in zip(plain.parameters(), child.parameters(), strict=True):
                p_new.requires_grad_(p_old.requires_grad)
            plain.train(child.training)
            setattr(module, name, plain)
        else:
            restore_batchnorm(child)
