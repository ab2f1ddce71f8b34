"""ConvNeXt / ConvNeXt-V2 checkpoint key layouts: detection, conversion to timm's keys, architecture inference
and strict loading into :class:`hpt.models.convnext.ConvNeXt`.

Layouts (the names :func:`convnext_to_timm_layout` returns):

* ``"timm"``: ``timm.models.convnext.ConvNeXt`` keys (``stem.0``, ``stages.{i}.blocks.{j}.conv_dw``, ...,
  ``head.norm``); the classifier ``head.fc.*`` is set aside.
* ``"official-v1"``: facebookresearch/ConvNeXt (``downsample_layers.{i}.{0,1}``, ``stages.{i}.{j}.dwconv``,
  ``.norm``, ``.pwconv1``, ``.pwconv2``, ``.gamma``, final ``norm``, classifier ``head``); released files wrap the
  weights in ``{"model": ...}``.
* ``"official-v2"``: facebookresearch/ConvNeXt-V2, as V1 but with ``.grn.gamma`` / ``.grn.beta`` of shape
  (1, 1, 1, C) (timm: ``.mlp.grn.weight`` / ``.mlp.grn.bias`` of shape (C,)) and no ``gamma``. Its FCMAE
  pre-training files have no final ``norm``: load them with ``allow_missing_head_norm=True``.

The renaming is the one of timm's ``convnext.checkpoint_filter_fn``. The official code's ``downsample_layers.0``
is the stem; a 2x2 official stem therefore has no timm equivalent (timm adds a stage-0 downsample after a 2x2
stem), and :func:`infer_convnext_spec` says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from hpt.errors import HptError
from hpt.models.convnext import (
    KERNEL_SIZE,
    MLP_RATIO,
    ConvNeXt,
    ConvNeXtSpec,
    convnext_from_spec,
    stage0_downsamples,
)
from hpt.models.strict import key_differences

CONVNEXT_LAYOUTS = ("timm", "official-v1", "official-v2")
HEAD_NORM_KEYS = ("head.norm.weight", "head.norm.bias")
_WRAPPERS = ("model", "state_dict", "module")
_SHOW = 20  # keys listed per category when a message would otherwise be very long
_OFFICIAL_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.")
_OFFICIAL_DOWNSAMPLE = re.compile(r"^downsample_layers\.(\d+)\.")
_TIMM_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


def _unwrap(obj: Any, where: str) -> dict[str, Tensor]:
    """The tensor mapping inside ``obj`` (``{"model"|"state_dict"|"module": ...}`` wrappers, ``module.`` prefix)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise HptError(f"{where} holds no state dict (expected a mapping of tensor names to tensors, possibly "
                       f"under 'model' or 'state_dict'); re-save it with torch.save(model.state_dict(), path)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise HptError(f"{where} holds no tensors; re-save it with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def detect_convnext_layout(state: Mapping[str, Tensor], where: str = "the checkpoint") -> str:
    """``"timm"``, ``"official-v1"`` or ``"official-v2"`` for a (unwrapped) state dict; HptError otherwise."""
    timm = "stem.0.weight" in state or any(_TIMM_BLOCK.match(k) for k in state)
    official = any(k.startswith("downsample_layers.") for k in state)
    if timm and official:
        raise HptError(f"{where} mixes timm ConvNeXt keys (stem.*, stages.N.blocks.M.*) with official ones "
                       "(downsample_layers.*): re-save it from one model")
    if timm:
        return "timm"
    if official:
        return "official-v2" if any(".grn." in k for k in state) else "official-v1"
    first = ", ".join(list(state)[:5])
    raise HptError(f"{where} is not a ConvNeXt checkpoint: it has neither timm's keys (stem.0.weight, "
                   f"stages.0.blocks.0.conv_dw.weight, ...) nor the official ones (downsample_layers.0.0.weight, "
                   f"stages.0.0.dwconv.weight, ...); its first keys are: {first}")


def _official_key(key: str, value: Tensor, where: str) -> tuple[str | None, Tensor]:
    """timm's name (None: a classifier key to set aside) and value for one official key."""
    if key.startswith("head."):
        return None, value
    if key.startswith("norm."):
        return "head." + key, value
    key = key.replace("downsample_layers.0.", "stem.", 1) if key.startswith("downsample_layers.0.") else key
    key = _OFFICIAL_DOWNSAMPLE.sub(r"stages.\1.downsample.", key)
    key = _OFFICIAL_BLOCK.sub(r"stages.\1.blocks.\2.", key)
    key = key.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
    if ".grn." in key:
        if value.numel() != value.shape[-1]:
            raise HptError(f"{where}: GRN parameter {key} has shape {tuple(value.shape)}, expected (1, 1, 1, C); "
                           "the file is damaged or not a ConvNeXt-V2")
        key = key.replace(".grn.gamma", ".mlp.grn.weight").replace(".grn.beta", ".mlp.grn.bias")
        value = value.reshape(value.shape[-1])
    return key, value


def convnext_to_timm_layout(obj: Any, where: str = "the checkpoint") -> tuple[dict[str, Tensor], str, list[str]]:
    """Convert a ConvNeXt checkpoint (any layout of :data:`CONVNEXT_LAYOUTS`, wrapped or not) to timm's keys.

    Returns ``(state, layout, dropped)``: the backbone in timm's layout (no ``head.fc``), the layout found, and
    the keys set aside (the classifier), named as in the input. Unknown keys are passed through unchanged, so a
    strict load (:func:`load_convnext_state`) names them.
    """
    state = _unwrap(obj, where)
    layout = detect_convnext_layout(state, where)
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if layout == "timm":
            new_key: str | None = None if key.startswith("head.fc.") else key
        else:
            new_key, value = _official_key(key, value, where)
        if new_key is None:
            dropped.append(key)
        elif new_key in out:
            raise HptError(f"{where}: two keys map to {new_key} (one is {key}); the file mixes layouts")
        else:
            out[new_key] = value
    return out, layout, dropped


def _weight(state: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in state:
        raise HptError(f"{where} lacks {key}, which every ConvNeXt has; the file is truncated or not a ConvNeXt "
                       "(convert official checkpoints with convnext_to_timm_layout first)")
    return state[key]


def infer_convnext_spec(state: Mapping[str, Tensor], where: str = "the checkpoint") -> ConvNeXtSpec:
    """The architecture (depths, dims, patch size, V1/V2, LayerScale, conv MLP, input channels) of a state dict
    in timm's layout (the output of :func:`convnext_to_timm_layout`)."""
    stem = _weight(state, "stem.0.weight", where)
    if stem.dim() != 4 or stem.shape[-1] != stem.shape[-2]:
        raise HptError(f"{where}: stem.0.weight has shape {tuple(stem.shape)}, expected (C, in_chans, p, p)")
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _TIMM_BLOCK.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if sorted(blocks) != [0, 1, 2, 3]:
        raise HptError(f"{where} has blocks in stages {sorted(blocks)}; a ConvNeXt has blocks in stages 0, 1, 2 "
                       "and 3 (the file is truncated, or another architecture)")
    depths, dims = [], []
    for i in range(4):
        if blocks[i] != set(range(len(blocks[i]))):
            raise HptError(f"{where}: the blocks of stage {i} are numbered {sorted(blocks[i])}, not 0..N-1; "
                           "the file is damaged or was edited")
        depths.append(len(blocks[i]))
        conv_dw = _weight(state, f"stages.{i}.blocks.0.conv_dw.weight", where)
        if conv_dw.dim() != 4 or conv_dw.shape[1] != 1 or tuple(conv_dw.shape[2:]) != (KERNEL_SIZE, KERNEL_SIZE):
            raise HptError(f"{where}: stages.{i}.blocks.0.conv_dw.weight has shape {tuple(conv_dw.shape)}; only "
                           f"{KERNEL_SIZE}x{KERNEL_SIZE} depthwise convs (C, 1, 7, 7) are supported")
        dims.append(int(conv_dw.shape[0]))
    fc1 = _weight(state, "stages.0.blocks.0.mlp.fc1.weight", where)
    if fc1.shape[0] != MLP_RATIO * dims[0]:
        raise HptError(f"{where}: stages.0.blocks.0.mlp.fc1.weight has {fc1.shape[0]} outputs; only MLP ratio "
                       f"{MLP_RATIO} ({MLP_RATIO * dims[0]}) is supported")
    patch = int(stem.shape[-1])
    has_ds0 = any(k.startswith("stages.0.downsample.") for k in state)
    if has_ds0 != stage0_downsamples(patch):
        raise HptError(
            f"{where}: a {patch}x{patch} stem {'with' if has_ds0 else 'without'} a stage-0 downsample cannot be "
            "built the timm way (timm downsamples stage 0 exactly when the stem is 2x2); the checkpoint comes from "
            "a different ConvNeXt variant")
    return ConvNeXtSpec(
        depths=tuple(depths),  # type: ignore[arg-type]
        dims=tuple(dims),  # type: ignore[arg-type]
        patch_size=patch,
        v2="stages.0.blocks.0.mlp.grn.weight" in state,
        layer_scale="stages.0.blocks.0.gamma" in state,
        conv_mlp=fc1.dim() == 4,
        in_chans=int(stem.shape[1]),
    )


def check_convnext_state(
    model: ConvNeXt, state: Mapping[str, Tensor], allow_missing: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and shape-mismatched keys of ``state`` against the model (its ``head.fc`` excluded)."""
    model_state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    return key_differences(model_state, state, allow_missing)


def _listing(title: str, items: list[str], show: int) -> str:
    more = f" ... and {len(items) - show} more" if len(items) > show else ""
    return f"{len(items)} {title}: {', '.join(items[:show])}{more}"


def load_convnext_state(
    model: ConvNeXt,
    state: Mapping[str, Tensor],
    *,
    where: str = "the checkpoint",
    allow_missing_head_norm: bool = False,
) -> None:
    """Load a timm-layout backbone state strictly into ``model`` (its ``head.fc`` is left alone).

    Every key must be present with the model's shape and nothing else may be there; otherwise one HptError names
    every missing, unexpected and mis-shaped key (all of them when there are at most 40 in all, else the first 20 of
    each kind) and, when the state dict describes another architecture, both architectures.
    ``allow_missing_head_norm`` keeps the model's ``head.norm`` when the file has none (FCMAE pre-training files).
    """
    allow = HEAD_NORM_KEYS if allow_missing_head_norm else ()
    missing, unexpected, shapes = check_convnext_state(model, state, allow)
    if missing or unexpected or shapes:
        head = f"{where} does not fit the model {model.spec}"
        try:
            found: ConvNeXtSpec | None = infer_convnext_spec(state, where)
        except HptError:
            found = None
        if found is not None and found != model.spec:
            head += f": the checkpoint is a {found}; build the model from infer_convnext_spec(state)"
        elif missing and set(missing) <= set(HEAD_NORM_KEYS):
            head += ": it has no final norm (head.norm), as FCMAE pre-training files; pass allow_missing_head_norm"
        else:
            head += ": its keys differ from timm's ConvNeXt (renamed keys, or a damaged or edited file)"
        show = max(len(missing), len(unexpected), len(shapes)) if len(missing) + len(unexpected) + len(shapes) <= 40 \
            else _SHOW
        parts = [head] + [_listing(title, items, show) for title, items in
                          (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
                          if items]
        raise HptError("; ".join(parts))
    result = model.load_state_dict(dict(state), strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith("head.fc.") and k not in allow]
    leftover += list(result.unexpected_keys)
    if leftover:  # cannot happen after the checks above; never let a partial load pass silently
        raise HptError(f"internal error: loading {where} left keys unmatched: {', '.join(leftover[:_SHOW])}")


def convnext_from_state_dict(
    obj: Any,
    *,
    where: str = "the checkpoint",
    num_classes: int | None = None,
    allow_missing_head_norm: bool = False,
) -> tuple[ConvNeXt, str, list[str]]:
    """Convert ``obj`` to timm's layout, build the architecture it describes and load it strictly.

    Returns ``(model, layout, dropped)`` as :func:`convnext_to_timm_layout`; ``num_classes`` adds a fresh ``head.fc``.
    """
    state, layout, dropped = convnext_to_timm_layout(obj, where)
    spec = infer_convnext_spec(state, where)
    model = convnext_from_spec(spec, num_classes=num_classes)
    load_convnext_state(model, state, where=where, allow_missing_head_norm=allow_missing_head_norm)
    return model, layout, dropped
