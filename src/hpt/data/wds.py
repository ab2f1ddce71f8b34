"""WebDataset shards streamed for training: ``wds:/data/shard-{000000..000099}.tar``.

The shards are scanned once (see :mod:`hpt.data.wdsindex`, cached), which gives every sample's label and
the byte range of its image. Training reads a stream, not random indices: per epoch the shard order is a
permutation seeded with seed + epoch, process ``rank`` takes shards ``rank::world_size`` and the samples of
its shards (in tar order) pass through a seeded shuffle buffer. Batches run on across epochs (none are
dropped). Because the plan is computed from the index, batch ``b`` of the stream is a pure function of
(seed, rank, world_size, shuffle_buffer, b): resuming at ``start_step`` reads no skipped image, and
DataLoader workers can each read whole batches.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from hpt.data.base import check_batch_and_rank, select
from hpt.data.decode import GRAY_MODES, decode
from hpt.data.spec import DataSpec
from hpt.data.wdsindex import index_shards, resolve_shards, shard_keys
from hpt.errors import HptError

log = logging.getLogger("hpt")
Batch = tuple[torch.Tensor, torch.Tensor]
DEFAULT_SHUFFLE_BUFFER = 1000
MAX_OPEN_SHARDS = 16


class WdsDataset:
    """Samples of WebDataset shards, read as a stream (:meth:`stream`) or in order (:meth:`iterate_once`).

    Attributes mirror :class:`~hpt.data.base.ImageDataset`: spec, num_channels and image_size (from the first
    sample, or size=/grayscale=), labels (all samples' labels in shard order from the scan; None when the
    samples have no .cls), num_classes (1 + the largest label), multilabel False. The spec options classes=,
    fraction=, count= and seed= select samples as for the other kinds.
    """

    in_memory = False
    multilabel = False
    class_names: list[str] | None = None

    def __init__(self, spec: DataSpec, cache_dir: Path | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> None:
        if spec.kind != "wds":
            raise ValueError(f"WdsDataset needs a wds spec, got {spec.kind}")
        self.spec = spec
        self.skipped: list[str] = []
        self.shuffle_buffer = shuffle_buffer  # used by make_loader
        self._cache_dir = cache_dir
        self.shards = resolve_shards(spec.path)
        indexes = index_shards(self.shards, cache_dir)
        counts = np.array([len(ix) for ix in indexes], dtype=np.int64)
        total = int(counts.sum())
        if total == 0:
            raise HptError(f"the {len(self.shards)} shards of {spec.path} hold no samples; check the pattern")
        raw = np.concatenate([ix.labels for ix in indexes])
        labels: np.ndarray | None = raw
        if (raw < 0).any():
            if (raw >= 0).any():
                log.warning("%s: %d of %d samples have no .cls label; the data is used unlabelled",
                            spec.path, int((raw < 0).sum()), total)
            labels = None
        chosen = select(spec, total, labels, None if labels is None else int(labels.max()) + 1, None)
        starts = np.concatenate(([0], np.cumsum(counts)))
        self._shard = (np.searchsorted(starts, chosen.indices, side="right") - 1).astype(np.int64)
        self._row = chosen.indices - starts[self._shard]
        self._offset = np.concatenate([ix.offsets for ix in indexes])[chosen.indices]
        self._size = np.concatenate([ix.sizes for ix in indexes])[chosen.indices]
        self._counts = np.bincount(self._shard, minlength=len(self.shards)).astype(np.int64)
        self._starts = np.concatenate(([0], np.cumsum(self._counts)))
        self.labels = chosen.labels
        self.num_classes = chosen.num_classes
        self._handles: dict[int, IO[bytes]] = {}
        self._pid = os.getpid()
        self._first_setup()

    def _first_setup(self) -> None:
        """num_channels and image_size from the first sample (unless grayscale=/size= fix them)."""
        data = self._bytes(0)
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height, mode = img.size[0], img.size[1], img.mode
        except Exception as err:
            raise self._corrupt(0, err) from None
        if self.spec.grayscale is not None:
            self.num_channels = 1 if self.spec.grayscale else 3
        else:
            self.num_channels = 1 if mode in GRAY_MODES else 3
        self._first_size = (width, height)
        size = self.spec.size
        self.image_size = (size, size) if size is not None else (height, width)

    def __len__(self) -> int:
        return len(self._offset)

    @property
    def num_samples(self) -> int:
        return len(self._offset)

    def fingerprint(self) -> str:
        """Changes when any shard changes (path, size, mtime)."""
        parts = []
        for shard in self.shards:
            st = os.stat(shard)
            parts.append(f"{shard.resolve()}:{st.st_size}:{st.st_mtime_ns}")
        return "wds:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def summary(self) -> str:
        h, w = self.image_size
        what = "unlabelled" if self.labels is None else f"{self.num_classes} classes"
        return (f"{self.spec.describe()}: {len(self)} images {self.num_channels}x{h}x{w} in "
                f"{len(self.shards)} shards, {what}")

    def __repr__(self) -> str:
        return f"<WdsDataset {self.summary()}>"

    # ------------------------------------------------------------------------------------------
    # iteration

    def stream(self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1,
               shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> Iterator[Batch]:
        """Endless (uint8 (B,C,H,W), int64 (B,)) batches of this rank; labels are -1 when unlabelled."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        plan = self.stream_plan(batch_size, seed=seed, rank=rank, world_size=world_size,
                                shuffle_buffer=shuffle_buffer)
        for step in itertools.count(start_step):
            yield self.read(plan.batch(step))

    def stream_plan(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                    shuffle_buffer: int | None = None) -> StreamPlan:
        """The sample numbers of each batch of :meth:`stream` (shuffle_buffer None: self.shuffle_buffer)."""
        buffer = self.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        return StreamPlan(self._counts, batch_size, seed=seed, rank=rank, world_size=world_size,
                          shuffle_buffer=buffer)

    def iterate_once(self, batch_size: int) -> Iterator[Batch]:
        """Every sample once, in shard order (the last batch may be short), e.g. for feature extraction."""
        plan = SequentialPlan(len(self), batch_size)
        for step in range(plan.num_batches):
            yield self.read(plan.batch(step))

    def read(self, ids: np.ndarray) -> Batch:
        """Images and labels of samples by number (0..len-1 in shard order); reads each shard in offset order."""
        ids = np.asarray(ids, dtype=np.int64)
        channels, (height, width) = self.num_channels, self.image_size
        out = np.empty((len(ids), channels, height, width), dtype=np.uint8)
        for pos in np.lexsort((self._offset[ids], self._shard[ids])).tolist():
            sample = int(ids[pos])
            out[pos] = self._decode(sample).numpy()
        labels = (torch.full((len(ids),), -1, dtype=torch.int64) if self.labels is None
                  else torch.from_numpy(np.ascontiguousarray(self.labels[ids])))
        return torch.from_numpy(out), labels

    # ------------------------------------------------------------------------------------------
    # reading samples

    def _decode(self, sample: int) -> torch.Tensor:
        data = self._bytes(sample)
        try:
            img = decode(io.BytesIO(data), self.num_channels, self.spec.size)
        except HptError as err:
            raise HptError(f"sample '{self._key(sample)}' in shard {self._shard_path(sample)}: {err}") from None
        except Exception as err:  # PIL raises many types for damaged images
            raise self._corrupt(sample, err) from None
        found = (int(img.shape[2]), int(img.shape[1]))
        if self.spec.size is None and found != self._first_size:
            (w0, h0), (w, h) = self._first_size, found
            raise HptError(f"sample '{self._key(sample)}' in shard {self._shard_path(sample)} is {w}x{h}, but the "
                           f"first sample ('{self._key(0)}' in {self._shard_path(0)}) is {w0}x{h0}; pass size=N "
                           "in the data spec to resize every image to N x N")
        return img

    def _bytes(self, sample: int) -> bytes:
        f = self._file(int(self._shard[sample]))
        f.seek(int(self._offset[sample]))
        size = int(self._size[sample])
        data = f.read(size)
        if len(data) != size:
            raise HptError(f"shard {self._shard_path(sample)} ends inside sample '{self._key(sample)}' (truncated, "
                           "or changed since it was indexed); rewrite the shard or leave it out of the pattern")
        return data

    def _file(self, shard: int) -> IO[bytes]:
        if self._pid != os.getpid():  # a forked worker: do not share file positions with the parent
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.pop(shard, None)
        if handle is None:
            if len(self._handles) >= MAX_OPEN_SHARDS:
                oldest = next(iter(self._handles))
                self._handles.pop(oldest).close()
            try:
                handle = open(self.shards[shard], "rb")
            except OSError as err:
                raise HptError(f"cannot open shard {self.shards[shard]} ({err}); check that it still exists") from None
        self._handles[shard] = handle  # most recently used last
        return handle

    def _shard_path(self, sample: int) -> Path:
        return self.shards[int(self._shard[sample])]

    def _key(self, sample: int) -> str:
        keys = shard_keys(self._shard_path(sample), self._cache_dir)
        row = int(self._row[sample])
        return keys[row] if row < len(keys) else f"#{row}"

    def _corrupt(self, sample: int, err: Exception) -> HptError:
        return HptError(f"cannot decode sample '{self._key(sample)}' in shard {self._shard_path(sample)} "
                        f"({type(err).__name__}: {err}); the sample is damaged: rewrite the shard or leave it out "
                        "of the pattern")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            handle.close()


