"""ViT checkpoint key layouts -> timm's layout; architecture inference; strict loading; export.

Layouts understood by :func:`to_timm_layout` (the name it returns in brackets):

* ``"timm"``: ``timm`` ViTs (and MAE fine-tuned checkpoints, which are timm's layout); ``head.*`` dropped.
* ``"dinov2"``: the official facebookresearch/dinov2 files (``dinov2_vit*14[_reg4]_pretrain.pth``) and its
  training backbones: ``mask_token`` dropped; chunked blocks ``blocks.{chunk}.{i}.`` -> ``blocks.{i}.``;
  with registers, converted as timm's ``_convert_dinov2`` does to a ``no_embed_class`` model (``register_tokens``
  -> ``reg_token``, ``cls_token + pos_embed[:, 0]`` -> ``cls_token``, ``pos_embed[:, 1:]`` -> ``pos_embed``),
  which is exactly DINOv2's forward. Their pos_embed is for 518 px / patch 14 = a 37x37 grid (+1 class token).
* ``"mae"``: facebookresearch/mae pre-training checkpoints (under ``model``): ``decoder_*``, ``mask_token`` (and
  any ``head.*``) dropped; the encoder keys are timm's. MAE fine-tuned with global pooling has ``fc_norm``
  instead of ``norm``, which :func:`infer_vit_config` reads as ``global_pool="avg"``.
* ``"torchvision"``: ``torchvision.models.vision_transformer.VisionTransformer`` (``conv_proj``,
  ``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.*``, ``encoder.ln``); the MLP
  as ``mlp.0``/``mlp.3`` or the legacy ``mlp.linear_1``/``mlp.linear_2``; ``heads.*`` dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor

from hpt.errors import HptError
from hpt.models.strict import key_differences
from hpt.models.vit import VisionTransformer, VitConfig
from hpt.models.vit_posembed import pos_grid, pos_prefix_tokens, resample_pos_embed

VIT_LAYOUTS = ("timm", "dinov2", "mae", "torchvision")
_WRAPPERS = ("model", "state_dict", "module", "teacher")
_ANCHORS = ("patch_embed.proj.weight", "conv_proj.weight")
_SHOW = 20  # keys listed per category in error messages
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
_TV_BLOCK = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.*)$")
_TV_NAMES = {
    "ln_1.": "norm1.", "ln_2.": "norm2.", "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias", "self_attention.out_proj.": "attn.proj.",
    "mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2.", "mlp.linear_1.": "mlp.fc1.", "mlp.linear_2.": "mlp.fc2.",
}
_TV_TOP = {"conv_proj.weight": "patch_embed.proj.weight", "conv_proj.bias": "patch_embed.proj.bias",
           "class_token": "cls_token", "encoder.pos_embedding": "pos_embed",
           "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias"}


def _tensors(obj: Mapping[Any, Any]) -> dict[str, Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _find_backbone(obj: Mapping[str, Any], where: str) -> tuple[dict[str, Tensor], str, list[str]]:
    """The tensors of the (possibly wrapped) mapping that hold a ViT, with their key prefix; keys set aside."""
    levels: list[Mapping[str, Any]] = [obj]
    for _ in range(4):
        inner = next((levels[-1][k] for k in _WRAPPERS if isinstance(levels[-1].get(k), Mapping)), None)
        if inner is None:
            break
        levels.append(inner)
    for level in levels:
        state = _tensors(level)
        prefixes = sorted({k[: -len(a)] for k in state for a in _ANCHORS if k.endswith(a)}, key=len)
        if not prefixes:
            continue
        if len(prefixes) > 1:
            raise HptError(f"{where} holds several ViT backbones (key prefixes {', '.join(map(repr, prefixes))}); "
                           "extract the one you want into its own state dict")
        prefix = prefixes[0]
        kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return kept, prefix, [k for k in state if not k.startswith(prefix)]
    sample = ", ".join(list(_tensors(levels[-1]))[:8]) or "(no tensors)"
    raise HptError(f"no ViT found in {where}: no key ends with 'patch_embed.proj.weight' (timm, DINOv2, MAE) or "
                   f"'conv_proj.weight' (torchvision) (first keys: {sample}); pass a ViT checkpoint")


def detect_vit_layout(state: Mapping[str, Tensor]) -> str:
    """The layout (one of :data:`VIT_LAYOUTS`) of an unwrapped, prefix-free ViT state dict."""
    if "conv_proj.weight" in state and "encoder.pos_embedding" in state:
        return "torchvision"
    if any(k.startswith("decoder_") for k in state):
        return "mae"
    mask = state.get("mask_token")
    if "register_tokens" in state or (mask is not None and mask.dim() == 2) \
            or any(_CHUNKED.match(k) for k in state):
        return "dinov2"
    if mask is not None:
        return "mae"
    if "patch_embed.proj.weight" in state and "pos_embed" in state:
        return "timm"
    raise HptError(f"not a ViT layout hpt knows (timm, DINOv2, MAE, torchvision): first keys "
                   f"{', '.join(list(state)[:8])}")


def _from_torchvision(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        m = _TV_BLOCK.match(key)
        if key in _TV_TOP:
            out[_TV_TOP[key]] = value
        elif m:
            rest = m.group(2)
            old = next((o for o in _TV_NAMES if rest.startswith(o)), None)
            out[f"blocks.{m.group(1)}." + (_TV_NAMES[old] + rest[len(old):] if old else rest)] = value
        elif key.startswith("heads."):
            dropped.append(key)
        else:
            out[key] = value  # unknown: left for the strict load to name
    return out, dropped


def _from_dinov2(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    if any(".mlp.w12." in k for k in state):
        raise HptError("this DINOv2 checkpoint uses a SwiGLU feed-forward (mlp.w12/w3, ViT-g/14); hpt's ViT has "
                       "the GELU MLP of ViT-S/B/L only: use dinov2_vits14, _vitb14 or _vitl14 weights")
    out: dict[str, Tensor] = {}
    dropped = [k for k in ("mask_token",) if k in state]
    for key, value in state.items():
        if key == "mask_token":
            continue
        m = _CHUNKED.match(key)
        out[f"blocks.{m.group(2)}.{m.group(3)}" if m else key] = value
    if "register_tokens" in out:  # timm's conversion to no_embed_class: neither cls nor registers have positions
        pos = out.pop("pos_embed")
        out = {"cls_token": out.pop("cls_token") + pos[:, :1], "reg_token": out.pop("register_tokens"),
               "pos_embed": pos[:, 1:], **out}
    return out, dropped


def to_timm_layout(obj: Mapping[str, Any], where: str = "the checkpoint") -> tuple[dict[str, Tensor], str, list[str]]:
    """Convert a loaded ViT checkpoint (a state dict, possibly wrapped in ``model``/``state_dict``/``module``/
    ``teacher`` and prefixed, e.g. ``module.`` or ``backbone.``) to timm's key layout.

    Returns (timm-layout backbone state dict without ``head.*``, layout name, keys dropped), the dropped keys
    being the file's own names (with their prefix): heads, ``mask_token``, MAE's decoder, keys of other modules.
    """
    if not isinstance(obj, Mapping):
        raise HptError(f"{where} holds a {type(obj).__name__}, not a state dict")
    state, prefix, elsewhere = _find_backbone(obj, where)
    layout = detect_vit_layout(state)
    if layout == "torchvision":
        out, dropped = _from_torchvision(state)
    elif layout == "dinov2":
        out, dropped = _from_dinov2(state)
    else:
        drop = ("head.", "decoder_", "mask_token") if layout == "mae" else ("head.",)
        dropped = [k for k in state if k.startswith(drop)]
        out = {k: v for k, v in state.items() if not k.startswith(drop)}
    return out, layout, elsewhere + [prefix + k for k in dropped]


def infer_vit_config(state: Mapping[str, Tensor], *, num_heads: int | None = None, **overrides: Any) -> VitConfig:
    """The :class:`VitConfig` a timm-layout state dict describes (embed dim, depth, patch size, registers,
    LayerScale, qkv bias, MLP ratio, pooling, ``no_embed_class``, img size = grid x patch).

    ``num_heads`` cannot be read from the weights: it defaults to ``embed_dim // 64`` (every published ViT), at
    least 1. LayerScale is read as present or not (``init_values=1.0`` when present; the value only matters for
    initialisation). ``overrides`` replace any field afterwards (e.g. ``img_size``, ``pos_interp``).
    """
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        shape = None if proj is None else tuple(proj.shape)
        raise HptError(f"not a ViT in timm's layout: patch_embed.proj.weight is {shape}, expected (dim, 3, p, p)")
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    if depth == 0 or "blocks.0.mlp.fc1.weight" not in state:
        raise HptError("not a ViT in timm's layout: no blocks.{i}.mlp.fc1 weights")
    reg = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    prefix = pos_prefix_tokens(state)
    grid = pos_grid(state, prefix)[0]
    pool = "avg" if "fc_norm.weight" in state and "norm.weight" not in state else "token"
    head = state.get("head.weight")
    cfg = VitConfig(
        embed_dim=dim, depth=depth, num_heads=num_heads if num_heads is not None else max(1, dim // 64),
        patch_size=patch, img_size=grid * patch, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state, reg_tokens=reg,
        init_values=1.0 if "blocks.0.ls1.gamma" in state else None, global_pool=pool,
        no_embed_class=prefix == 0, num_classes=int(head.shape[0]) if head is not None else None,
        in_chans=int(proj.shape[1]),
    )
    return replace(cfg, **overrides) if overrides else cfg


def _named(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {', '.join(items[:_SHOW])}{more}"


def load_vit_state(model: VisionTransformer, state: Mapping[str, Tensor], where: str = "the checkpoint") -> None:
    """Load a timm-layout backbone state dict into ``model`` strictly (the model's ``head.*`` is left alone).

    Every missing, unexpected and shape-mismatched key is named in one HptError (the first 20 of each kind).
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected, shapes = key_differences(own, state)
    if missing or unexpected or shapes:
        cfg = model.config
        parts = [(f"{where} does not fit the ViT ({cfg.embed_dim}-dim, depth {cfg.depth}, "
                  f"patch {cfg.patch_size}, {cfg.img_size} px)")]
        parts += [_named(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                    ("shape mismatches", shapes)) if items]
        fix = "build the model from the checkpoint (build_vit_from_state) or pass matching options"
        if any(s.startswith("pos_embed ") for s in shapes):
            fix = ("the image size differs: resample the checkpoint with resample_pos_embed(state, grid) first, "
                   "or " + fix)
        raise HptError("; ".join(parts) + "; " + fix)
    result = model.load_state_dict(dict(state), strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith("head.")] + list(result.unexpected_keys)
    if leftover:  # cannot happen after the checks above; never let a partial load pass silently
        raise HptError(f"internal error: loading {where} left keys unmatched: {', '.join(leftover[:_SHOW])}")


def build_vit_from_state(
    obj: Mapping[str, Any],
    *,
    num_heads: int | None = None,
    img_size: int | None = None,
    interp: str = "auto",
    where: str = "the checkpoint",
    **overrides: Any,
) -> tuple[VisionTransformer, str, list[str]]:
    """Convert a loaded checkpoint, build the ViT it describes and load it strictly.

    ``img_size`` other than the checkpoint's resamples ``pos_embed`` to the new grid. ``interp="auto"`` uses the
    layout's own numerics (DINOv2's for DINOv2 files - also for forward passes at other sizes -, torchvision's
    ``interpolate_embeddings`` for torchvision files, timm's otherwise); or name ``"timm"``/``"dinov2"``/
    ``"torchvision"``. Returns (model, layout, dropped keys).
    """
    state, layout, dropped = to_timm_layout(obj, where)
    method = {"dinov2": "dinov2", "torchvision": "torchvision"}.get(layout, "timm") if interp == "auto" else interp
    cfg = infer_vit_config(state, num_heads=num_heads, pos_interp="dinov2" if method == "dinov2" else "timm",
                           **overrides)
    if img_size is not None and img_size != cfg.img_size:
        if img_size % cfg.patch_size:
            raise HptError(f"img_size {img_size} is not a multiple of the checkpoint's patch size {cfg.patch_size}")
        state = resample_pos_embed(state, img_size // cfg.patch_size, method=method)
        cfg = replace(cfg, img_size=img_size)
    model = VisionTransformer(cfg)
    load_vit_state(model, state, where)
    return model, layout, dropped


def export_timm_state(model: VisionTransformer) -> dict[str, Tensor]:
    """The backbone as the state dict ``timm.models.vision_transformer.VisionTransformer(**model.config.
    timm_kwargs())`` (``num_classes=0``) loads strictly: timm's keys in timm's order, no ``head.*``, CPU tensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if not k.startswith("head.")}


__all__ = ["VIT_LAYOUTS", "build_vit_from_state", "detect_vit_layout", "export_timm_state", "infer_vit_config",
           "load_vit_state", "to_timm_layout"]
