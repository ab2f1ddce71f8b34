"""Layer-by-layer similarity of backbones of one architecture: linear CKA on the same images.

Measure: linear centred kernel alignment (Kornblith et al., 2019, "Similarity of Neural Network
Representations Revisited"), the standard estimator (biased HSIC): with column-centred features
X (n, p) and Y (n, q),

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic scaling of either
side (and to constant offsets, by the centring), but not to arbitrary invertible linear maps. The standard
estimator is biased upwards when there are few images for the number of channels: use a few thousand
images (the default is 2,000), and the record warns when the images are fewer than the widest layer's
channels.

Features: every spatial map (the stem's output after relu/max-pool - the max-pool is an Identity with
``small_stem`` - and each residual block's output) is globally average-pooled to one value per channel
(n, C) before CKA. This keeps memory at n x C whatever the image size, but compares channel means only: two
layers that differ only in where things are in the image can score higher than with flattened (n, C*H*W)
maps. The last row, ``pooled``, is the backbone's own output (``forward_features``); since it is the
average-pooled output of the last block, it repeats that block's row by construction.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpt.atomic import atomic_text_file
from hpt.augment import EvalTransform
from hpt.data import (
    DataSpec,
    ImageDataset,
    channel_stats,
    open_dataset,
    parse_data_spec,
)
from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.curve import save_figure, write_json
from hpt.eval.features import (
    EvalBackbone,
    check_unchanged,
    load_eval_backbone,
    snapshot,
)
from hpt.models import ResNet

log = logging.getLogger("hpt")

MEASURE = ("linear CKA (Kornblith et al. 2019), standard estimator (biased HSIC) on column-centred features: "
           "||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)")
FEATURES = ("each spatial map globally average-pooled to one value per channel (n, C), BatchNorm in eval mode; "
            "'pooled' is forward_features (= the last block's row)")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def linear_cka(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    """Linear CKA of two representations of the same n examples: x (n, p), y (n, q); computed in float64.

    NaN when either side is constant over the examples (zero variance: CKA is undefined).
    """
    a = _as_matrix(x, "x")
    b = _as_matrix(y, "y")
    if a.shape[0] != b.shape[0]:
        raise HptError(f"CKA needs the same examples on both sides: x has {a.shape[0]} rows, y has {b.shape[0]}")
    if a.shape[0] < 2:
        raise HptError(f"CKA needs at least 2 examples, got {a.shape[0]}")
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    n = a.shape[0]
    if n < max(a.shape[1], b.shape[1]):  # Gram form: n x n products are the smaller ones
        ka, kb = a @ a.T, b @ b.T
        cross, norm_a, norm_b = float(np.sum(ka * kb)), float(np.linalg.norm(ka)), float(np.linalg.norm(kb))
    else:
        cross = float(np.linalg.norm(b.T @ a) ** 2)
        norm_a, norm_b = float(np.linalg.norm(a.T @ a)), float(np.linalg.norm(b.T @ b))
    if norm_a == 0.0 or norm_b == 0.0:
        return math.nan
    return cross / (norm_a * norm_b)


def _as_matrix(x: np.ndarray | Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise HptError(f"CKA takes (examples, features) matrices; {name} has shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise HptError(f"CKA input {name} has NaN or infinite values")
    return arr


def layer_names(model: ResNet) -> list[str]:
    """The rows of a similarity table: stem, every residual block (layer1.0, ...), pooled."""
    blocks = [f"{stage}.{i}" for stage in STAGES for i in range(len(getattr(model, stage)))]
    return ["stem", *blocks, "pooled"]


def pooled_blocks(model: ResNet, x: Tensor) -> dict[str, Tensor]:
    """Average-pooled (N, C) output of the stem, of every residual block, and the pooled features."""
    out: dict[str, Tensor] = {}
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out["stem"] = torch.flatten(model.avgpool(h), 1)
    for stage in STAGES:
        for i, block in enumerate(getattr(model, stage)):
            h = block(h)
            out[f"{stage}.{i}"] = torch.flatten(model.avgpool(h), 1)
    out["pooled"] = torch.flatten(model.avgpool(h), 1)
    return out


def pooled_stages(model: ResNet, x: Tensor) -> dict[str, Tensor]:
    """Average-pooled (N, C) output of the stem and of each of layer1..layer4."""
    return {name: torch.flatten(model.avgpool(t), 1) for name, t in model.stage_outputs(x).items()}


@torch.no_grad()
def extract_pooled(model: ResNet, get_images: Callable[[np.ndarray], Tensor], n: int, transform: EvalTransform,
                   device: torch.device, layers: Callable[[ResNet, Tensor], dict[str, Tensor]],
                   batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run `layers` over n images (fetched by position), BatchNorm in eval mode; float32 (n, C) per layer.

    The backbone's weights and BatchNorm statistics are checked to be unchanged afterwards."""
    was_training = model.training
    model.eval().to(device)
    transform = transform.to(device)
    before = snapshot(model)
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, n, batch_size):
            images = get_images(np.arange(start, min(start + batch_size, n)))
            for name, value in layers(model, transform(images.to(device))).items():
                parts.setdefault(name, []).append(value.float().cpu().numpy())
    finally:
        model.train(was_training)
    check_unchanged(before, model)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def model_labels(backbones: Sequence[EvalBackbone]) -> list[str]:
    """Short unique names: the shortest path tail that tells the files apart (else numbered)."""
    paths = [Path(b.source) if b.format != "random" else Path("random") for b in backbones]
    for k in range(1, 1 + max(len(p.parts) for p in paths)):
        labels = ["/".join(p.parts[-k:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i + 1}:{p.name}" for i, p in enumerate(paths)]


def check_same_architecture(backbones: Sequence[EvalBackbone], labels: Sequence[str]) -> None:
    """HptError naming both when two backbones differ in arch, stem or width."""
    def spec(b: EvalBackbone) -> tuple[str, bool, int]:
        return b.model.arch, b.model.small_stem, b.model.width

    first = backbones[0]
    for label, other in zip(labels[1:], backbones[1:]):
        if spec(other) != spec(first):
            raise HptError(
                f"layer similarity compares backbones of one architecture, but {labels[0]} is {_describe(first)} "
                f"and {label} is {_describe(other)}")


def load_compared(checkpoints: Sequence[str], names: Sequence[str] = (), *, arch: str | None = None,
                  small_stem: bool | None = None, width: int | None = None, seed: int = 0
                  ) -> tuple[list[EvalBackbone], list[str]]:
    """The backbones `hpt analyze similarity` compares, with their labels (`names`, else model_labels; a 'random'
    one gets seed, seed+1, ... in order). HptError for fewer than two, a name count that does not match, or
    backbones of different architectures."""
    if len(checkpoints) < 2:
        raise HptError(f"similarity needs at least two checkpoints, got {len(checkpoints)}: {' '.join(checkpoints)}")
    backbones = [load_eval_backbone(c, arch=arch, small_stem=small_stem, width=width, seed=seed + i)
                 for i, c in enumerate(checkpoints)]
    if names and len(names) != len(checkpoints):
        raise HptError(f"--name was given {len(names)} times for {len(checkpoints)} checkpoints; give one per checkpoint")
    labels = list(names) or [f"random(seed={seed + i})" if b.format == "random" else label
                             for i, (b, label) in enumerate(zip(backbones, model_labels(backbones)))]
    check_same_architecture(backbones, labels)
    return backbones, labels


def _describe(b: EvalBackbone) -> str:
    return f"{b.model.arch} (small_stem={b.model.small_stem}, width={b.model.width})"


def sample_images(ds: ImageDataset, images: int, seed: int) -> np.ndarray:
    """A sorted seeded sample of up to `images` indices of the data set."""
    if images < 2:
        raise HptError(f"--images must be at least 2 (CKA compares examples), got {images}")
    if len(ds) < 2:
        raise HptError(f"{ds.spec.describe()} has {len(ds)} image(s); CKA needs at least 2")
    k = min(images, len(ds))
    return np.sort(np.random.default_rng(seed).choice(len(ds), size=k, replace=False))


def layer_similarity(backbones: Sequence[EvalBackbone], data: str | DataSpec, *, images: int = 2000,
                     seed: int = 0, image_size: int | None = None, device: str = "auto", batch_size: int = 256,
                     out_dir: Path | None = None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Linear CKA of every pair of backbones at every layer, on one seeded sample of the data's images.

    The data spec's split (train unless ``?split=`` says otherwise) is sampled; images are normalised with
    that split's channel statistics (as ``hpt eval`` does with the train split). `labels` name the backbones
    (default: :func:`model_labels`). Returns the record; with `out_dir`, writes similarity.json,
    similarity.csv and similarity.png there.
    """
    started = time.time()
    if len(backbones) < 2:
        raise HptError(f"layer similarity needs at least two backbones, got {len(backbones)}")
    labels = list(labels) if labels is not None else model_labels(backbones)
    if len(labels) != len(backbones) or len(set(labels)) != len(labels):
        raise HptError(f"need one distinct label per backbone, got {labels}")
    check_same_architecture(backbones, labels)
    ds = open_dataset(parse_data_spec(data))
    indices = sample_images(ds, images, seed)
    mean, std = channel_stats(ds)
    transform = EvalTransform(mean, std, image_size or ds.image_size[0])
    dev = resolve_device(device)
    names = layer_names(backbones[0].model)

    def get_images(positions: np.ndarray) -> Tensor:
        return ds.get_batch(indices[positions])[0]

    feats = []
    for label, backbone in zip(labels, backbones):
        log.info("similarity: encoding %d images with %s", len(indices), label)
        feats.append(extract_pooled(backbone.model, get_images, len(indices), transform, dev, pooled_blocks,
                                    batch_size))
    pairs = list(itertools.combinations(range(len(backbones)), 2))
    rows = []
    for name in names:
        values = [linear_cka(feats[a][name], feats[b][name]) for a, b in pairs]
        rows.append({"layer": name, "channels": int(feats[0][name].shape[1]),
                     "cka": [None if math.isnan(v) else v for v in values]})
    widest = max(row["channels"] for row in rows)
    warnings = []
    if len(indices) < widest:
        warnings.append(f"{len(indices)} images for layers of up to {widest} channels: the standard linear CKA is "
                        "biased upwards with fewer images than channels; use more images (--images)")
    undefined = [row["layer"] for row in rows if any(v is None for v in row["cka"])]
    if undefined:
        warnings.append(f"CKA undefined (a constant representation) at: {', '.join(undefined)}")
    record: dict[str, Any] = {
        "kind": "analysis",
        "analysis": "similarity",
        "measure": MEASURE,
        "features": FEATURES,
        "data": ds.spec.describe(),
        "images": int(len(indices)),
        "sample_seed": seed,
        "image_size": transform.image_size,
        "models": [{"label": label, **b.record()} for label, b in zip(labels, backbones)],
        "pairs": [{"a": labels[a], "b": labels[b], "index": [a, b], "label": f"{a + 1}~{b + 1}"} for a, b in pairs],
        "layers": rows,
        "warnings": warnings,
        "wall_time_s": round(time.time() - started, 2),
    }
    if out_dir is not None:
        write_similarity(Path(out_dir), record)
    return record


def write_similarity(out: Path, record: dict[str, Any]) -> None:
    """similarity.csv (one row per layer, one column per pair), similarity.png (heatmap), similarity.json."""
    out.mkdir(parents=True, exist_ok=True)
    pair_names = [f"{p['a']} vs {p['b']}" for p in record["pairs"]]
    with atomic_text_file(out / "similarity.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "channels", *pair_names])
        for row in record["layers"]:
            writer.writerow([row["layer"], row["channels"], *("" if v is None else f"{v:.6f}" for v in row["cka"])])
    plot_similarity(out / "similarity.png", record)
    record["files"] = {"json": "similarity.json", "csv": "similarity.csv", "png": "similarity.png"}
    write_json(out / "similarity.json", record)


def plot_similarity(path: Path, record: dict[str, Any]) -> None:
    """Heatmap: rows are layers, columns are pairs of backbones, colour and number are the CKA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, pairs = record["layers"], record["pairs"]
    matrix = np.array([[np.nan if v is None else v for v in row["cka"]] for row in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(3.2 + 1.1 * len(pairs), 1.6 + 0.32 * len(rows)), dpi=120)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if not np.isnan(value) and value > 0.6 else "white")
    ax.set_yticks(range(len(rows)), [row["layer"] for row in rows], fontsize=7)
    ax.set_xticks(range(len(pairs)), [f"{p['a']}\nvs\n{p['b']}" for p in pairs], fontsize=7)
    ax.set_xlabel("pair of backbones", fontsize=8)
    ax.set_title(f"linear CKA, layer by layer, on {record['images']} images", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.08, pad=0.04)
    save_figure(fig, path)


def similarity_table(record: dict[str, Any]) -> str:
    """The printed table: one line per layer; one CKA column per pair (numbered models, legend above)."""
    lines = [f"[{i + 1}] {m['label']}: {_describe_record(m)}" for i, m in enumerate(record["models"])]
    lines.append(f"linear CKA on {record['images']} images of {record['data']} (channel-averaged feature maps)")
    header = f"{'layer':<10} {'channels':>8}" + "".join(f" {p['label']:>8}" for p in record["pairs"])
    lines += [header, "-" * len(header)]
    for row in record["layers"]:
        cells = "".join(f" {'n/a' if v is None else f'{v:.4f}':>8}" for v in row["cka"])
        lines.append(f"{row['layer']:<10} {row['channels']:>8}{cells}")
    lines += [f"warning: {w}" for w in record["warnings"]]
    return "\n".join(lines)


def _describe_record(model: dict[str, Any]) -> str:
    return f"{model['arch']} (small_stem={model['small_stem']}, width={model['width']}), {model['format']}"