class StreamPlan:
    """Which samples make up batch `step` of one rank's endless stream (see the module docstring)."""

    def __init__(self, counts: np.ndarray, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> None:
        check_batch_and_rank(batch_size, rank, world_size)
        if shuffle_buffer < 0:
            raise HptError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if seed < 0:
            raise HptError(f"seed must be >= 0, got {seed}")
        if len(counts) < world_size:
            raise HptError(f"{len(counts)} shards cannot be shared by {world_size} processes (each takes whole "
                           "shards); write the data into at least as many shards as processes, or use fewer processes")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)))
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self._ends: list[int] = []  # cumulative sample count of this rank at the end of each epoch
        self._orders: dict[int, np.ndarray] = {}

    def shards(self, epoch: int) -> np.ndarray:
        """This rank's shards in epoch `epoch`, in reading order."""
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.counts))
        return order[self.rank::self.world_size]

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """Sample numbers of this rank's epoch, in the order the shuffle buffer emits them."""
        cached = self._orders.get(epoch)
        if cached is not None:
            return cached
        shards = self.shards(epoch)
        inputs = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in shards])
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        samples = inputs[buffer_order(len(inputs), self.shuffle_buffer, rng)]
        if len(self._orders) >= 2:
            self._orders.pop(min(self._orders))
        self._orders[epoch] = samples
        return samples

    def _epoch_of(self, position: int) -> int:
        empty_run = 0
        while not self._ends or self._ends[-1] <= position:
            size = int(self.counts[self.shards(len(self._ends))].sum())
            self._ends.append((self._ends[-1] if self._ends else 0) + size)
            empty_run = empty_run + 1 if size == 0 else 0
            if empty_run > 10_000:
                raise HptError(f"process {self.rank} got no samples in 10000 epochs: its shards are empty; "
                               "drop empty shards from the pattern")
        return bisect.bisect_right(self._ends, position)

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Sample numbers at positions [start, stop) of this rank's stream (epochs concatenated)."""
        parts = []
        position = start
        while position < stop:
            epoch = self._epoch_of(position)
            begin = self._ends[epoch - 1] if epoch else 0
            take = min(stop, self._ends[epoch]) - position
            offset = position - begin
            parts.append(self.epoch_samples(epoch)[offset:offset + take])
            position += take
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def batch(self, step: int) -> np.ndarray:
        return self.samples(step * self.batch_size, (step + 1) * self.batch_size)


