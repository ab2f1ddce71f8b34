"""Data: specs (`npz:PATH?split=train`), image data sets (npz, folder, csv), channel stats, resumable loaders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpt.data.arrays import NpzDataset
from hpt.data.base import ImageDataset
from hpt.data.csvlist import CsvDataset
from hpt.data.folder import FolderDataset
from hpt.data.loader import StepBatchSampler, make_eval_loader, make_loader
from hpt.data.spec import KINDS, DataSpec, parse_data_spec
from hpt.data.stats import channel_stats

__all__ = [
    "KINDS", "CsvDataset", "DataSpec", "FolderDataset", "ImageDataset", "NpzDataset", "StepBatchSampler",
    "channel_stats", "make_eval_loader", "make_loader", "open_dataset", "parse_data_spec",
]

_KIND_CLASSES: dict[str, type[ImageDataset]] = {"npz": NpzDataset, "folder": FolderDataset, "csv": CsvDataset}


def open_dataset(spec: str | Path | Mapping[str, Any] | DataSpec) -> ImageDataset:
    """Parse the spec and open its data set (npz read into memory; folder/csv files checked, decoded lazily)."""
    parsed = parse_data_spec(spec)
    return _KIND_CLASSES[parsed.kind](parsed)  # type: ignore[call-arg]
