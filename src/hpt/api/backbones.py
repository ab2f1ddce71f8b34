"""load_backbone() and export(): a backbone as a module to use in Python, or as a file other code loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpt.errors import HptError
from hpt.models import EXPORT_FORMATS, build_backbone, export_backbone, file_sha256
from hpt.models.truncate import export_truncated


def load_backbone(backbone: str | Path, *, arch: str | None = None, small_stem: bool | None = None,
                  width: int | None = None, seed: int = 0) -> nn.Module:
    """The backbone `hpt eval --backbone` and `hpt pretrain --base` take, loaded strictly, on the CPU, in eval mode.

    backbone: a checkpoint file (hpt's backbone.safetensors, torchvision, MoCo, timm, DINOv2 ... layouts), named
    weights ('torchvision:resnet50', 'dinov2:vits14' ...: downloaded once into torch.hub's cache) or 'random'
    (with arch: resnet18/34/50, vit_..., convnext_...; initialised from `seed`, leaving the global RNG as it was).
    arch, small_stem and width must agree with a checkpoint's own (they default to it). The module has no
    classifier: model(images) gives the pooled features, of size model.feature_dim.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = build_backbone(str(backbone), arch=arch, small_stem=small_stem, width=width)
    return model.eval()


@dataclass(frozen=True)
class ExportResult:
    """A written export, loaded back strictly before it was reported."""

    path: Path
    format: str  # torchvision, moco, timm or safetensors
    sha256: str  # of the file's bytes
    truncate: str | None = None  # layer1..layer3: only the stem and the layers up to it were written

    def __str__(self) -> str:
        cut = "" if self.truncate is None else f", truncated after {self.truncate}"
        return f"{self.path} ({self.format}{cut}, sha256 {self.sha256[:12]})"


def export(source: str | Path, out: str | Path, format: str = "torchvision",
           truncate: str | None = None) -> ExportResult:
    """Write the backbone of `source` (a checkpoint file or named weights) to `out` in a format other code loads:
    `hpt export`. The written file is loaded back strictly and must hold the source's weights.

    format: 'torchvision' (ResNet state dict, torchvision's keys, no fc), 'moco' (MoCo's .pth.tar, ResNet),
    'timm' (state dict for timm.create_model(NAME, num_classes=0), any family, LoRA merged) or 'safetensors'
    (hpt's own file, any family). truncate: 'layer1', 'layer2' or 'layer3' writes only the stem and the layers up
    to it (torchvision or safetensors; hpt.models.truncate.load_truncated reads it back).
    """
    if format not in EXPORT_FORMATS:
        raise HptError(f"unknown export format {format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if str(source) == "random":
        raise HptError("export writes a checkpoint's weights; 'random' has none: give a checkpoint file or named "
                       "weights (or save a random model with hpt.models.save_backbone)")
    if truncate is not None:
        path = export_truncated(str(source), Path(out), format, truncate)
    else:
        path = export_backbone(str(source), Path(out), format)
    return ExportResult(Path(path), format, file_sha256(Path(path)), truncate)

