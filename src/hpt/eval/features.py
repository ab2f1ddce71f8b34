"""The frozen backbone of an evaluation: loading, pooled features (cached on disk), and the unchanged-weights check."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.atomic import atomic_write
from hpt.augment import EvalTransform, model_channels
from hpt.data import ImageDataset, channel_stats
from hpt.device import cache_root
from hpt.errors import HptError
from hpt.eval.splits import LabelledSplits, SplitView
from hpt.models import ResNet, build_backbone, weights_sha256
from hpt.models.families import arch_of, describe, image_size_problem
from hpt.models.inference import inference_copy
from hpt.models.stem import adapt_stem

log = logging.getLogger("hpt")
FEATURES_VERSION = 2  # bump when extraction changes, to invalidate cached features


@dataclass
class EvalBackbone:
    """A loaded backbone and what identifies it in results."""

    model: torch.nn.Module  # a ResNet, ViT or ConvNeXt (hpt.models.families)
    source: str
    format: str
    weights_sha256: str

    def record(self) -> dict[str, Any]:
        shape: dict[str, Any] = {"arch": arch_of(self.model)}
        if isinstance(self.model, ResNet):
            shape.update(width=self.model.width, small_stem=self.model.small_stem)
        else:
            shape["architecture"] = describe(self.model)
        return {"path": self.source, "format": self.format, **shape, "weights_sha256": self.weights_sha256}


def load_eval_backbone(source: str, *, arch: str | None = None, small_stem: bool | None = None,
                       width: int | None = None, seed: int = 0) -> EvalBackbone:
    """Anything `hpt pretrain --base` accepts; 'random' is seeded so that its results can be reproduced."""
    torch.manual_seed(seed)
    model, info = build_backbone(source, arch=arch, small_stem=small_stem, width=width)
    fmt = "random" if info is None else info.format
    return EvalBackbone(model, source if info is None else info.path, fmt, weights_sha256(model))


def eval_transform(splits: LabelledSplits, image_size: int | None,
                   model: torch.nn.Module | None = None) -> EvalTransform:
    """Resize (when asked) and normalise with the training split's own channel statistics. With `model`: an
    HptError, before any work, when images of that size do not fit it (a ViT needs a multiple of its patch size,
    a ConvNeXt a minimum size; hpt.models.families.image_size_problem). A 3-channel `model` is adapted in place to
    data of other channel counts."""
    size = image_size or splits.train.dataset.image_size[0]
    problem = image_size_problem(model, size) if model is not None else ""
    if problem:
        given = "--image-size (eval.image_size)" if image_size else "the data's own size; set --image-size"
        raise HptError(f"cannot evaluate at {size} px ({given}): {problem}")
    mean, std = channel_stats(splits.train.dataset)
    if model is not None:  # N-channel data: the stem of a 3-channel backbone is adapted (hpt.models.stem)
        adapt_stem(model, model_channels(splits.train.dataset.num_channels), where="the evaluated backbone")
    return EvalTransform(mean, std, size)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BatchNorm running statistics included)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def check_unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Fail loudly if a frozen backbone's weights or BatchNorm statistics moved (moco main_lincls's sanity check)."""
    after = model.state_dict()
    changed = [key for key, value in before.items() if not torch.equal(value, after[key].detach().to(value.device))]
    if changed:
        shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
        raise HptError(f"the frozen backbone changed during evaluation ({len(changed)} tensors: {shown}); "
                       "this is a bug in the evaluation, please report it")


@torch.no_grad()
def extract_features(model: torch.nn.Module, view: SplitView, transform: EvalTransform, device: torch.device,
                     batch_size: int = 256) -> np.ndarray:
    """Globally pooled features (N, D) float32 of a split, BatchNorm in eval mode, in the view's order.

    Runs an inference copy of the model (a ResNet's BatchNorm folded into its convolutions, channels_last for
    convolutional families: hpt.models.inference): the model itself is left untouched."""
    fused = inference_copy(model.to(device))
    transform = transform.to(device)
    out = []
    for start in range(0, len(view), batch_size):
        images, _ = view.get_batch(np.arange(start, min(start + batch_size, len(view))))
        x = transform(images.to(device)).contiguous(memory_format=torch.channels_last)
        out.append(fused(x).float().cpu())
    if not out:
        return np.zeros((0, model.feature_dim), np.float32)
    return torch.cat(out).numpy()


def features_cache_dir() -> Path:
    """$HPT_CACHE/features, or ~/.cache/hpt/features."""
    return cache_root() / "features"


def _cache_key(backbone: EvalBackbone, ds: ImageDataset, transform: EvalTransform) -> str:
    text = json.dumps([FEATURES_VERSION, backbone.weights_sha256, ds.spec.describe(), ds.fingerprint(), len(ds),
                       transform.image_size, transform.mean.flatten().tolist(), transform.std.flatten().tolist()])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def split_features(backbone: EvalBackbone, splits: LabelledSplits, transform: EvalTransform,
                   device: torch.device, cache: bool = True) -> dict[str, np.ndarray]:
    """Features of train, val and test. Each underlying data set is encoded once and cached by weights + data."""
    by_dataset: dict[int, np.ndarray] = {}
    result = {}
    for name in ("train", "val", "test"):
        view: SplitView = getattr(splits, name)
        ds = view.dataset
        if id(ds) not in by_dataset:
            by_dataset[id(ds)] = _dataset_features(backbone, ds, transform, device, cache)
        result[name] = by_dataset[id(ds)][view.indices]
    return result


def _dataset_features(backbone: EvalBackbone, ds: ImageDataset, transform: EvalTransform, device: torch.device,
                      cache: bool) -> np.ndarray:
    path = features_cache_dir() / f"{_cache_key(backbone, ds, transform)}.npy"
    if cache and path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("ignoring an unreadable feature cache file %s", path)
    before = snapshot(backbone.model)
    features = extract_features(backbone.model, SplitView(ds, np.arange(len(ds))), transform, device)
    check_unchanged(before, backbone.model)
    if cache:
        atomic_write(path, lambda handle: np.save(handle, features))
    return features
