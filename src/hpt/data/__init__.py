"""Data: specs (`npz:PATH?split=train`), image data sets (npz, npy, folder, csv, dicom), WebDataset streams (wds),
channel stats, resumable loaders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpt.data.arrays import NpzDataset
from hpt.data.base import ImageDataset
from hpt.data.csvlist import CsvDataset
from hpt.data.dicomdir import DicomDataset
from hpt.data.folder import FolderDataset
from hpt.data.loader import (
    AnyDataset,
    StepBatchSampler,
    batch_loader,
    loader_defaults,
    make_eval_loader,
    make_loader,
)
from hpt.data.npy import NpyDataset, npz_to_npy_dir
from hpt.data.spec import KINDS, DataSpec, moved_data, parse_data_spec
from hpt.data.stats import channel_stats
from hpt.data.wds import WdsDataset
from hpt.data.wdsindex import expand_braces
from hpt.errors import HptError

__all__ = [
    "KINDS", "STREAM_KINDS", "AnyDataset", "CsvDataset", "DataSpec", "DicomDataset", "FolderDataset", "ImageDataset",
    "NpyDataset",
    "NpzDataset", "StepBatchSampler", "WdsDataset", "batch_loader", "channel_stats", "expand_braces",
    "loader_defaults", "make_eval_loader", "make_loader", "moved_data", "npz_to_npy_dir", "open_any",
    "open_dataset", "open_stream", "parse_data_spec",
]

STREAM_KINDS: tuple[str, ...] = ("wds",)  # read as a stream (WdsDataset), not by index
_KIND_CLASSES: dict[str, type[ImageDataset]] = {"npz": NpzDataset, "npy": NpyDataset, "folder": FolderDataset,
                                                "csv": CsvDataset, "dicom": DicomDataset}


def open_dataset(spec: str | Path | Mapping[str, Any] | DataSpec) -> ImageDataset:
    """Parse the spec and open its indexable data set (npz read into memory; npy memory-mapped; folder/csv files
    checked, decoded lazily). wds data is a stream: open it with :func:`open_stream` or :func:`open_any`."""
    parsed = parse_data_spec(spec)
    if parsed.kind in STREAM_KINDS:
        raise HptError(f"{parsed.describe()} is a stream of shards, which cannot be indexed here; it can be used "
                       "for pretraining only (or convert it to a folder or npy data set for this step)")
    return _KIND_CLASSES[parsed.kind](parsed)  # type: ignore[call-arg]


def open_stream(spec: str | Path | Mapping[str, Any] | DataSpec) -> WdsDataset:
    """Parse a wds spec and open its shards (scanned once, cached)."""
    parsed = parse_data_spec(spec)
    if parsed.kind not in STREAM_KINDS:
        raise HptError(f"{parsed.describe()} is not a stream; open it with open_dataset")
    return WdsDataset(parsed)


def open_any(spec: str | Path | Mapping[str, Any] | DataSpec) -> AnyDataset:
    """open_stream for wds specs, open_dataset for the others (for code that accepts both, like training)."""
    parsed = parse_data_spec(spec)
    return open_stream(parsed) if parsed.kind in STREAM_KINDS else open_dataset(parsed)
