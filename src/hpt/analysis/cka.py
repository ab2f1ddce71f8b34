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

Features: each layer is read as one vector per image (:mod:`hpt.analysis.layers` says which rows each
family has): spatial maps are globally average-pooled to one value per channel (n, C), a ViT's tokens are
averaged over the patch tokens. This keeps memory at n x C whatever the image size, but compares channel means
only: two layers that differ only in where things are in the image can score higher than with flattened
(n, C*H*W) maps. The last row, ``pooled``, is the backbone's own output (``forward_features``).

This module compares backbones of one architecture row by row (:func:`layer_similarity`);
:mod:`hpt.analysis.cross` compares every layer of one backbone with every layer of another.
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

from hpt.analysis.layers import features_note, layer_names, pooled_blocks, pooled_stages
from hpt.atomic import atomic_text_file
from hpt.augment import EvalTransform
from hpt.data import (
    DataSpec,
    ImageDataset,
    channel_stats,
    open_dataset,
)
from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.curve import save_figure, write_json
from hpt.eval.features import (
    EvalBackbone,
    check_unchanged,
    snapshot,
)
from hpt.models.families import describe

log = logging.getLogger("hpt")

MEASURE = ("linear CKA (Kornblith et al. 2019), standard estimator (biased HSIC) on column-centred features: "
           "||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)")
#: Re-exported from :mod:`hpt.analysis.layers`, where the rows of each family are defined.
__all__ = ["cka_matrix", "layer_names", "layer_similarity", "linear_cka", "pooled_blocks", "pooled_stages"]


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


def _normalised_gram(x: np.ndarray | Tensor, name: str) -> np.ndarray | None:
    """The centred Gram matrix Xc Xc^T (n, n) divided by its Frobenius norm; None for a constant representation."""
    a = _as_matrix(x, name)
    a = a - a.mean(axis=0, keepdims=True)
    gram = a @ a.T
    norm = float(np.linalg.norm(gram))
    return None if norm == 0.0 else gram / norm


def cka_matrix(xs: Sequence[np.ndarray | Tensor], ys: Sequence[np.ndarray | Tensor]) -> np.ndarray:
    """Linear CKA of every x in `xs` with every y in `ys` (all over the same n examples): (len(xs), len(ys)).

    Equal to :func:`linear_cka` entry by entry (``||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>_F``), but each side's
    centred Gram matrix is formed once: memory is n x n x 8 bytes per layer of the shorter list (32 MB per layer
    at 2,000 images). NaN where either side is constant."""
    rows = {int(v.shape[0]) for v in (*xs, *ys)}
    if len(rows) > 1:
        raise HptError(f"CKA needs the same examples on every side, got matrices of {sorted(rows)} rows")
    if rows and min(rows) < 2:
        raise HptError(f"CKA needs at least 2 examples, got {min(rows)}")
    if len(xs) < len(ys):
        return cka_matrix(ys, xs).T
    grams = [_normalised_gram(y, f"y[{j}]") for j, y in enumerate(ys)]
    out = np.full((len(xs), len(ys)), np.nan)
    for i, x in enumerate(xs):
        gx = _normalised_gram(x, f"x[{i}]")
        if gx is None:
            continue
        for j, gy in enumerate(grams):
            if gy is not None:
                out[i, j] = float(np.vdot(gx, gy))
    return out


