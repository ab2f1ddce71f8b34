"""Deterministic, resumable batches: an infinite step-indexed sampler and the DataLoaders built on it.

Every loader hands whole index lists to :meth:`ImageDataset.get_batch`, so an in-memory npz batch is a
single fancy-index gather and a file batch is decoded by one worker. :class:`WdsDataset` streams get the
same loaders (make_loader, make_eval_loader, batch_loader) built on their own batch plans.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hpt.data.base import ImageDataset, check_batch_and_rank
from hpt.data.wds import ListPlan, SequentialPlan, WdsBatches, WdsDataset
from hpt.errors import HptError

Batch = tuple[torch.Tensor, torch.Tensor]  # (uint8 images (B,C,H,W), int64 labels (B,) or (B,K))
AnyDataset = ImageDataset | WdsDataset


class StepBatchSampler(Sampler[list[int]]):
    """Infinite stream of index batches; batch b of the stream is a pure function of (seed, b): epoch
    e = b // batches_per_epoch uses torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)),
    drop_last. For DDP the global batch (batch_size * world_size) is taken from the permutation and rank r
    gets its slice [r*batch_size:(r+1)*batch_size]. start_step skips ahead in O(1)."""

    def __init__(self, num_images: int, batch_size: int, *, seed: int = 0, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        check_batch_and_rank(batch_size, rank, world_size)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        global_batch = batch_size * world_size
        if num_images < global_batch:
            raise HptError(f"the data set has {num_images} images, fewer than one global batch of {global_batch}; "
                           "lower the batch size or add images")
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self.global_batch = global_batch
        self.batches_per_epoch = num_images // global_batch
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.num_images, generator=gen)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch(self, step: int) -> list[int]:
        """This rank's indices for batch number `step` of the stream."""
        epoch, j = divmod(step, self.batches_per_epoch)
        start = j * self.global_batch + self.rank * self.batch_size
        return self._permutation(epoch)[start:start + self.batch_size].tolist()

    def global_batch_indices(self, step: int) -> list[int]:
        """All ranks' indices for batch `step` (rank 0's slice first)."""
        epoch, j = divmod(step, self.batches_per_epoch)
        return self._permutation(epoch)[j * self.global_batch:(j + 1) * self.global_batch].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class _Batches(Dataset[Batch]):
    """Wraps a data set so that `loader[indices]` is one `get_batch(indices)` call (used with batch_size=None)."""

    def __init__(self, ds: ImageDataset) -> None:
        self.ds = ds

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        return self.ds.get_batch(indices)

    def __len__(self) -> int:
        return len(self.ds)


def _as_is(batch: Any) -> Any:
    """collate_fn for pre-batched items: get_batch already returns tensors."""
    return batch


def loader_defaults(ds: AnyDataset, device_type: str) -> dict[str, Any]:
    """Loader settings for this machine: workers (0 for in-memory arrays, where a gather in the main process is
    fastest; else min(8, CPUs - 1), at least 1), pin_memory (only for cuda), prefetch_factor (4 with workers)."""
    workers = 0 if ds.in_memory else max(1, min(8, (os.cpu_count() or 1) - 1))
    return {"workers": workers, "pin_memory": device_type == "cuda", "prefetch_factor": 4 if workers else None}


def default_workers(ds: AnyDataset) -> int:
    """The worker count of :func:`loader_defaults`."""
    return int(loader_defaults(ds, "cpu")["workers"])


def _settings(ds: AnyDataset, device_type: str | None, workers: int | None, pin_memory: bool | None,
              prefetch_factor: int | None) -> dict[str, Any]:
    """loader_defaults overridden by the explicit arguments (None = default); checks them."""
    chosen = loader_defaults(ds, device_type or "cpu")
    if workers is not None:
        if workers < 0:
            raise HptError(f"workers must be >= 0, got {workers}")
        chosen["workers"] = workers
        chosen["prefetch_factor"] = chosen["prefetch_factor"] or 4
    if pin_memory is not None:
        chosen["pin_memory"] = pin_memory
    if prefetch_factor is not None:
        if prefetch_factor < 1:
            raise HptError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        chosen["prefetch_factor"] = prefetch_factor
    if chosen["workers"] == 0:
        chosen["prefetch_factor"] = None  # DataLoader refuses a prefetch factor without workers
    return chosen


def _data_loader(source: Dataset[Batch], sampler: Any, settings: dict[str, Any], persistent: bool
                 ) -> DataLoader[Batch]:
    workers = settings["workers"]
    return DataLoader(source, sampler=sampler, batch_size=None, collate_fn=_as_is, num_workers=workers,
                      pin_memory=settings["pin_memory"], persistent_workers=persistent and workers > 0,
                      prefetch_factor=settings["prefetch_factor"])


def batch_loader(ds: AnyDataset, batches: Sampler[list[int]] | Sequence[Sequence[int]], *,
                 workers: int | None = None, pin_memory: bool | None = None, persistent: bool = False,
                 prefetch_factor: int | None = None, device_type: str | None = None) -> DataLoader[Batch]:
    """A DataLoader yielding get_batch(b) for each index list b of `batches` (for wds data: the samples
    numbered b, see :meth:`WdsDataset.read`). Settings default to :func:`loader_defaults` for device_type
    (pin_memory False without one); explicit arguments win."""
    settings = _settings(ds, device_type, workers, pin_memory, prefetch_factor)
    if isinstance(ds, WdsDataset):
        plan = ListPlan([np.asarray(b, dtype=np.int64) for b in batches])
        return _data_loader(WdsBatches(ds, plan, 0, plan.num_batches), None, settings, persistent)
    return _data_loader(_Batches(ds), batches, settings, persistent)


def make_loader(ds: AnyDataset, batch_size: int, *, seed: int = 0, start_step: int = 0, rank: int = 0,
                world_size: int = 1, workers: int | None = None, pin_memory: bool | None = None,
                prefetch_factor: int | None = None, device_type: str | None = None) -> DataLoader[Batch]:
    """Infinite training loader of (uint8 images (B,C,H,W), labels (B,) or (B,K)); see :class:`StepBatchSampler`.
    For wds data, the stream of :meth:`WdsDataset.stream` (with ds.shuffle_buffer), read by the workers."""
    if isinstance(ds, WdsDataset):
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        plan = ds.stream_plan(batch_size, seed=seed, rank=rank, world_size=world_size)
        settings = _settings(ds, device_type, workers, pin_memory, prefetch_factor)
        return _data_loader(WdsBatches(ds, plan, start_step, None), None, settings, persistent=True)
    sampler = StepBatchSampler(len(ds), batch_size, seed=seed, start_step=start_step, rank=rank,
                               world_size=world_size)
    return batch_loader(ds, sampler, workers=workers, pin_memory=pin_memory, persistent=True,
                        prefetch_factor=prefetch_factor, device_type=device_type)


def make_eval_loader(ds: AnyDataset, batch_size: int, workers: int | None = None, *,
                     pin_memory: bool | None = None, prefetch_factor: int | None = None,
                     device_type: str | None = None) -> DataLoader[Batch]:
    """One sequential pass over every image in order (last batch may be short), for feature extraction."""
    if batch_size < 1:
        raise HptError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(ds, WdsDataset):
        plan = SequentialPlan(len(ds), batch_size)
        settings = _settings(ds, device_type, workers, pin_memory, prefetch_factor)
        return _data_loader(WdsBatches(ds, plan, 0, plan.num_batches), None, settings, persistent=False)
    n = len(ds)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batch_loader(ds, batches, workers=workers, pin_memory=pin_memory, prefetch_factor=prefetch_factor,
                        device_type=device_type)
