"""Named pretrained weights (torchvision, MoCo, DINOv2, MAE, timm) resolved through the torch.hub checkpoint cache."""

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
    num_heads: int | None = None  # a ViT's attention heads (its weights do not say)
    cache_name: str | None = None  # the cache file's name where the URL's last component is not unique (timm's)

    @property
    def filename(self) -> str:
        """The cache file name (the URL's last path component, as torch.hub uses, unless cache_name is set)."""
        return self.cache_name or self.url.rsplit("/", 1)[-1]


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
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
_HF = "https://huggingface.co/timm/"


def _dinov2(size: str, dim_heads: int, reg: bool = False) -> NamedWeight:
    name = f"dinov2_vit{size}14" + ("_reg4" if reg else "")
    arch = {"s": "vit_small", "b": "vit_base", "l": "vit_large"}[size] + "_patch14_518" + ("_reg4" if reg else "")
    arch += "_dinov2"
    what = "DINOv2 ViT-" + size.upper() + "/14" + (" with 4 registers" if reg else "") + " (LVD-142M)"
    return NamedWeight(f"{_DINOV2}dinov2_vit{size}14/{name}_pretrain.pth", arch, what, num_heads=dim_heads)


def _timm(model: str, arch: str, what: str, num_heads: int | None = None) -> NamedWeight:
    return NamedWeight(f"{_HF}{model}/resolve/main/model.safetensors", arch, what, num_heads=num_heads,
                       cache_name=f"timm-{model}.safetensors")


NAMED_WEIGHTS.update({
    "dinov2:vits14": _dinov2("s", 6),
    "dinov2:vitb14": _dinov2("b", 12),
    "dinov2:vitl14": _dinov2("l", 16),
    "dinov2:vits14_reg": _dinov2("s", 6, reg=True),
    "dinov2:vitb14_reg": _dinov2("b", 12, reg=True),
    "mae:vitb16": NamedWeight("https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
                              "vit_base_patch16_224", "MAE ViT-B/16 pre-training (ImageNet-1k, no labels)",
                              num_heads=12),
    "timm:vit_small_patch16_224": _timm("vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224",
                                        "timm ViT-S/16 (AugReg, ImageNet-21k then 1k)", num_heads=6),
    "timm:vit_base_patch16_224": _timm("vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224",
                                       "timm ViT-B/16 (AugReg, ImageNet-21k then 1k)", num_heads=12),
    "timm:convnext_atto": _timm("convnext_atto.d2_in1k", "convnext_atto", "timm ConvNeXt-Atto (ImageNet-1k)"),
    "timm:convnext_tiny": _timm("convnext_tiny.fb_in1k", "convnext_tiny", "ConvNeXt-T (ImageNet-1k)"),
    "timm:convnextv2_atto": _timm("convnextv2_atto.fcmae_ft_in1k", "convnextv2_atto",
                                  "ConvNeXt-V2-Atto (FCMAE, fine-tuned on ImageNet-1k)"),
    "timm:convnextv2_tiny": _timm("convnextv2_tiny.fcmae_ft_in1k", "convnextv2_tiny",
                                  "ConvNeXt-V2-T (FCMAE, fine-tuned on ImageNet-1k)"),
})


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
