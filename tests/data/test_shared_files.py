"""Smoke test on the real .npz files of the shared data folder (HPT_SHARED_DATA, default /work/shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hpt.data import channel_stats, make_loader, open_dataset

SHARED = Path(os.environ.get("HPT_SHARED_DATA", "/work/shared/data"))
FILES = sorted(SHARED.glob("*.npz")) if SHARED.is_dir() else []


@pytest.mark.skipif(not FILES, reason=f"no .npz files in {SHARED}")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_open_each_shared_file(path: Path, tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        ds = open_dataset(f"npz:{path}?split={split}&count=64")
        assert len(ds) == 64 and ds.labels is not None and ds.num_classes is not None
        assert ds.num_channels in (1, 3)
        images, labels = next(iter(make_loader(ds, 16)))
        assert images.dtype == torch.uint8 and images.shape == (16, ds.num_channels, *ds.image_size)
        assert labels.shape == ((16, ds.num_classes) if ds.multilabel else (16,))
    mean, std = channel_stats(ds, cache_dir=tmp_path)
    assert all(0 < m < 1 for m in mean) and all(0 < s < 1 for s in std)
