"""What a self-supervised method gives a stage's training loop, which never names a method.

A method is an nn.Module around the backbone being pretrained (the loop moves it to the device, wraps it in DDP,
and saves its state_dict() as the resume state: heads, momentum encoders, queue). Each step the loop calls

    method.before_step(step, steps)     the per-step schedules of the method (BYOL: the EMA rate of this step)
    out = method(view1, view2)          the step: out.loss to minimise, out.logged for metrics.csv

then backward and the optimizer step on method.trainable_parameters(). The updates that follow the weights
happen inside the step, in the order of facebookresearch/moco's builder.py: the momentum encoder moves towards the
weights the last optimizer step left before it encodes the keys (or targets), and the queue takes the new keys
after the loss. So one forward is the whole step, under DDP and torch.compile as without them, and the resume
state written between two steps holds the encoder and the queue of the step just finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from hpt.models.resnet import ResNet


@dataclass
class StepOutput:
    """One training step of a method."""

    loss: torch.Tensor  # 0-d, with gradients: what the optimizer minimises (the loop may add the anchor term)
    # metrics.csv columns of the method, next to the loss (0-d, detached): MoCo's {"moco_acc": the fraction of
    # queries whose positive key has the highest logit}, BYOL's {"byol_cosine": the mean cosine to the target}
    logged: dict[str, torch.Tensor]
    embeddings: torch.Tensor  # detached, for the collapse watch at logged steps (methods/collapse.py)
    # the backbone's pooled features (with gradients) of `feature_inputs`, the very batch the backbone saw (its
    # BatchNorm statistics included): what the Base anchor compares with the frozen Base's features of that batch
    features: torch.Tensor | None = None
    feature_inputs: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainingSize:
    """How much a method will be trained on, for methods that size themselves by it (MoCo's queue)."""

    steps: int
    global_batch: int  # images per step, all processes together
    num_images: int  # images in the data set


@runtime_checkable
class Method(Protocol):
    """The members of a method (an nn.Module) that the training loop uses."""

    backbone: ResNet  # the network being pretrained, trained in place; what the stage saves
    description: str  # one sentence for the stage's log and summary (MoCo: its queue size and why)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the backbone and the heads, not the momentum (EMA) copies."""
        ...

    def setup_batchnorm(self, shuffle: bool, per_process: int, world_size: int) -> int:
        """Prepare the training BatchNorm for `per_process` images per process on `world_size` processes.

        shuffle: the stage uses shuffle-BN rather than SyncBatchNorm (batchnorm: shuffle); a method that uses it
        (MoCo) shuffles its key batch across processes and splits BatchNorm into groups, the others ignore it.
        Returns the BatchNorm groups per process."""
        ...

    def before_step(self, step: int, steps: int) -> None:
        """Set what the method schedules over the `steps` steps for step `step` (0-based), before its forward."""
        ...

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor) -> StepOutput:
        """One step on two augmented views of the same images (forward, with the updates described above)."""
        ...

    def recorded(self) -> dict[str, Any]:
        """What the method chose when it was built, recorded next to its weights in the resume state and in the
        stage's summary (plain values). Every method gives the keys saved states and summaries have always held:
        {"queue_size": its queue's size, None without one}."""
        ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """nn.Module's: the method's resume state (the backbone, heads, momentum encoders, queue)."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """nn.Module's, strict: a saved state of the same method with the same settings."""
        ...
