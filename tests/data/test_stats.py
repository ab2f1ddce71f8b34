"""Channel statistics: exact against numpy, sampled, and cached as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpt.data import channel_stats, open_dataset
from hpt.data import stats as stats_module


def rgb_npz(tmp_path: Path, n: int = 30) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    x[..., 2] //= 4  # channels with clearly different statistics
    path = tmp_path / "s.npz"
    np.savez(path, train_images=x, train_labels=np.arange(n) % 2)
    return path, x


def test_stats_match_numpy(tmp_path: Path) -> None:
    path, x = rgb_npz(tmp_path)
    mean, std = channel_stats(open_dataset(f"npz:{path}"), cache_dir=tmp_path / "cache")
    scaled = x.astype(np.float64) / 255.0
    assert np.allclose(mean, scaled.mean(axis=(0, 1, 2)), atol=1e-12)
    assert np.allclose(std, scaled.std(axis=(0, 1, 2)), atol=1e-12)
    assert len(mean) == len(std) == 3


def test_stats_of_a_grayscale_folder(tmp_path: Path) -> None:
    arrays = [np.full((4, 4), v, np.uint8) for v in (0, 255, 51)]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    mean, std = channel_stats(open_dataset(f"folder:{tmp_path}"), cache_dir=tmp_path / "cache")
    values = np.stack(arrays) / 255.0
    assert len(mean) == 1 and mean[0] == pytest.approx(values.mean()) and std[0] == pytest.approx(values.std())


def test_sample_when_larger_than_max_images(tmp_path: Path) -> None:
    path, x = rgb_npz(tmp_path, n=50)
    mean, _ = channel_stats(open_dataset(f"npz:{path}"), cache_dir=tmp_path / "c", max_images=10)
    idx = stats_module.sample_indices(50, 10)
    assert len(idx) == 10
    assert np.allclose(mean, (x[idx] / 255.0).mean(axis=(0, 1, 2)))


def test_second_call_reads_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = rgb_npz(tmp_path)
    ds = open_dataset(f"npz:{path}")
    cache = tmp_path / "cache"
    first = channel_stats(ds, cache_dir=cache)
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["spec"] == ds.spec.describe() and record["mean"] == list(first[0])

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("stats were recomputed instead of read from the cache")

    monkeypatch.setattr(stats_module, "_compute", fail)
    assert channel_stats(open_dataset(f"npz:{path}"), cache_dir=cache) == first
    # A different subset is a different cache entry.
    with pytest.raises(AssertionError, match="recomputed"):
        channel_stats(open_dataset(f"npz:{path}?count=10"), cache_dir=cache)


def test_cache_invalidated_when_file_changes(tmp_path: Path) -> None:
    path, _ = rgb_npz(tmp_path)
    cache = tmp_path / "cache"
    first = channel_stats(open_dataset(f"npz:{path}"), cache_dir=cache)
    np.savez(path, train_images=np.zeros((4, 6, 5, 3), np.uint8), train_labels=np.zeros(4, np.int64))
    second = channel_stats(open_dataset(f"npz:{path}"), cache_dir=cache)
    assert second != first and second[0] == (0.0, 0.0, 0.0)


def test_default_cache_dir_uses_hpt_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPT_CACHE", str(tmp_path / "hc"))
    path, _ = rgb_npz(tmp_path)
    channel_stats(open_dataset(f"npz:{path}"))
    assert len(list((tmp_path / "hc" / "stats").glob("*.json"))) == 1


def test_corrupt_cache_is_recomputed(tmp_path: Path) -> None:
    path, _ = rgb_npz(tmp_path)
    ds = open_dataset(f"npz:{path}")
    cache = tmp_path / "cache"
    first = channel_stats(ds, cache_dir=cache)
    next(cache.glob("*.json")).write_text("{not json")
    assert channel_stats(ds, cache_dir=cache) == first
