"""Shared fixtures: tiny data sets written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HPT_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "hpt"))


def write_npz(path: Path, n_train: int = 64, n_val: int = 16, n_test: int = 16, size: int = 16,
              channels: int = 3, classes: int = 4, seed: int = 0) -> Path:
    """A small labelled npz in the MedMNIST layout with class-dependent brightness (so classes are learnable)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        base = rng.integers(0, 120, size=shape)
        images = np.clip(base + labels.reshape((n,) + (1,) * (len(shape) - 1)) * 40, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "tiny.npz")


@pytest.fixture
def tiny_gray_npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "tiny_gray.npz", channels=1, size=14, seed=1)
