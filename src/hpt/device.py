"""Where hpt computes and where it caches: one resolver of device names, one cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hpt.errors import HptError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> the local CUDA device when there is one, else the CPU; 'cuda' -> this process's GPU (`local_rank`
    under torchrun); 'cuda:N' -> GPU N; 'cpu'."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise HptError(f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise HptError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def cache_root() -> Path:
    """$HPT_CACHE, or ~/.cache/hpt: data statistics, folder listings, shard indexes and features live below it
    (downloaded weights live in torch.hub's own cache, so that files torchvision downloaded are reused)."""
    base = os.environ.get("HPT_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "hpt"
