"""Resampling a ViT's learned absolute position embedding to another patch grid.

Only the patch part of ``pos_embed`` is resampled (bicubically); the positions of the prefix tokens (class
token, and registers in timm's default layout) are kept as they are. Three numerics are offered, each exactly
the reference's own:

* ``"timm"`` (the default, used for timm-layout models): ``timm.layers.resample_abs_pos_embed`` -
  ``F.interpolate(size=new_grid, mode="bicubic", antialias=True)`` in float32;
* ``"dinov2"``: DINOv2's ``interpolate_pos_encoding`` - ``F.interpolate(scale_factor=(new + 0.1) / old,
  mode="bicubic", antialias=False)`` (its ``interpolate_offset=0.1`` default);
* ``"torchvision"``: ``torchvision.models.vision_transformer.interpolate_embeddings`` -
  ``F.interpolate(size=new_grid, mode="bicubic", align_corners=True)``.

They agree exactly at the grid a model was built for (nothing is resampled) and differ slightly elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from hpt.errors import HptError

POS_INTERP_METHODS = ("timm", "dinov2", "torchvision")
_DINOV2_OFFSET = 0.1

Grid = tuple[int, int]


def as_grid(value: int | tuple[int, int] | list[int], what: str = "grid") -> Grid:
    """``8`` -> ``(8, 8)``; ``(h, w)`` stays; anything else (or a size < 1) is an HptError."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair: list[object] = [value, value]
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = list(value)
    else:
        raise HptError(f"{what} must be an int or an (height, width) pair, got {value!r}")
    sizes = [v for v in pair if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
    if len(sizes) != 2:
        raise HptError(f"{what} sizes must be positive integers, got {value!r}")
    return sizes[0], sizes[1]


def resample_patch_pos(
    pos_embed: Tensor,
    new_grid: int | Grid,
    *,
    num_prefix_tokens: int,
    old_grid: int | Grid | None = None,
    method: str = "timm",
) -> Tensor:
    """Resample ``pos_embed`` (1, prefix + h*w, D) to ``new_grid``; the first ``num_prefix_tokens`` are kept.

    ``old_grid`` defaults to the square grid the patch part forms. Returns ``pos_embed`` itself when the grid is
    unchanged; otherwise a new tensor of ``pos_embed``'s dtype (the interpolation runs in float32).
    """
    if method not in POS_INTERP_METHODS:
        raise HptError(f"unknown position-embedding interpolation {method!r}; choose one of: "
                       f"{', '.join(POS_INTERP_METHODS)}")
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise HptError(f"pos_embed must have the shape (1, tokens, dim), got {tuple(pos_embed.shape)}")
    new = as_grid(new_grid, "new grid")
    n_patch = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(max(n_patch, 0))
        if side * side != n_patch or n_patch == 0:
            raise HptError(f"pos_embed has {n_patch} patch positions after {num_prefix_tokens} prefix tokens, "
                           "not a square grid; pass old_grid=(height, width)")
        old = (side, side)
    else:
        old = as_grid(old_grid, "old grid")
        if old[0] * old[1] != n_patch:
            raise HptError(f"pos_embed has {n_patch} patch positions, not the {old[0]}x{old[1]} grid given")
    if old == new:
        return pos_embed
    prefix, patch = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim, dtype = patch.shape[-1], patch.dtype
    grid = patch.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    if method == "timm":
        out = F.interpolate(grid, size=new, mode="bicubic", antialias=True)
    elif method == "torchvision":
        out = F.interpolate(grid, size=new, mode="bicubic", align_corners=True)
    else:
        scale = ((new[0] + _DINOV2_OFFSET) / old[0], (new[1] + _DINOV2_OFFSET) / old[1])
        out = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(out.shape[-2:]) != new:  # cannot happen for sane sizes; never return a wrong grid
            raise HptError(f"DINOv2 interpolation gave a {tuple(out.shape[-2:])} grid instead of {new}")
    out = out.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(dtype)
    return torch.cat([prefix, out], dim=1) if num_prefix_tokens else out


def pos_prefix_tokens(state: Mapping[str, Tensor]) -> int:
    """How many prefix positions a timm-layout ``pos_embed`` holds: ``1 + registers`` (timm's default, the class
    token and registers have positions) or 0 (``no_embed_class``: patches only).

    When both readings give a square grid (e.g. 4 registers and a 2x2 grid), the default reading wins.
    """
    pos = state.get("pos_embed")
    if pos is None or pos.dim() != 3:
        raise HptError("the state dict has no pos_embed of shape (1, tokens, dim); it is not a ViT with learned "
                       "absolute position embeddings")
    cls = 1 if "cls_token" in state else 0
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    total = int(pos.shape[1])
    for prefix in (cls + reg, 0):
        n = total - prefix
        if n > 0 and math.isqrt(n) ** 2 == n:
            return prefix
    raise HptError(f"pos_embed has {total} positions: neither {cls + reg} prefix tokens nor none leave a square "
                   "patch grid; the checkpoint is damaged or has a non-square grid")


def pos_grid(state: Mapping[str, Tensor], num_prefix_tokens: int | None = None) -> Grid:
    """The (square) patch grid a timm-layout ``pos_embed`` was trained for."""
    prefix = pos_prefix_tokens(state) if num_prefix_tokens is None else num_prefix_tokens
    side = math.isqrt(int(state["pos_embed"].shape[1]) - prefix)
    return side, side


def resample_pos_embed(
    state: Mapping[str, Tensor],
    new_grid: int | Grid,
    *,
    num_prefix_tokens: int | None = None,
    old_grid: int | Grid | None = None,
    method: str = "timm",
) -> dict[str, Tensor]:
    """A copy of a timm-layout state dict whose ``pos_embed`` is resampled to ``new_grid`` (patches per side).

    ``num_prefix_tokens`` (positions not resampled) is read from the state dict when not given (see
    :func:`pos_prefix_tokens`); ``method`` is one of :data:`POS_INTERP_METHODS`. Other tensors are shared.
    """
    prefix = pos_prefix_tokens(state) if num_prefix_tokens is None else num_prefix_tokens
    out = dict(state)
    out["pos_embed"] = resample_patch_pos(state["pos_embed"], new_grid, num_prefix_tokens=prefix,
                                          old_grid=old_grid, method=method)
    return out
