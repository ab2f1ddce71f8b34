"""TIFF files read in full with tifffile: 16-bit samples and any number of channels, as float32 in [0, 1].

Folder and csv data read every ``.tif``/``.tiff`` file through this module. An 8-bit grayscale or RGB TIFF is an
ordinary image (decoded by Pillow like a PNG); a TIFF with more than 8 bits per sample or a channel count other
than 1 or 3 is read with tifffile, every sample a channel, scaled by its type's range (uint16: x / 65535) and
kept in float until normalisation. Without tifffile such a file is a one-line error naming the extra
(``pip install 'hpt[tiff]'``), never a silent 8-bit or 3-channel reading.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from hpt.errors import HptError
from hpt.extras import has_extra, import_extra, missing_extra

TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")
_PURPOSE = "reading 16-bit or multi-channel TIFF files"


def is_tiff(path: str) -> bool:
    """True for the TIFF suffixes (case-insensitive)."""
    return str(path).lower().endswith(TIFF_EXTENSIONS)


def tiff_layout(path: str) -> tuple[tuple[int, int], int, np.dtype]:
    """((width, height), channels, sample dtype) of a TIFF's first image series, from its header."""
    tifffile = import_extra("tifffile", _PURPOSE)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes, dtype = tuple(series.shape), str(series.axes), np.dtype(series.dtype)
    height, width, channels = _geometry(shape, axes, path)
    return (width, height), channels, dtype


def _geometry(shape: tuple[int, ...], axes: str, path: str) -> tuple[int, int, int]:
    """(height, width, channels) of a series: Y and X plus at most one other axis of size > 1 (the channels)."""
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"no Y and X axes in its image series (axes {axes})")
    others = [(a, n) for a, n in zip(axes, shape, strict=True) if a not in "YX" and n > 1]
    if len(others) > 1:
        raise HptError(f"{path} holds a stack of images (axes {axes}, shape {list(shape)}); hpt reads one 2-D image "
                       "per file with its channels: save each image of the stack as its own file")
    return shape[axes.index("Y")], shape[axes.index("X")], others[0][1] if others else 1


def needs_tifffile(mode: str | None, samples: int | None) -> bool:
    """Whether Pillow would read a TIFF of this mode and samples per pixel only partly (bits or channels lost)."""
    return mode is None or mode.startswith("I") or samples not in (None, 1, 3)


def pillow_tiff_check(path: str) -> None:
    """Without tifffile: raise the missing-extra error when Pillow cannot read this TIFF in full."""
    if has_extra("tifffile"):
        return
    try:
        with Image.open(path) as img:
            mode, samples = img.mode, img.tag_v2.get(277)  # 277: SamplesPerPixel
    except FileNotFoundError:
        return
    except Exception:  # noqa: BLE001 - Pillow cannot identify 16-bit multi-channel TIFFs; tifffile would tell damage from that
        raise missing_extra("tifffile", f"{_PURPOSE} ({path})") from None
    if mode != "F" and needs_tifffile(mode, samples):
        raise missing_extra("tifffile", f"{_PURPOSE} ({path})")


def read_tiff(path: str) -> np.ndarray:
    """The image as float32 (C, H, W) in [0, 1]: integer samples divided by their type's range."""
    tifffile = import_extra("tifffile", _PURPOSE)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data, axes = series.asarray(), str(series.axes)
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if data.ndim == 2:
        data = data[None]
    else:
        channel = next(i for i, a in enumerate(axes) if a not in "YX")
        data = np.moveaxis(data, channel, 0)
        if axes.index("Y") > axes.index("X"):
            data = data.transpose(0, 2, 1)
    return scale_to_unit(data, path)


def scale_to_unit(data: np.ndarray, path: str) -> np.ndarray:
    """Integer or boolean samples mapped onto [0, 1] by their type's full range, as float32."""
    if data.dtype == np.bool_:
        return data.astype(np.float32)
    if not np.issubdtype(data.dtype, np.integer):
        raise HptError(f"{path} holds {data.dtype} samples, which have no fixed range; convert it to 8- or 16-bit")
    info = np.iinfo(data.dtype)
    out = (data.astype(np.float64) - info.min) / (float(info.max) - float(info.min))
    return np.ascontiguousarray(out, dtype=np.float32)
