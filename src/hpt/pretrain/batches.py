"""The images of a stage: its data set and loader (resumable at a step), the batch of each process, and the seed
of each step's random draws."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from hpt import distributed
from hpt.augment import model_channels
from hpt.data import channel_stats, make_loader, open_any
from hpt.errors import HptError
from hpt.models.stem import adapt_stem
from hpt.pretrain.config import StageConfig


def per_rank_batch(config: StageConfig, info: distributed.DistInfo) -> int:
    if config.batch_size % info.world_size:
        raise HptError(
            f"the global batch {config.batch_size} is not divisible by the {info.world_size} processes; "
            "choose a batch_size that is a multiple of the world size"
        )
    return config.batch_size // info.world_size


def prepare_data(config: StageConfig, info: distributed.DistInfo, per_rank: int,
                 start_step: int) -> tuple[Any, int, tuple[float, ...], tuple[float, ...], Any]:
    """The data set, the side of the training images, the per-channel mean and std, and a loader of this process's
    batches from `start_step` on."""
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


def fit_stem(backbone: nn.Module, dataset: Any, config: StageConfig) -> bool:
    """Adapt a 3-channel backbone's stem to the data's channels (hpt.models.stem); True when it was changed."""
    return adapt_stem(backbone, model_channels(dataset.num_channels), where=f"stage '{config.name}'")


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's random draws (augmentation, shuffle-BN): resumed runs repeat them exactly."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
