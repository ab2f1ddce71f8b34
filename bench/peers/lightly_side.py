"""lightly's side of the peer benchmarks: MoCo-v2 as lightly's own example (examples/pytorch/moco.py) writes it.

torchvision's ResNet-18 with the CIFAR stem (3x3 conv1, stride 1, no max-pool) and without its fc,
MoCoProjectionHead, NTXentLoss with a memory bank (the queue), update_momentum on the key encoder,
deactivate_requires_grad, SGD, and MoCoV2Transform run in DataLoader workers on PIL images. The settings the
example leaves to the user are hpt's: temperature 0.2, momentum 0.999, lr 0.03 x batch / 256, SGD momentum 0.9,
weight decay 1e-4; each step is timed from fetching its batch to the end of the optimizer step (as hpt's per-step
metrics time it), its loss read as a log line reads it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
from typing import Any

import lightly
import numpy as np
import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.moco_transform import MoCoV2Transform
from memory import children_private_mib
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.resnet import BasicBlock

TEMPERATURE, MOMENTUM, LR, SGD_MOMENTUM, WEIGHT_DECAY = 0.2, 0.999, 0.03, 0.9, 1e-4


def resnet18_cifar(width: int = 64) -> tuple[nn.Module, int]:
    """torchvision's ResNet-18 with the CIFAR stem, without fc; at a width other than 64 (which torchvision fixes)
    its layers are rebuilt at that width by its own _make_layer. Returns the backbone and its feature size."""
    resnet = torchvision.models.resnet18()
    if width != 64:
        resnet.inplanes = width
        resnet.bn1 = nn.BatchNorm2d(width)
        for i in range(4):
            setattr(resnet, f"layer{i + 1}", resnet._make_layer(BasicBlock, width * 2**i, 2, stride=1 if i == 0 else 2))
        resnet.fc = nn.Linear(8 * width, 1000)
    resnet.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    resnet.maxpool = nn.Identity()
    return nn.Sequential(*list(resnet.children())[:-1]), 8 * width


class MoCo(nn.Module):
    """The model of lightly's MoCo example."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(feature_dim, feature_dim, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(query)

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        key = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(key).detach()


class NpzImages(Dataset):
    """The train_images of an npz as PIL images through a transform (as torchvision's CIFAR10 data set gives them)."""

    def __init__(self, path: str, transform: Any) -> None:
        with np.load(path) as arrays:
            self.images = arrays["train_images"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return self.transform(image), 0


def batches(loader: DataLoader) -> Any:
    while True:
        yield from loader


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of lightly's MoCo-v2 step after the warm-up steps."""
    torch.manual_seed(0)
    dataset = NpzImages(args.data, MoCoV2Transform(input_size=args.res))
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    backbone, feature_dim = resnet18_cifar(args.width)
    model = MoCo(backbone, feature_dim).train()
    criterion = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=(args.queue, 128))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR * args.batch / 256, momentum=SGD_MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    stream = batches(loader)
    times = []
    mark = time.perf_counter()
    for _ in range(args.warmup + args.steps):
        (x_query, x_key), _ = next(stream)
        update_momentum(model.backbone, model.backbone_momentum, m=MOMENTUM)
        update_momentum(model.projection_head, model.projection_head_momentum, m=MOMENTUM)
        query = model(x_query)
        key = model.forward_momentum(x_key)
        loss = criterion(query, key)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()
        now = time.perf_counter()
        times.append(now - mark)
        mark = now
    workers, workers_mib = children_private_mib()  # the DataLoader workers, still running
    del stream, loader
    gc.collect()
    measured = times[args.warmup:]
    return {
        "img_s": args.batch * len(measured) / sum(measured),
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "workers": workers, "workers_private_mib": workers_mib,
        "what": f"torchvision resnet18 width {args.width} CIFAR stem, lightly {lightly.__version__} "
                f"MoCoProjectionHead + NTXentLoss(memory_bank_size=({args.queue}, 128), temperature {TEMPERATURE}), "
                f"momentum {MOMENTUM}, MoCoV2Transform in {args.workers} DataLoader workers",
    }
