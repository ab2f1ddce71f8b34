"""Saving a backbone and exporting one for use outside hpt, each export checked by loading it back strictly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from hpt.atomic import atomic_write
from hpt.errors import HptError
from hpt.models.checkpoints import build_backbone
from hpt.models.families import family_of, metadata
from hpt.models.lora import merged_state_dict
from hpt.models.vit import VisionTransformer

#: torchvision: a ResNet's torch.save(state_dict) with torchvision's keys; moco: MoCo's .pth.tar layout (ResNet);
#: timm: the state dict timm.create_model(<arch>, num_classes=0) loads strictly (any family; a ResNet's timm keys
#: are torchvision's); safetensors: hpt's own file (any family), with the metadata that rebuilds it.
EXPORT_FORMATS = ("torchvision", "moco", "timm", "safetensors")
_RESNET_ONLY = ("torchvision", "moco")


def _write_bytes(f: IO[bytes], data: bytes) -> None:
    f.write(data)


def backbone_state(model: nn.Module) -> dict[str, Tensor]:
    """The backbone's tensors by key, LoRA adapters (if any) merged into their weights: the original keys, no
    classifier (``fc.*`` of a ResNet, ``head.*`` of a ViT or ConvNeXt's ``head.fc``)."""
    state = merged_state_dict(model)
    head = ("fc.",) if family_of(model) == "resnet" else ("head.",) if family_of(model) == "vit" else ("head.fc.",)
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith(head)}


def save_backbone(model: nn.Module, path: Path, metadata_: dict[str, str] | None = None) -> None:
    """Save the backbone (no classifier) as safetensors with its reference keys, atomically.

    Metadata: ``format="hpt-backbone"``, the ``family`` and ``arch`` (and what else rebuilds it exactly: a ResNet's
    ``small_stem`` and ``width``, a ViT's ``vit_config``) plus the caller's entries, which may not override those.
    """
    from safetensors.torch import save

    meta = {"format": "hpt-backbone", **metadata(model)}
    for k, v in (metadata_ or {}).items():
        if k in meta and str(v) != meta[k]:
            raise ValueError(f"metadata key {k!r} is reserved (it is {meta[k]!r} for this model)")
        meta[str(k)] = str(v)
    data = save(backbone_state(model), metadata=meta)
    atomic_write(Path(path), lambda f: _write_bytes(f, data))


def export_backbone(source: str | Path, out: Path, fmt: str) -> Path:
    """Export a checkpoint's backbone (validated by a strict load) for use outside hpt; return ``out``.

    * ``"torchvision"`` (ResNet): ``torch.save(state_dict)`` with torchvision key names and no ``fc``; load it with
      ``torchvision.models.resnet50().load_state_dict(sd, strict=False)``: the only missing keys are ``fc.*``.
    * ``"moco"`` (ResNet): ``{"state_dict": {"module.encoder_q." + key: ...}, "arch": arch}`` like a MoCo
      ``.pth.tar`` (MoCo's ``main_lincls.py --pretrained`` reads it).
    * ``"timm"`` (any family): ``torch.save(state_dict)`` in timm's keys, no classifier, LoRA merged:
      ``timm.create_model(name, num_classes=0).load_state_dict(sd)``.
    * ``"safetensors"``: as :func:`save_backbone`.

    The written file is read back and loaded strictly into a new backbone, whose weights must equal the source's.
    """
    if fmt not in EXPORT_FORMATS:
        raise HptError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    model, info = build_backbone(str(source))
    assert info is not None
    if fmt in _RESNET_ONLY and family_of(model) != "resnet":
        raise HptError(f"the {fmt} format holds ResNets; {source} is a {family_of(model)}: export it as timm or "
                       "safetensors")
    out = Path(out)
    if fmt == "safetensors":
        save_backbone(model, out, {"exported_from": Path(info.path).name, "source_format": info.format})
    else:
        sd = backbone_state(model)
        obj: Any = sd if fmt in ("torchvision", "timm") else {
            "state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}, "arch": getattr(model, "arch", "")}
        atomic_write(out, lambda f: torch.save(obj, f))
    _check_round_trip(model, out)
    return out


def _check_round_trip(model: nn.Module, out: Path) -> None:
    """Load the exported file strictly into a new backbone and compare every weight with the exported model's."""
    heads = model.config.num_heads if isinstance(model, VisionTransformer) else None  # not in a plain state dict
    back, _ = build_backbone(str(out), num_heads=heads)
    if weights_sha256_of(backbone_state(back)) != weights_sha256_of(backbone_state(model)):
        raise HptError(f"internal error: {out} does not load back to the exported weights; it was not written "
                       "correctly, delete it")


def weights_sha256_of(state: dict[str, Tensor]) -> str:
    """A hash of every tensor of a state dict (keys sorted)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of every tensor of a module's state dict (keys sorted)."""
    return weights_sha256_of(dict(module.state_dict()))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
