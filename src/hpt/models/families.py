"""Backbone families - ResNet, ViT, ConvNeXt - told apart in checkpoints, built by name and described in metadata.

Everything past this module (methods, stages, evaluation) sees a backbone only as an nn.Module with
``feature_dim``, ``forward(x) -> (N, feature_dim)`` pooled features and ``stage_outputs(x)``; this is the one place
that knows which family a file or a name belongs to.

Architecture names (``--arch`` with ``--base random``, ``base.arch``):

* ResNet: ``resnet18``, ``resnet34``, ``resnet50`` (``small_stem`` and ``width`` apply);
* ViT: ``vit_{tiny|small|base|large}`` with optional ``_patch{P}``, ``_{IMG}``, ``_reg{R}`` and ``_dinov2`` parts
  in timm's order, e.g. ``vit_small_patch16_224``, ``vit_tiny_patch4_32`` (small images); ``_dinov2`` is DINOv2's
  variant (LayerScale, its position interpolation, registers without positions): ``vit_small_patch14_518_dinov2``
  is a random ``dinov2:vits14``;
* ConvNeXt: ``convnext_{atto..base}`` and ``convnextv2_{atto..base}`` with an optional ``_patch{P}``
  (``convnext_atto_patch2`` for 28-32 px images).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from torch import Tensor, nn

from hpt.errors import HptError
from hpt.models.convnext import (
    CONVNEXT_ARCHS,
    ConvNeXt,
    build_convnext,
    stage0_downsamples,
)
from hpt.models.convnext_layouts import convnext_from_state_dict
from hpt.models.resnet import ARCHS, ResNet, build_resnet
from hpt.models.stem import stem_channels
from hpt.models.vit import VIT_CONFIGS, VisionTransformer, VitConfig, build_vit
from hpt.models.vit_layouts import build_vit_from_state

FAMILIES = ("resnet", "vit", "convnext")
_VIT_NAME = re.compile(r"^(vit_(?:tiny|small|base|large))(?:_patch(\d+))?(?:_(\d+))?(?:_reg(\d+))?(_dinov2)?$")
_CONVNEXT_NAME = re.compile(r"^(convnext(?:v2)?_[a-z]+)(?:_patch(\d+))?$")
#: Keys whose presence (after any prefix) marks a family's checkpoint.
_MARKS = {
    "vit": ("patch_embed.proj.weight", "conv_proj.weight"),
    "convnext": ("stages.0.blocks.0.conv_dw.weight", "downsample_layers.0.0.weight", "stages.0.0.dwconv.weight"),
}
VIT_META = "vit_config"  # save metadata: the ViT's full config as JSON (its head count is not in the weights)


def family_of(model: nn.Module) -> str:
    """The family of a built backbone."""
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ConvNeXt):
        return "convnext"
    return "resnet"


def _all_keys(obj: Mapping[str, Any], depth: int = 0) -> list[str]:
    keys = [str(k) for k, v in obj.items() if isinstance(v, Tensor)]
    if depth < 4:
        for value in obj.values():
            if isinstance(value, Mapping):
                keys += _all_keys(value, depth + 1)
    return keys


def family_of_checkpoint(obj: Mapping[str, Any]) -> str:
    """``vit`` or ``convnext`` when the checkpoint's keys (under any wrapper or prefix) mark one, else ``resnet``
    (whose reader reports what is wrong with a file that is none of the three)."""
    keys = _all_keys(obj)
    for family, marks in _MARKS.items():
        if any(k.endswith(mark) for k in keys for mark in marks):
            return family
    return "resnet"


def is_arch(arch: str) -> bool:
    """Whether ``arch`` names an architecture hpt builds (see the module's docstring)."""
    return arch in ARCHS or bool(_VIT_NAME.match(arch)) or bool(
        (m := _CONVNEXT_NAME.match(arch)) and m.group(1) in CONVNEXT_ARCHS)


def arch_names() -> str:
    """The architecture names for error messages."""
    return (f"{', '.join(ARCHS)}; {', '.join(VIT_CONFIGS)} (with _patch<P>_<IMG>_reg<R>, e.g. vit_tiny_patch4_32); "
            f"{', '.join(a for a in CONVNEXT_ARCHS if a.endswith(('atto', 'tiny')))}, ... (with _patch<P>)")


def build_random(arch: str, *, small_stem: bool = False, width: int | None = None, in_chans: int = 3) -> nn.Module:
    """A randomly initialised backbone of the named architecture (no classifier head) taking `in_chans` channels."""
    if arch in ARCHS:
        return build_resnet(arch, small_stem=small_stem, width=64 if width is None else width, in_chans=in_chans)
    if small_stem or width is not None:
        raise HptError(f"small_stem and width are ResNet options; {arch} takes its size from its name "
                       "(e.g. vit_tiny_patch4_32, convnext_atto_patch2)")
    vit = _VIT_NAME.match(arch)
    if vit:
        name, patch, img, reg, dinov2 = vit.groups()
        options: dict[str, Any] = {"patch_size": int(patch or 16), "reg_tokens": int(reg or 0), "in_chans": in_chans}
        options["img_size"] = int(img) if img else (518 if options["patch_size"] == 14 else 224)
        if dinov2:
            options.update(init_values=1e-5, pos_interp="dinov2", no_embed_class=bool(reg))
        return build_vit(name, **options)
    convnext = _CONVNEXT_NAME.match(arch)
    if convnext and convnext.group(1) in CONVNEXT_ARCHS:
        return build_convnext(convnext.group(1), patch_size=int(convnext.group(2) or 4), in_chans=in_chans)
    raise HptError(f"unknown architecture {arch!r}; choose one of: {arch_names()}")


def arch_of(model: nn.Module) -> str:
    """The architecture name that builds a backbone of the same keys and shapes (see build_random)."""
    if isinstance(model, VisionTransformer):
        cfg = model.config
        named = next((n for n, dims in VIT_CONFIGS.items() if dims == (cfg.embed_dim, cfg.depth, cfg.num_heads)),
                     "vit_custom")
        dinov2 = (cfg.init_values is not None and cfg.pos_interp == "dinov2" and cfg.global_pool == "token"
                  and cfg.no_embed_class == bool(cfg.reg_tokens))
        return (f"{named}_patch{cfg.patch_size}_{cfg.img_size}" + (f"_reg{cfg.reg_tokens}" if cfg.reg_tokens else "")
                + ("_dinov2" if dinov2 else ""))
    if isinstance(model, ConvNeXt):
        return model.arch + (f"_patch{model.spec.patch_size}" if model.spec.patch_size != 4 else "")
    assert isinstance(model, ResNet)
    return model.arch


def describe(model: nn.Module) -> str:
    """One line naming the backbone's architecture (for logs, inspect and error messages)."""
    if isinstance(model, ResNet):
        chans = f", in_chans={model.in_chans}" if model.in_chans != 3 else ""
        return f"{model.arch} (small_stem={model.small_stem}, width={model.width}{chans})"
    if isinstance(model, VisionTransformer):
        cfg = model.config
        heads = f"{cfg.num_heads} head" + ("s" if cfg.num_heads != 1 else "")
        return (f"ViT {cfg.embed_dim}-dim, depth {cfg.depth}, {heads}, patch {cfg.patch_size}, "
                f"{cfg.img_size} px" + (f", {cfg.reg_tokens} registers" if cfg.reg_tokens else ""))
    assert isinstance(model, ConvNeXt)
    return str(model.spec)


def image_size_problem(model: nn.Module, size: int) -> str:
    """Why square ``size``-px images do not fit the backbone, or "" when they do. A ViT runs at any multiple of its
    patch size (its position embeddings are interpolated); a ConvNeXt needs at least ``patch * 2**downsamplings``
    px (its last stage's map would be empty); a ResNet runs at any size."""
    if isinstance(model, VisionTransformer):
        patch = model.config.patch_size
        if size % patch == 0:
            return ""
        below, above = size // patch * patch, -(-size // patch) * patch
        choices = f"{below} or {above}" if below else str(above)
        return (f"{size} px is not a multiple of the ViT's patch size {patch}; use {choices} px (it was built for "
                f"{model.config.img_size} px and runs at any multiple of {patch})")
    if isinstance(model, ConvNeXt):
        downsamplings = 3 + stage0_downsamples(model.spec.patch_size)
        least = model.spec.patch_size * 2 ** downsamplings
        if size >= least:
            return ""
        return (f"{size} px is too small for {arch_of(model)}: its patch-{model.spec.patch_size} stem and "
                f"{downsamplings} downsamplings need at least {least} px")
    return ""


def metadata(model: nn.Module) -> dict[str, str]:
    """What a saved backbone records to be rebuilt exactly: ``family``, ``arch`` and ``in_chans`` (its input
    channels), plus the ResNet's stem and width or the ViT's whole config (its head count cannot be read from the
    weights)."""
    meta = {"family": family_of(model), "arch": arch_of(model), "in_chans": str(stem_channels(model))}
    if isinstance(model, ResNet):
        meta.update({"small_stem": str(model.small_stem), "width": str(model.width)})
    elif isinstance(model, VisionTransformer):
        meta[VIT_META] = json.dumps({k: v for k, v in asdict(model.config).items() if k != "num_classes"})
    return meta


def _vit_options(meta: Mapping[str, str]) -> dict[str, Any]:
    """The num_heads and pos_interp an hpt-saved ViT recorded (build_vit_from_state reads the rest from weights)."""
    if VIT_META not in meta:
        return {}
    try:
        recorded = json.loads(meta[VIT_META])
    except ValueError:
        return {}
    known = {f.name for f in fields(VitConfig)}
    return {k: recorded[k] for k in ("num_heads", "pos_interp") if k in recorded and k in known}


def load_family_checkpoint(obj: Mapping[str, Any], family: str, meta: Mapping[str, str], where: str,
                           num_heads: int | None = None) -> tuple[nn.Module, str, list[str]]:
    """Build a ViT or ConvNeXt from a loaded checkpoint and load it strictly: (model, key layout, dropped keys).

    An hpt resume state (``hpt_state``) holds the backbone under ``model`` as ``backbone.*``."""
    if "hpt_state" in obj and isinstance(obj.get("model"), Mapping):
        inner = {k[len("backbone."):]: v for k, v in obj["model"].items() if str(k).startswith("backbone.")}
        obj = inner
    if family == "vit":
        options = _vit_options(meta)
        if num_heads is not None:
            options["num_heads"] = num_heads
        heads = options.pop("num_heads", None)
        interp = options.pop("pos_interp", "auto")
        model, layout, dropped = build_vit_from_state(obj, num_heads=heads, interp=interp, where=where)
        return model, layout, dropped
    if family == "convnext":
        convnext, layout, dropped = convnext_from_state_dict(obj, where=where)
        return convnext, layout, dropped
    raise HptError(f"internal error: no loader for the {family} family")
