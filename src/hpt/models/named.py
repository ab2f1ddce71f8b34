"""Named pretrained weights (torchvision, MoCo) resolved through the torch.hub checkpoint cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.hub

from hpt.errors import HptError


@dataclass(frozen=True)
class NamedWeight:
    """A downloadable checkpoint: where it lives, what it holds, and the hash prefix torch.hub checks."""

    url: str
    arch: str
    description: str
    hash_prefix: str | None = None  # leading hex digits of the file's sha256 (torchvision names carry it)

    @property
    def filename(self) -> str:
        """The cache file name (the URL's last path component, as torch.hub uses)."""
        return self.url.rsplit("/", 1)[-1]


_TV = "https://download.pytorch.org/models/"
_MOCO = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/"

NAMED_WEIGHTS: dict[str, NamedWeight] = {
    "torchvision:resnet18": NamedWeight(_TV + "resnet18-f37072fd.pth", "resnet18", "torchvision IMAGENET1K_V1", "f37072fd"),
    "torchvision:resnet34": NamedWeight(_TV + "resnet34-b627a593.pth", "resnet34", "torchvision IMAGENET1K_V1", "b627a593"),
    "torchvision:resnet50": NamedWeight(_TV + "resnet50-0676ba61.pth", "resnet50", "torchvision IMAGENET1K_V1", "0676ba61"),
    "torchvision:resnet50-v2": NamedWeight(_TV + "resnet50-11ad3fa6.pth", "resnet50", "torchvision IMAGENET1K_V2", "11ad3fa6"),
    "moco-v1-200ep": NamedWeight(
        _MOCO + "moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar", "resnet50", "MoCo v1, 200 epochs on ImageNet"
    ),
    "moco-v2-200ep": NamedWeight(
        _MOCO + "moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar", "resnet50", "MoCo v2, 200 epochs on ImageNet"
    ),
    "moco-v2-800ep": NamedWeight(
        _MOCO + "moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", "resnet50", "MoCo v2, 800 epochs on ImageNet (the paper's Base)"
    ),
}


def default_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch.hub's own cache, so files torchvision downloaded are reused)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str, dst: str, hash_prefix: str | None) -> None:
    """Indirection so tests can replace the network call."""
    torch.hub.download_url_to_file(url, dst, hash_prefix=hash_prefix, progress=True)


def resolve_named(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the named weights in the cache, downloading them first if they are not there."""
    entry = NAMED_WEIGHTS.get(name)
    if entry is None:
        raise HptError(f"unknown named weights {name!r}; named weights are: {', '.join(NAMED_WEIGHTS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dst = cache / entry.filename
    if dst.is_file():
        return dst
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _download(entry.url, str(dst), entry.hash_prefix)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, hash-mismatch RuntimeError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HptError(
            f"named weights {name} are not in the cache ({dst}) and could not be downloaded ({reason}); "
            f"download {entry.url} on a machine with internet and copy it to {dst}"
        ) from None
    if not dst.is_file():
        raise HptError(f"downloading named weights {name} from {entry.url} did not produce {dst}; copy the file there by hand")
    return dst
