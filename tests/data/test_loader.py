"""StepBatchSampler determinism/resume/DDP and the loaders built on it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpt.data import StepBatchSampler, make_eval_loader, make_loader, open_dataset
from hpt.errors import HptError


def take(sampler: StepBatchSampler, k: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), k))


def test_batch_is_a_function_of_seed_and_step() -> None:
    full = take(StepBatchSampler(50, 8, seed=7), 20)  # 6 batches per epoch: crosses 3 epoch boundaries
    for b in (0, 5, 6, 13, 19):
        assert take(StepBatchSampler(50, 8, seed=7, start_step=b), 1)[0] == full[b]
    assert take(StepBatchSampler(50, 8, seed=8), 1)[0] != full[0]


def test_epochs_use_seeded_randperm_and_drop_last() -> None:
    sampler = StepBatchSampler(50, 8, seed=3)
    assert sampler.batches_per_epoch == 6
    batches = take(sampler, 12)
    for epoch in range(2):
        perm = torch.randperm(50, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        chunk = batches[epoch * 6:(epoch + 1) * 6]
        assert [i for b in chunk for i in b] == perm[:48]  # the last 2 images of the epoch are dropped
        assert all(len(b) == 8 for b in chunk)
    assert batches[6] != batches[0]


def test_ddp_ranks_are_disjoint_and_cover_the_global_batch() -> None:
    world = 4
    samplers = [StepBatchSampler(100, 5, seed=1, rank=r, world_size=world) for r in range(world)]
    assert samplers[0].batches_per_epoch == 5
    streams = [take(s, 12) for s in samplers]
    for step in range(12):
        parts = [streams[r][step] for r in range(world)]
        flat = [i for p in parts for i in p]
        assert len(set(flat)) == 20
        assert flat == samplers[0].global_batch_indices(step)
    resumed = take(StepBatchSampler(100, 5, seed=1, rank=2, world_size=world, start_step=7), 1)[0]
    assert resumed == streams[2][7]


def test_too_small_dataset() -> None:
    with pytest.raises(HptError, match="the data set has 10 images, fewer than one global batch of 12; "
                                       "lower the batch size or add images"):
        StepBatchSampler(10, 6, world_size=2)
    with pytest.raises(HptError, match="at least 1"):
        StepBatchSampler(10, 0)


def npz(tmp_path: Path, multilabel: bool = False) -> Path:
    x = np.zeros((40, 5, 6, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(40)
    y = np.random.default_rng(0).integers(0, 2, (40, 4)) if multilabel else np.arange(40) % 4
    path = tmp_path / "d.npz"
    np.savez(path, train_images=x, train_labels=y)
    return path


def test_make_loader_npz(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{npz(tmp_path)}")
    loader = make_loader(ds, 8, seed=2, start_step=3)
    assert loader.num_workers == 0
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 5, 6)
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    expected = StepBatchSampler(40, 8, seed=2).batch(3)
    assert images[:, 0, 0, 0].tolist() == expected and labels.tolist() == [i % 4 for i in expected]


def test_make_loader_multilabel(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{npz(tmp_path, multilabel=True)}")
    images, labels = next(iter(make_loader(ds, 4)))
    assert images.shape == (4, 3, 5, 6) and labels.shape == (4, 4) and labels.dtype == torch.int64


def test_loader_is_infinite(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{npz(tmp_path)}")
    assert len(list(itertools.islice(make_loader(ds, 16), 7))) == 7  # 2 batches per epoch


def test_make_loader_folder_with_workers(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(np.full((4, 4), 10 * i + (c == "b"), np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = open_dataset(f"folder:{tmp_path}")
    loader = make_loader(ds, 4, seed=1, workers=1)
    assert loader.persistent_workers
    got = list(itertools.islice(loader, 3))
    reference = list(itertools.islice(make_loader(ds, 4, seed=1, workers=0), 3))
    for (xa, ya), (xb, yb) in zip(got, reference, strict=True):
        assert xa.shape == (4, 1, 4, 4) and torch.equal(xa, xb) and torch.equal(ya, yb)
        assert ((xa[:, 0, 0, 0] % 10) == ya).all()  # image content matches its label


def test_eval_loader_sequential_no_drop(tmp_path: Path) -> None:
    ds = open_dataset(f"npz:{npz(tmp_path)}")
    batches = list(make_eval_loader(ds, 16))
    assert [len(x) for x, _ in batches] == [16, 16, 8]
    assert torch.cat([x[:, 0, 0, 0] for x, _ in batches]).tolist() == list(range(40))
    assert torch.cat([y for _, y in batches]).tolist() == [i % 4 for i in range(40)]
