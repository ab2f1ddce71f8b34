"""What opening an image file without decoding its pixels tells: the record every reader's probe returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Header:
    """What opening a file (without decoding its pixels) told us; error is None when it looked fine."""

    size: tuple[int, int] | None  # PIL order: (width, height)
    mode: str | None
    error: str | None
    missing: bool = False
    channels: int | None = None  # set by the TIFF and DICOM probes: every sample is a channel
    wide: bool = False  # read as float: DICOM, TIFF of > 8 bits or channels other than 1 or 3
