"""Folder listings are cached: an unchanged folder is not walked again; a changed one is."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpt.data import open_dataset

PAST = 1_600_000_000  # 2020: directories older than the "changed just now" window


def _save(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5), value, np.uint8)).save(path)


def _age(root: Path) -> None:
    for folder, _, _ in os.walk(root):
        os.utime(folder, (PAST, PAST))


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """Paths passed to os.scandir from now on; the cache lives in tmp_path/cache."""
    monkeypatch.setenv("HPT_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    real = os.scandir

    def counting(path: str | Path = ".") -> object:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    yield calls


def test_unchanged_folder_is_not_walked_again(tmp_path: Path, scans: list[str]) -> None:
    root = tmp_path / "data"
    for c, n in (("cat", 3), ("dog", 2)):
        for i in range(n):
            _save(root / c / f"{i}.png", 10 * i)
    _save(root / "dog" / "deep" / "x.png", 7)
    _age(root)
    first = open_dataset(f"folder:{root}")
    assert len(scans) >= 4 and list((tmp_path / "cache" / "listings").glob("walk-*.json"))
    scans.clear()
    second = open_dataset(f"folder:{root}")
    assert scans == []
    assert second.files == first.files and second.labels.tolist() == first.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert second.class_names == ["cat", "dog"] and second.fingerprint() == first.fingerprint()

    _save(root / "dog" / "deep" / "y.png", 8)  # changes deep's mtime only
    third = open_dataset(f"folder:{root}")
    assert scans and len(third) == 7 and third.files[-1].endswith("y.png")
    (root / "cat" / "0.png").unlink()
    assert len(open_dataset(f"folder:{root}")) == 6


def test_split_folders_and_new_split(tmp_path: Path, scans: list[str]) -> None:
    root = tmp_path / "data"
    _save(root / "train" / "a" / "0.png", 1)
    _save(root / "val" / "b" / "0.png", 2)
    _age(root)
    val = open_dataset(f"folder:{root}?split=val")
    assert val.class_names == ["a", "b"] and val.labels.tolist() == [1]
    scans.clear()
    assert open_dataset(f"folder:{root}?split=val").labels.tolist() == [1] and scans == []
    _save(root / "test" / "c" / "0.png", 3)  # a new split folder brings a new class
    assert open_dataset(f"folder:{root}?split=val").class_names == ["a", "b", "c"]


def test_recent_changes_are_not_cached(tmp_path: Path, scans: list[str]) -> None:
    root = tmp_path / "fresh"
    _save(root / "0.png", 1)  # written just now: the same clock tick could hide a later change
    open_dataset(f"folder:{root}")
    scans.clear()
    open_dataset(f"folder:{root}")
    assert scans
