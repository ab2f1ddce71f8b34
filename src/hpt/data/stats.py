"""Per-channel mean/std of a data set's pixels (scaled to [0, 1]) for Normalize, cached as JSON.

Any number of channels: uint8 images by exact histograms of their 256 values, float images (16-bit, multi-channel
or DICOM data, already in [0, 1]) by float64 sums.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from hpt.atomic import atomic_write_text
from hpt.data.loader import AnyDataset, batch_loader
from hpt.device import cache_root

log = logging.getLogger("hpt")
STATS_VERSION = 2  # bump when the computation changes, to invalidate old cache entries
SAMPLE_SEED = 0


def default_cache_dir() -> Path:
    """$HPT_CACHE/stats, or ~/.cache/hpt/stats."""
    return cache_root() / "stats"


def channel_stats(ds: AnyDataset, cache_dir: Path | None = None, max_images: int = 50_000,
                  batch_size: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of pixel/255 (uint8) or pixel (float) over up to max_images images (seeded sample),
    population std."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    key = cache_key(ds, max_images)
    cached = _read_cache(cache_dir / f"{key}.json", ds.num_channels)
    if cached is not None:
        return cached
    mean, std = _compute(ds, max_images, batch_size)
    _write_cache(cache_dir / f"{key}.json", ds, mean, std, max_images)
    return mean, std


def cache_key(ds: AnyDataset, max_images: int) -> str:
    """Hash of the spec, the files' identity (size, mtime, listing) and the sample size."""
    text = json.dumps([STATS_VERSION, ds.spec.describe(), ds.fingerprint(), len(ds), max_images])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sample_indices(n: int, max_images: int) -> np.ndarray:
    """All indices, or a sorted seeded sample of max_images of them."""
    if n <= max_images:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, size=max_images, replace=False))


def _compute(ds: AnyDataset, max_images: int, batch_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel histograms of the 256 pixel values, then float64 mean and std of x/255 (uint8 images);
    per-channel float64 sums of x and x*x (float images)."""
    idx = sample_indices(len(ds), max_images).tolist()
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    hist = torch.zeros(ds.num_channels, 256, dtype=torch.int64)
    sums = torch.zeros(3, ds.num_channels, dtype=torch.float64)  # pixels, sum of x, sum of x*x
    for images, _ in batch_loader(ds, batches):
        if images.is_floating_point():
            x = images.to(torch.float64).transpose(0, 1).reshape(ds.num_channels, -1)
            sums += torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(1), (x * x).sum(1)])
            continue
        for start in range(0, images.shape[0], 64):  # bounded int64 temporaries for large images
            chunk = images[start:start + 64]
            for c in range(ds.num_channels):
                hist[c] += torch.bincount(chunk[:, c].reshape(-1).to(torch.int64), minlength=256)
    if sums[0].sum() > 0:
        mean = sums[1] / sums[0]
        var = (sums[2] / sums[0] - mean * mean).clamp_min(0.0)
        return tuple(float(v) for v in mean), tuple(float(v) for v in var.sqrt())
    values = torch.arange(256, dtype=torch.float64) / 255.0
    counts = hist.double()
    pixels = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / pixels
    var = ((counts * (values - mean[:, None]) ** 2).sum(dim=1) / pixels).clamp_min(0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in var.sqrt())


def _read_cache(path: Path, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    try:
        data = json.loads(path.read_text())
        mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable stats cache %s (%s)", path, err)
        return None
    if len(mean) != channels or len(std) != channels:
        return None
    log.debug("channel stats from cache %s", path)
    return mean, std


def _write_cache(path: Path, ds: AnyDataset, mean: tuple[float, ...], std: tuple[float, ...],
                 max_images: int) -> None:
    record = {"spec": ds.spec.describe(), "num_images": len(ds), "max_images": max_images,
              "mean": list(mean), "std": list(std)}
    try:
        atomic_write_text(path, json.dumps(record, indent=1))
    except OSError as err:
        log.warning("could not write the stats cache %s (%s); stats will be recomputed next time", path, err)
