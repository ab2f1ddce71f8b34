"""Decoding one image file to a tensor, and the one resize that every 8-bit image of hpt takes.

Ordinary images (8-bit, gray or RGB) are decoded by Pillow to uint8. A JPEG much larger than the target size is
decoded at a reduced scale by libjpeg (``Image.draft``: 1/2, 1/4 or 1/8, never below the target size on either
side), then resized; other formats, and JPEGs less than twice the target size, are decoded in full. The resize is
bilinear and antialiased: torch's uint8 kernel on CPUs with AVX2 (several times faster than Pillow's), Pillow's
BILINEAR on others; the two agree within one level (of 255) per pixel. Wide images (DICOM, TIFFs of more than 8
bits or of other channel counts) are decoded to float32 in [0, 1] by :func:`decode_wide`.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hpt.data.dicom import is_dicom_file, read_dicom
from hpt.data.spec import DataSpec
from hpt.data.tiff import is_tiff, read_tiff
from hpt.errors import HptError
from hpt.extras import has_extra

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@functools.cache
def fast_resize() -> bool:
    """Whether torch's vectorised uint8 resize runs here (x86 with AVX2 or AVX-512); else Pillow's is faster."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def resize(images: np.ndarray, size: int, box: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 (N,H,W,C) -> uint8 (N,C,size,size), bilinear and antialiased (see the module's note). `box` is the
    (width, height) of the part of the images that becomes the output, from their top left corner, in pixels (a
    draft-decoded JPEG's last column and row cover a fraction of a pixel); default the whole images. The result may
    be in channels-last memory: ``.contiguous()`` gives (N,C,H,W) rows, ``.permute(0, 2, 3, 1)`` (N,H,W,C) ones."""
    n, height, width, channels = images.shape
    if box is not None and (box == (width, height) or _scaled_side(height, size, box[1]) != size
                            or _scaled_side(width, size, box[0]) != size):
        box = None  # the whole image (or a box so close to it that the exact mapping would not give size pixels)
    if fast_resize():
        pixels = _as_tensor(images).permute(0, 3, 1, 2)
        if box is None:
            return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(pixels, scale_factor=(size / box[1], size / box[0]), mode="bilinear", antialias=True,
                             align_corners=False, recompute_scale_factor=False)
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    region = None if box is None else (0.0, 0.0, float(box[0]), float(box[1]))
    for i in range(n):
        img = Image.fromarray(images[i, :, :, 0] if channels == 1 else images[i])
        resized = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=region))
        out[i] = resized[..., None] if channels == 1 else resized
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A tensor over the array's memory, also for a read-only array (only read here: no copy, no warning)."""
    if pixels.flags.writeable:
        return torch.from_numpy(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that a read-only array could be written through
        return torch.from_numpy(pixels)


def _scaled_side(side: int, size: int, extent: float) -> int:
    """The output side torch gives for `side` input pixels at the scale size / extent (as F.interpolate rounds)."""
    return math.floor(float(side * (size / extent)))


def decode(path: str | IO[bytes], channels: int, size: int | None) -> torch.Tensor:
    """Decode one file (a path or an open binary file) to uint8 (channels, H, W), channels 1 (gray) or 3 (RGB),
    resized to size x size if given. 16-bit grayscale is scaled to 8 bits (x / 257), not clipped as PIL's convert
    would."""
    target = "L" if channels == 1 else "RGB"
    box = None
    with Image.open(path) as img:
        if size is not None:  # JPEG only: libjpeg decodes at 1/2..1/8 scale, each side still >= size
            drafted = img.draft(None, (size, size))
            box = None if drafted is None else (float(drafted[1][2]), float(drafted[1][3]))
        if img.mode in SIXTEEN_BIT_MODES:
            wide = np.asarray(img, dtype=np.float64)
            out = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
        elif img.mode == "F":
            raise HptError(f"{path} holds floating-point pixels (PIL mode F); convert it to an 8- or 16-bit image")
        else:
            out = img
        if out.mode != target:
            out = out.convert(target)
        pixels = np.asarray(out)  # decodes; a read-only view of a copy of Pillow's buffer
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if size is not None and pixels.shape[:2] != (size, size):
        return resize(pixels[None], size, box)[0].contiguous()
    return torch.from_numpy(np.array(pixels.transpose(2, 0, 1), order="C", copy=True))


def decode_wide(path: str, spec: DataSpec, channels: int) -> torch.Tensor:
    """Decode one file of a wide data set to float32 (channels, H, W) in [0, 1], resized to size x size if given
    (bilinear, antialiased, as for 8-bit images)."""
    if is_dicom_file(path):
        data = torch.from_numpy(read_dicom(path, spec.window))
    elif is_tiff(path) and has_extra("tifffile"):
        data = torch.from_numpy(read_tiff(path))
    else:
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
        data = torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)))
    if data.shape[0] != channels:
        if {int(data.shape[0]), channels} != {1, 3}:
            raise HptError(f"{path} has {data.shape[0]} channels, the other images of the data set {channels}; "
                           "every image of a data set needs the same channels")
        luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # as Pillow's RGB -> L
        data = data.expand(3, -1, -1) if channels == 3 else (data * luma).sum(0, keepdim=True)
    if spec.size is not None and tuple(data.shape[1:]) != (spec.size, spec.size):
        data = F.interpolate(data[None], size=(spec.size, spec.size), mode="bilinear", antialias=True,
                             align_corners=False)[0]
    return data.contiguous()
