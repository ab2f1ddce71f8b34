"""Data larger than memory: an npy data set is read batch by batch without holding it; loader defaults."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpt.data import (
    loader_defaults,
    make_eval_loader,
    make_loader,
    npz_to_npy_dir,
    open_dataset,
)
from hpt.data.loader import default_workers

MB = 1 << 20


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_npy_pass_stays_within_a_memory_budget(tmp_path: Path) -> None:
    budget = 100 * MB
    n, side = 56_000, 64  # 229 MB of images, more than twice the budget
    folder = tmp_path / "big"
    folder.mkdir()
    path = folder / "train_images.npy"
    try:
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, side, side))
        for start in range(0, n, 8000):
            stop = min(n, start + 8000)
            images[start:stop, 0, 0] = np.arange(start, stop) % 251
        images.flush()
        del images
        np.save(folder / "train_labels.npy", np.arange(n) % 10)
        assert path.stat().st_size > 2 * budget
        ds = open_dataset(f"npy:{folder}")
        assert len(ds) == n and not ds.in_memory
        base = peak = _rss()
        seen = 0
        batch = 2048
        for start in range(0, n, batch):
            idx = np.arange(start, min(n, start + batch))
            x, y = ds.get_batch(idx)
            assert x.shape == (len(idx), 1, side, side)
            assert np.array_equal(x[:, 0, 0, 0].numpy(), idx % 251) and np.array_equal(y.numpy(), idx % 10)
            seen += len(idx)
            peak = max(peak, _rss())
            del x, y
        assert seen == n
        assert peak - base < budget, f"RSS grew by {(peak - base) / MB:.0f} MB reading {n} images"
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loader_defaults(tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_memory = open_dataset(f"npz:{tiny_npz}")
    on_disk = open_dataset(f"npy:{npz_to_npy_dir(tiny_npz, tmp_path / 'd')}")
    assert loader_defaults(in_memory, "cuda") == {"workers": 0, "pin_memory": True, "prefetch_factor": None}
    assert loader_defaults(in_memory, "cpu")["pin_memory"] is False
    for cpus, workers in ((16, 8), (4, 3), (2, 1), (1, 1), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert loader_defaults(on_disk, "cpu") == {"workers": workers, "pin_memory": False, "prefetch_factor": 4}
        assert default_workers(on_disk) == workers
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    loader = make_loader(on_disk, 8, device_type="cuda")
    assert (loader.num_workers, loader.pin_memory, loader.prefetch_factor) == (3, True, 4)
    loader = make_loader(on_disk, 8, device_type="cuda", workers=0, pin_memory=False)
    assert (loader.num_workers, loader.pin_memory, loader.prefetch_factor) == (0, False, None)
    loader = make_loader(on_disk, 8, workers=2, prefetch_factor=2)
    assert (loader.num_workers, loader.pin_memory, loader.prefetch_factor) == (2, False, 2)
    assert make_eval_loader(in_memory, 8).num_workers == 0
    assert make_loader(in_memory, 8, pin_memory=True).pin_memory  # the old keywords still work
