"""DICOM files read with pydicom, kept in float until normalisation (the data set of the ``dicom:`` kind is
hpt.data.dicomdir; csv data may list DICOM files too).

Each image: stored values -> ``value * RescaleSlope + RescaleIntercept`` (e.g. Hounsfield units) -> the window
(``window=CENTER,WIDTH`` of the spec, else the file's WindowCenter/WindowWidth, else the full range its
BitsStored can hold) mapped linearly onto [0, 1] and clipped -> inverted for MONOCHROME1 (so that bright is dense
everywhere). 12- and 16-bit values stay float32 throughout: nothing is truncated to 8 bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpt.data.header import Header
from hpt.extras import import_extra

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
_PURPOSE = "reading DICOM files"


def is_dicom_file(name: str) -> bool:
    """True for the DICOM suffixes (case-insensitive)."""
    return str(name).lower().endswith(DICOM_EXTENSIONS)


def require_pydicom() -> Any:
    """The pydicom module, or the one-line error naming the extra that installs it."""
    return import_extra("pydicom", _PURPOSE)


def probe_dicom(path: str) -> Header:
    """Read one file's header (no pixel data): its size and channels, or why it cannot be read."""
    pydicom = require_pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        return Header(None, None, "missing", missing=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for damaged or non-DICOM files
        return Header(None, None, f"{type(err).__name__}: {err}")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        return Header(None, None, "no image in the file (no Rows/Columns)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return Header(None, None, f"a multi-frame image ({frames} frames); hpt reads single-frame images")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return Header((int(columns), int(rows)), "L" if samples == 1 else "RGB", None, channels=samples, wide=True)


def read_dicom(path: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """The image as float32 (C, H, W) in [0, 1]: rescaled, windowed, MONOCHROME1 inverted (see the module)."""
    ds = require_pydicom().dcmread(path)
    stored = np.asarray(ds.pixel_array)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:  # colour: pydicom gives (H, W, S) in RGB; scale by the stored range, no window
        low, high = _stored_range(ds)
        data = (stored.astype(np.float64) - low) / (high - low)
        return np.ascontiguousarray(np.clip(data, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = stored.astype(np.float64) * slope + intercept
    center_width = window if window is not None else _file_window(ds)
    if center_width is not None:
        center, width = center_width
        low = center - width / 2.0
        high = low + width
    else:
        raw_low, raw_high = _stored_range(ds)
        low, high = sorted((raw_low * slope + intercept, raw_high * slope + intercept))
    data = np.clip((values - low) / (high - low), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        data = 1.0 - data
    return np.ascontiguousarray(data[None], dtype=np.float32)


def _first(value: Any) -> float:
    """A DICOM number or the first of several (WindowCenter may hold one per display preset)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _file_window(ds: Any) -> tuple[float, float] | None:
    """The file's own (WindowCenter, WindowWidth), or None when it gives none (or a width <= 0)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None


def _stored_range(ds: Any) -> tuple[float, float]:
    """The lowest and highest value BitsStored (signed or not: PixelRepresentation) can hold."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2 ** bits - 1)
