"""Which layer rows a backbone has for the layer-wise analyses, and how to read them as (N, C) matrices.

Two row sets per family, both dispatched on :func:`hpt.models.families.family_of`:

* similarity rows (:func:`layer_names`, :func:`pooled_blocks`): every residual block, for linear CKA;
* depth rows (:func:`depth_names`, :func:`pooled_stages`): a handful of depths, for the linear probe by depth.

Every row is one vector per image: spatial maps are globally average-pooled to one value per channel, and a
ViT's tokens are averaged over the patch tokens. The rows per family:

* ResNet: ``stem`` (after relu/max-pool), every residual block ``layer1.0`` ..., ``pooled``; depths ``stem``,
  ``layer1`` .. ``layer4``.
* ViT: ``embed`` (patch tokens plus position embedding, before the first block), ``block0`` ..
  ``block{N-1}`` (the residual stream after each block, before the final norm), ``pooled``
  (``forward_features``: the class token after ``norm``, or the normed mean patch token); depths ``embed``, the
  blocks at a quarter, half, three quarters and all of the depth, and ``pooled``.
* ConvNeXt: ``stem``, every block ``stages.{i}.blocks.{j}``, ``pooled`` (``forward_features``: the average-pooled
  last stage through ``head.norm``); depths ``stem``, ``stage0`` .. ``stage3``, ``pooled``.

The ``pooled`` row is the backbone's own output (what ``hpt eval`` probes); for a ResNet it repeats the last
block's row by construction, for the other two it adds the final LayerNorm (and, for a ViT with class-token
pooling, reads the class token rather than the patch tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hpt.errors import HptError
from hpt.models import ResNet
from hpt.models.convnext import ConvNeXt
from hpt.models.families import family_of
from hpt.models.vit import VisionTransformer

STAGES = ("layer1", "layer2", "layer3", "layer4")
#: The depth rows of a ResNet (every ResNet has the same five).
RESNET_DEPTHS = ("stem", *STAGES)

Rows = Callable[[nn.Module, Tensor], dict[str, Tensor]]


def _flat(model: ResNet | ConvNeXt, h: Tensor) -> Tensor:
    return torch.flatten(model.avgpool(h), 1)


def _patch_mean(model: VisionTransformer, tokens: Tensor) -> Tensor:
    return tokens[:, model.num_prefix_tokens:].mean(dim=1)


# ------------------------------------------------------------------ similarity rows (every block)


def layer_names(model: nn.Module) -> list[str]:
    """The rows of a similarity table, input side first, ending with ``pooled`` (see the module docstring)."""
    family = family_of(model)
    if family == "vit":
        assert isinstance(model, VisionTransformer)
        return ["embed", *(f"block{i}" for i in range(len(model.blocks))), "pooled"]
    if family == "convnext":
        assert isinstance(model, ConvNeXt)
        return ["stem", *model.block_names(), "pooled"]
    blocks = [f"{stage}.{i}" for stage in STAGES for i in range(len(getattr(model, stage)))]
    return ["stem", *blocks, "pooled"]


def pooled_blocks(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """(N, C) per row of :func:`layer_names`, in its order, from one forward pass."""
    family = family_of(model)
    if family == "vit":
        assert isinstance(model, VisionTransformer)
        return vit_blocks(model, x)
    if family == "convnext":
        assert isinstance(model, ConvNeXt)
        return convnext_blocks(model, x)
    assert isinstance(model, ResNet)
    return resnet_blocks(model, x)


def resnet_blocks(model: ResNet, x: Tensor) -> dict[str, Tensor]:
    """Average-pooled (N, C) output of the stem, of every residual block, and the pooled features."""
    out: dict[str, Tensor] = {}
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out["stem"] = _flat(model, h)
    for stage in STAGES:
        for i, block in enumerate(getattr(model, stage)):
            h = block(h)
            out[f"{stage}.{i}"] = _flat(model, h)
    out["pooled"] = _flat(model, h)
    return out


def vit_blocks(model: VisionTransformer, x: Tensor) -> dict[str, Tensor]:
    """(N, D) rows of a ViT: ``embed``, ``block0`` .. ``block{N-1}``, each the mean over the *patch* tokens, and
    ``pooled`` (``forward_features``).

    The class token and any registers are excluded from the means: at ``embed`` the class token is the same
    vector for every image (it would only shift the mean by a constant), and afterwards it is a summary read out
    by the head rather than a place in the image, so averaging the patch tokens is the ViT's counterpart of a
    CNN's global average pool (Raghu et al. 2021 likewise compare spatial tokens to CNN positions). The
    ``pooled`` row is still what the backbone outputs, class token included when it pools by token."""
    out: dict[str, Tensor] = {}
    h = model.embed(x)
    out["embed"] = _patch_mean(model, h)
    for i, block in enumerate(model.blocks):
        h = block(h)
        out[f"block{i}"] = _patch_mean(model, h)
    out["pooled"] = model.pool(model.norm(h))
    return out


def convnext_blocks(model: ConvNeXt, x: Tensor) -> dict[str, Tensor]:
    """Average-pooled (N, C) output of the stem and of every block (each stage's downsample is folded into its
    first block's row), and ``pooled`` (``forward_features``, after ``head.norm``)."""
    out: dict[str, Tensor] = {}
    h = model.stem(x)
    out["stem"] = _flat(model, h)
    for i, stage in enumerate(model.stages):
        h = stage.downsample(h)
        for j, block in enumerate(stage.blocks):
            h = block(h)
            out[f"stages.{i}.blocks.{j}"] = _flat(model, h)
    out["pooled"] = model.head.norm(_flat(model, h))
    return out


# ------------------------------------------------------------------ depth rows (a handful of depths)


def vit_depth_blocks(depth: int) -> list[int]:
    """The block indices a ViT's depth probe reads: at a quarter, half, three quarters and all of the depth
    (``ceil(depth * k / 4) - 1``; fewer when the ViT has fewer than four blocks). 12 blocks: 2, 5, 8, 11."""
    if depth < 1:
        raise HptError(f"a ViT needs at least one block, got {depth}")
    return sorted({-(-depth * k // 4) - 1 for k in range(1, 5)})


def depth_names(model: nn.Module) -> list[str]:
    """The rows of a depth probe, input side first, for the model's family (see the module docstring)."""
    family = family_of(model)
    if family == "vit":
        assert isinstance(model, VisionTransformer)
        return ["embed", *(f"block{i}" for i in vit_depth_blocks(len(model.blocks))), "pooled"]
    if family == "convnext":
        assert isinstance(model, ConvNeXt)
        return ["stem", *(f"stage{i}" for i in range(len(model.stages))), "pooled"]
    return list(RESNET_DEPTHS)


def pooled_stages(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """(N, C) per row of :func:`depth_names`: average-pooled stage maps (ResNet, ConvNeXt), patch-token means
    (ViT, whose ``stage_outputs`` are already pooled and must not be pooled again) and the pooled features."""
    family = family_of(model)
    if family == "vit":
        assert isinstance(model, VisionTransformer)
        rows = vit_blocks(model, x)
        return {name: rows[name] for name in depth_names(model)}
    if family == "convnext":
        assert isinstance(model, ConvNeXt)
        out = {name: _flat(model, t) for name, t in model.stage_outputs(x).items()}
        out["pooled"] = model.head.norm(out[f"stage{len(model.stages) - 1}"])
        return out
    assert isinstance(model, ResNet)
    return {name: _flat(model, t) for name, t in model.stage_outputs(x).items()}


# ------------------------------------------------------------------ what the records say


def features_note(model: nn.Module) -> str:
    """How the similarity rows of this family are read (for the record's ``features``)."""
    family = family_of(model)
    if family == "vit":
        return ("ViT: mean over the patch tokens (class token and registers excluded) after the embedding and each "
                "block, before the final norm; 'pooled' is forward_features")
    if family == "convnext":
        return ("ConvNeXt: each block's map globally average-pooled to one value per channel (n, C); 'pooled' is "
                "forward_features (after head.norm)")
    return ("ResNet: each spatial map globally average-pooled to one value per channel (n, C), BatchNorm in eval "
            "mode; 'pooled' is forward_features (= the last block's row)")


def depth_note(model: nn.Module) -> str:
    """How the depth rows of this family are read (for the depth record's settings)."""
    family = family_of(model)
    if family == "vit":
        return ("mean over the patch tokens after the embedding and at quarter depths (before the final norm); "
                "'pooled' is forward_features")
    if family == "convnext":
        return "stem and stage outputs globally average-pooled per channel; 'pooled' is forward_features"
    return "stage output globally average-pooled per channel, BatchNorm in eval mode"
