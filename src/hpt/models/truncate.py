"""Truncated backbones: only conv1/bn1 and layer1..layerK, for code that stops at layerK.

``hpt export --truncate layerK`` writes such a file (torchvision key names). hpt's own commands need a full
backbone: loading a truncated file with :func:`~hpt.models.build_backbone` (``--base``, ``--backbone``) fails
with an error that says it is truncated. :func:`load_truncated` is the way to load one: a ResNet whose layers
after layerK are ``nn.Identity``, so that ``forward_features`` pools layerK's output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from hpt.atomic import atomic_write
from hpt.errors import HptError
from hpt.models.checkpoints import _check_strict, _listing, build_backbone
from hpt.models.formats import extract_backbone, read_state_dict
from hpt.models.resnet import _LAYOUTS, ResNet, build_resnet
from hpt.models.saving import backbone_state

TRUNCATE_POINTS = ("layer1", "layer2", "layer3")
TRUNCATE_FORMATS = ("torchvision", "safetensors")
TRUNCATED_FORMAT = "hpt-truncated-backbone"  # the safetensors metadata "format"
_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _check_point(after: str) -> int:
    if after not in TRUNCATE_POINTS:
        raise HptError(f"cannot truncate after {after!r}; choose one of: {', '.join(TRUNCATE_POINTS)} "
                       "(layer4 is the whole backbone: export it without --truncate)")
    return int(after[-1])


def kept_prefixes(after: str) -> tuple[str, ...]:
    """The key prefixes a backbone truncated after `after` keeps: conv1., bn1., layer1. ... layerK."""
    return ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, _check_point(after) + 1)))


def truncate_state(state: dict[str, Tensor], after: str) -> dict[str, Tensor]:
    """The entries of a torchvision-named backbone state dict that a truncated backbone keeps."""
    keep = kept_prefixes(after)
    return {k: v for k, v in state.items() if k.startswith(keep)}


def export_truncated(source: str | Path, out: Path, fmt: str, after: str) -> Path:
    """Export a checkpoint's backbone (validated by a strict full load) truncated after `after`; return ``out``.

    * ``"torchvision"``: ``torch.save(state_dict)`` with torchvision key names; load it into a torchvision
      ResNet with ``strict=False`` (the missing keys are layer(K+1)..layer4 and fc) and stop at layerK.
    * ``"safetensors"``: the same tensors, metadata ``format=hpt-truncated-backbone``, ``truncated_after``,
      ``arch``, ``small_stem``, ``width``.
    """
    _check_point(after)
    if fmt not in TRUNCATE_FORMATS:
        raise HptError(f"--truncate writes {' or '.join(TRUNCATE_FORMATS)}, not {fmt!r} (a MoCo .pth.tar is "
                       "read by code that needs the whole backbone)")
    model, info = build_backbone(str(source))
    assert info is not None
    if not isinstance(model, ResNet):
        raise HptError(f"--truncate cuts a ResNet after one of its layers; {source} is a {info.architecture}: "
                       "export it whole")
    state = truncate_state(backbone_state(model), after)
    out = Path(out)
    if fmt == "safetensors":
        from safetensors.torch import save

        meta = {"format": TRUNCATED_FORMAT, "truncated_after": after, "arch": model.arch,
                "small_stem": str(model.small_stem), "width": str(model.width),
                "exported_from": Path(info.path).name, "source_format": info.format}
        data = save(state, metadata=meta)
        atomic_write(out, lambda f: f.write(data))
    else:
        atomic_write(out, lambda f: torch.save(state, f))
    return out


def load_truncated(source: str | Path) -> ResNet:
    """A truncated backbone file as a ResNet whose layers after the last kept one are ``nn.Identity``.

    The architecture is inferred from the kept keys (block kind and depths identify it); loading is strict
    over the kept keys. The model's ``truncated_after`` attribute names the last layer, and ``feature_dim``
    is that layer's channels. A full backbone is refused (use ``build_backbone``).
    """
    path = Path(source)
    obj, meta = read_state_dict(path)
    state, _, _ = extract_backbone(obj, where=str(path))
    kept = [name for name in _LAYERS if any(k.startswith(name + ".") for k in state)]
    k = len(kept)
    if kept != list(_LAYERS[:k]):
        raise HptError(f"{path} has {', '.join(kept)} but not the layers before them; it is not a truncated ResNet")
    if k == len(_LAYERS):
        raise HptError(f"{path} is a full backbone, not a truncated one; load it with build_backbone / --base")
    after = f"layer{k}"
    conv1 = state["conv1.weight"]
    width, small_stem = int(conv1.shape[0]), conv1.shape[-1] == 3
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depths = tuple(len({key.split(".")[1] for key in state if key.startswith(f"{name}.")}) for name in kept)
    archs = [a for a, (kind_a, layout) in _LAYOUTS.items() if kind_a == kind and layout[:k] == depths]
    if meta.get("arch") in archs:
        archs = [meta["arch"]]
    if len(archs) != 1:
        raise HptError(f"{path}: {kind} blocks with depths {list(depths)} up to {after} match "
                       f"{'no' if not archs else 'several'} supported architectures ({', '.join(archs) or 'none'})")
    model = build_resnet(archs[0], small_stem=small_stem, width=width)
    for name in _LAYERS[k:]:
        setattr(model, name, nn.Identity())
    model_state = {key: v for key, v in model.state_dict().items() if not key.startswith("fc.")}
    missing, unexpected, shapes = _check_strict(model_state, state)
    if missing or unexpected or shapes:
        parts = [f"{path} does not fit a {archs[0]} (small_stem={small_stem}, width={width}) truncated after {after}"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(_listing(title, items))
        raise HptError("; ".join(parts))
    full = {**model_state, **state}
    model.load_state_dict(full, strict=False)
    model.feature_dim = width * 2 ** (k - 1) * (4 if kind == "bottleneck" else 1)
    model.truncated_after = after  # type: ignore[attr-defined]
    return model