class SequentialPlan:
    """Batches of consecutive sample numbers 0..n-1 (the last one may be short)."""

    def __init__(self, n: int, batch_size: int) -> None:
        if batch_size < 1:
            raise HptError(f"batch size must be at least 1, got {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.num_batches = -(-n // batch_size)

    def batch(self, step: int) -> np.ndarray:
        return np.arange(step * self.batch_size, min(self.n, (step + 1) * self.batch_size), dtype=np.int64)


class ListPlan:
    """Given batches of sample numbers."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = batches
        self.num_batches = len(batches)

    def batch(self, step: int) -> np.ndarray:
        return self.batches[step]


def buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Output order of a shuffle buffer of `size` fed 0..n-1: once full, each new sample replaces a random
    one, which is emitted; at the end the rest is emitted in random order. size <= 1: no shuffling."""
    if size <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    buffer = list(range(min(size, n)))
    emitted = 0
    if n > size:
        picks = rng.integers(0, size, size=n - size).tolist()
        for incoming, j in zip(range(size, n), picks, strict=True):
            out[emitted] = buffer[j]
            buffer[j] = incoming
            emitted += 1
    rest = np.asarray(buffer, dtype=np.int64)
    rng.shuffle(rest)
    out[emitted:] = rest
    return out


class WdsBatches(IterableDataset[Batch]):
    """DataLoader source: batch steps [start, stop) (stop None: endless) of a plan; worker w of W reads steps
    start + w, start + w + W, ... so that the DataLoader's round-robin returns them in order."""

    def __init__(self, ds: WdsDataset, plan: StreamPlan | SequentialPlan | ListPlan, start: int = 0,
                 stop: int | None = None) -> None:
        self.ds, self.plan, self.start, self.stop = ds, plan, start, stop

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        steps = (itertools.count(self.start + worker, workers) if self.stop is None
                 else range(self.start + worker, self.stop, workers))
        for step in steps:
            yield self.ds.read(self.plan.batch(step))