@torch.no_grad()
def extract_pooled(model: torch.nn.Module, get_images: Callable[[np.ndarray], Tensor], n: int, transform: EvalTransform,
                   device: torch.device, layers: Callable[[Any, Tensor], dict[str, Tensor]],
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
    """HptError naming both when two backbones differ in architecture (:func:`describe`: family, arch, stem,
    width, ViT or ConvNeXt shape)."""
    first = backbones[0]
    for label, other in zip(labels[1:], backbones[1:]):
        if describe(other.model) != describe(first.model):
            raise HptError(
                f"layer similarity compares backbones of one architecture, but {labels[0]} is "
                f"{describe(first.model)} and {label} is {describe(other.model)}; two backbones of different "
                "architectures get the full layer-by-layer matrix (hpt.analysis.cross)")


def check_labels(backbones: Sequence[EvalBackbone], labels: Sequence[str] | None) -> list[str]:
    """`labels`, or :func:`model_labels` when None; HptError unless there is one distinct label per backbone."""
    labels = list(labels) if labels is not None else model_labels(backbones)
    if len(labels) != len(backbones) or len(set(labels)) != len(labels):
        raise HptError(f"need one distinct label per backbone, got {labels}")
    return labels


def sample_images(ds: ImageDataset, images: int, seed: int) -> np.ndarray:
    """A sorted seeded sample of up to `images` indices of the data set."""
    if images < 2:
        raise HptError(f"--images must be at least 2 (CKA compares examples), got {images}")
    if len(ds) < 2:
        raise HptError(f"{ds.spec.describe()} has {len(ds)} image(s); CKA needs at least 2")
    k = min(images, len(ds))
    return np.sort(np.random.default_rng(seed).choice(len(ds), size=k, replace=False))


def encode_sample(backbones: Sequence[EvalBackbone], labels: Sequence[str], data: str | DataSpec, *,
                  images: int, seed: int, image_size: int | None, device: str, batch_size: int
                  ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Every backbone's similarity rows (:func:`pooled_blocks`) over one seeded sample of the data's images.

    The data spec's split (train unless ``?split=`` says otherwise) is sampled; images are normalised with
    that split's channel statistics (as ``hpt eval`` does with the train split). Returns what the record says
    about the sample (data, images, sample_seed, image_size) and, per backbone, row name -> (n, C) float32."""
    ds = open_dataset(data)
    indices = sample_images(ds, images, seed)
    mean, std = channel_stats(ds)
    transform = EvalTransform(mean, std, image_size or ds.image_size[0])
    dev = resolve_device(device)

    def get_images(positions: np.ndarray) -> Tensor:
        return ds.get_batch(indices[positions])[0]

    feats = []
    for label, backbone in zip(labels, backbones):
        log.info("similarity: encoding %d images with %s", len(indices), label)
        feats.append(extract_pooled(backbone.model, get_images, len(indices), transform, dev, pooled_blocks,
                                    batch_size))
    sample = {"data": ds.spec.describe(), "images": len(indices), "sample_seed": seed,
              "image_size": transform.image_size}
    return sample, feats


def bias_warning(images: int, channels: Sequence[int]) -> list[str]:
    """The warning when the images are fewer than the widest layer's channels (linear CKA is biased upwards)."""
    widest = max(channels)
    if images >= widest:
        return []
    message = (f"{images} images for layers of up to {widest} channels: the standard linear CKA is biased upwards "
               "with fewer images than channels; use more images (--images)")
    return [message]


def layer_similarity(backbones: Sequence[EvalBackbone], data: str | DataSpec, *, images: int = 2000,
                     seed: int = 0, image_size: int | None = None, device: str = "auto", batch_size: int = 256,
                     out_dir: Path | None = None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Linear CKA of every pair of backbones of one architecture at every layer, on one seeded sample of images.

    Sampling and normalisation as :func:`encode_sample`. `labels` name the backbones (default:
    :func:`model_labels`). Returns the record; with `out_dir`, writes similarity.json, similarity.csv and
    similarity.png there. Backbones of different architectures: :func:`hpt.analysis.cross.cross_similarity`.
    """
    started = time.time()
    if len(backbones) < 2:
        raise HptError(f"layer similarity needs at least two backbones, got {len(backbones)}")
    labels = check_labels(backbones, labels)
    check_same_architecture(backbones, labels)
    sample, feats = encode_sample(backbones, labels, data, images=images, seed=seed, image_size=image_size,
                                  device=device, batch_size=batch_size)
    names = layer_names(backbones[0].model)
    pairs = list(itertools.combinations(range(len(backbones)), 2))
    rows = []
    for name in names:
        values = [linear_cka(feats[a][name], feats[b][name]) for a, b in pairs]
        rows.append({"layer": name, "channels": int(feats[0][name].shape[1]),
                     "cka": [None if math.isnan(v) else v for v in values]})
    warnings = bias_warning(sample["images"], [row["channels"] for row in rows])
    undefined = [row["layer"] for row in rows if any(v is None for v in row["cka"])]
    if undefined:
        warnings.append(f"CKA undefined (a constant representation) at: {', '.join(undefined)}")
    record: dict[str, Any] = {
        "kind": "analysis",
        "analysis": "similarity",
        "mode": "layers",
        "measure": MEASURE,
        "features": features_note(backbones[0].model),
        **sample,
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
    lines = [f"[{i + 1}] {m['label']}: {describe_record(m)}" for i, m in enumerate(record["models"])]
    lines.append(f"linear CKA on {record['images']} images of {record['data']} (per-layer means, see features)")
    width = max(10, *(len(row["layer"]) for row in record["layers"]))
    header = f"{'layer':<{width}} {'channels':>8}" + "".join(f" {p['label']:>8}" for p in record["pairs"])
    lines += [header, "-" * len(header)]
    for row in record["layers"]:
        cells = "".join(f" {'n/a' if v is None else f'{v:.4f}':>8}" for v in row["cka"])
        lines.append(f"{row['layer']:<{width}} {row['channels']:>8}{cells}")
    lines += [f"warning: {w}" for w in record["warnings"]]
    return "\n".join(lines)


def describe_record(model: dict[str, Any]) -> str:
    """A backbone's architecture and format, from its record (ResNet fields, else the ``architecture`` line)."""
    if "architecture" in model:
        return f"{model['architecture']}, {model['format']}"
    return f"{model['arch']} (small_stem={model['small_stem']}, width={model['width']}), {model['format']}"
