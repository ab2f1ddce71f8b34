"""Linear CKA of every layer of one backbone with every layer of another, and which comparison
``hpt analyze similarity`` makes.

The matrix ``CKA(layer i of A, layer j of B)`` over one seeded sample of images is the comparison of Raghu et
al. (2021), "Do Vision Transformers See Like Convolutional Neural Networks?" (their Figure 1 for a ViT against a
ResNet): it works across architectures because CKA compares the images' similarity structure, not the
channels, so layers of different widths and kinds can be compared. Rows are the layers of A and columns the
layers of B, as :func:`hpt.analysis.layers.layer_names` lists them (every block, input side first); the
measure, the features and their biases are those of :mod:`hpt.analysis.cka`.

``hpt analyze similarity`` compares backbones of one architecture row by row (:func:`hpt.analysis.cka.
layer_similarity`), and two backbones of different architectures (or two of one with ``--all-pairs``) with
the full matrix (:func:`cross_similarity`); more than two of different architectures is refused.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpt.analysis.cka import (
    MEASURE,
    bias_warning,
    check_labels,
    cka_matrix,
    describe_record,
    encode_sample,
    layer_similarity,
    model_labels,
    similarity_table,
)
from hpt.analysis.layers import features_note, layer_names
from hpt.atomic import atomic_text_file
from hpt.data import DataSpec
from hpt.errors import HptError
from hpt.eval.curve import save_figure, write_json
from hpt.eval.features import EvalBackbone, load_eval_backbone
from hpt.models.families import describe

#: Annotate each cell of the heatmap with its value when neither side has more layers than this.
ANNOTATE_UP_TO = 16


def comparison_mode(backbones: Sequence[EvalBackbone], labels: Sequence[str], all_pairs: bool = False) -> str:
    """``"layers"`` (one architecture, row by row) or ``"matrix"`` (every layer of one against every layer of
    the other: two backbones of different architectures, or two of one with `all_pairs`).

    HptError for more than two backbones when their architectures differ, or `all_pairs` with other than two."""
    kinds = [describe(b.model) for b in backbones]
    if len(set(kinds)) > 1 and len(backbones) > 2:
        listed = "; ".join(f"{label} is {kind}" for label, kind in zip(labels, kinds))
        raise HptError(f"similarity of backbones of different architectures compares exactly two (every layer of "
                       f"one against every layer of the other), got {len(backbones)}: {listed}; give two at a time, "
                       "or backbones of one architecture")
    if all_pairs and len(backbones) != 2:
        raise HptError(f"--all-pairs compares every layer of one backbone with every layer of another: give exactly "
                       f"two backbones, got {len(backbones)}")
    return "matrix" if all_pairs or len(set(kinds)) > 1 else "layers"


def load_compared(checkpoints: Sequence[str], names: Sequence[str] = (), *, arch: str | None = None,
                  small_stem: bool | None = None, width: int | None = None, seed: int = 0, all_pairs: bool = False
                  ) -> tuple[list[EvalBackbone], list[str]]:
    """The backbones `hpt analyze similarity` compares, with their labels (`names`, else model_labels; a 'random'
    one gets seed, seed+1, ... in order). HptError for fewer than two, a name count that does not match, or a
    set that :func:`comparison_mode` refuses."""
    if len(checkpoints) < 2:
        raise HptError(f"similarity needs at least two checkpoints, got {len(checkpoints)}: {' '.join(checkpoints)}")
    backbones = [load_eval_backbone(c, arch=arch, small_stem=small_stem, width=width, seed=seed + i)
                 for i, c in enumerate(checkpoints)]
    if names and len(names) != len(checkpoints):
        raise HptError(f"--name was given {len(names)} times for {len(checkpoints)} checkpoints; give one per checkpoint")
    labels = list(names) or [f"random(seed={seed + i})" if b.format == "random" else label
                             for i, (b, label) in enumerate(zip(backbones, model_labels(backbones)))]
    comparison_mode(backbones, labels, all_pairs)
    return backbones, labels


def similarity(backbones: Sequence[EvalBackbone], data: str | DataSpec, *, all_pairs: bool = False,
               labels: Sequence[str] | None = None, **options: Any) -> dict[str, Any]:
    """The row-by-row table or the full matrix, as :func:`comparison_mode` decides; `options` are those of
    :func:`cross_similarity` (images, seed, image_size, device, batch_size, out_dir)."""
    labels = check_labels(backbones, labels)
    if comparison_mode(backbones, labels, all_pairs) == "matrix":
        return cross_similarity(backbones[0], backbones[1], data, labels=labels, **options)
    return layer_similarity(backbones, data, labels=labels, **options)


def similarity_report(record: dict[str, Any]) -> str:
    """The printed text of either kind of similarity record."""
    return cross_table(record) if record.get("mode") == "matrix" else similarity_table(record)


def best_matches(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """For each row (layer of A), the column (layer of B) of highest CKA; None where the whole row is undefined."""
    out = []
    for i, name in enumerate(rows):
        values = matrix[i]
        if np.isnan(values).all():
            out.append({"layer": name, "match": None, "cka": None})
            continue
        j = int(np.nanargmax(values))
        out.append({"layer": name, "match": columns[j], "cka": float(values[j])})
    return out


def cross_similarity(a: EvalBackbone, b: EvalBackbone, data: str | DataSpec, *, images: int = 2000, seed: int = 0,
                     image_size: int | None = None, device: str = "auto", batch_size: int = 256,
                     out_dir: Path | None = None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Linear CKA of every layer of `a` (rows) with every layer of `b` (columns) on one seeded sample of images.

    Any two backbones, of one architecture or not (sampling and normalisation as
    :func:`hpt.analysis.cka.encode_sample`). Returns the record (``cka`` is the matrix, None where undefined;
    ``best_match`` names, for each layer of `a`, the layer of `b` most similar to it); with `out_dir`, writes
    similarity.json, similarity.csv and similarity.png there."""
    started = time.time()
    labels = check_labels([a, b], labels)
    sample, (feats_a, feats_b) = encode_sample([a, b], labels, data, images=images, seed=seed,
                                               image_size=image_size, device=device, batch_size=batch_size)
    rows, columns = layer_names(a.model), layer_names(b.model)
    matrix = cka_matrix([feats_a[n] for n in rows], [feats_b[n] for n in columns])
    channels_a = [int(feats_a[n].shape[1]) for n in rows]
    channels_b = [int(feats_b[n].shape[1]) for n in columns]
    warnings = bias_warning(sample["images"], channels_a + channels_b)
    undefined = [rows[i] for i in range(len(rows)) if np.isnan(matrix[i]).all()] + [
        columns[j] for j in range(len(columns)) if np.isnan(matrix[:, j]).all()]
    if undefined:
        warnings.append(f"CKA undefined (a constant representation) at: {', '.join(undefined)}")
    matches = best_matches(matrix, rows, columns)
    record: dict[str, Any] = {
        "kind": "analysis",
        "analysis": "similarity",
        "mode": "matrix",
        "measure": MEASURE,
        "features": {labels[0]: features_note(a.model), labels[1]: features_note(b.model)},
        **sample,
        "models": [{"label": label, **m.record()} for label, m in zip(labels, (a, b))],
        "rows": {"model": labels[0], "layers": rows, "channels": channels_a},
        "columns": {"model": labels[1], "layers": columns, "channels": channels_b},
        "cka": [[None if math.isnan(v) else float(v) for v in line] for line in matrix],
        "best_match": matches,
        "summary": summary_line(labels, matches),
        "warnings": warnings,
        "wall_time_s": round(time.time() - started, 2),
    }
    if out_dir is not None:
        write_cross(Path(out_dir), record)
    return record


def summary_line(labels: Sequence[str], matches: Sequence[dict[str, Any]]) -> str:
    """One line: for each layer of A, the best-matching layer of B and its CKA."""
    pairs = ", ".join(f"{m['layer']}->{m['match']} {m['cka']:.2f}" if m["match"] is not None else f"{m['layer']}->n/a"
                      for m in matches)
    return f"best match in {labels[1]} for each layer of {labels[0]}: {pairs}"


def _matrix(record: dict[str, Any]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in line] for line in record["cka"]], dtype=float)


def write_cross(out: Path, record: dict[str, Any]) -> None:
    """similarity.csv (a row per layer of A, a column per layer of B), similarity.png (heatmap), similarity.json."""
    out.mkdir(parents=True, exist_ok=True)
    rows, columns = record["rows"], record["columns"]
    with atomic_text_file(out / "similarity.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"{rows['model']} \\ {columns['model']}", *columns["layers"]])
        for name, line in zip(rows["layers"], record["cka"]):
            writer.writerow([name, *("" if v is None else f"{v:.6f}" for v in line)])
    plot_cross(out / "similarity.png", record)
    record["files"] = {"json": "similarity.json", "csv": "similarity.csv", "png": "similarity.png"}
    write_json(out / "similarity.json", record)


def _ticks(names: Sequence[str], most: int = 24) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(len(names) / most))
    positions = list(range(0, len(names), step))
    if positions[-1] != len(names) - 1:
        positions.append(len(names) - 1)
    return positions, [names[i] for i in positions]


def plot_cross(path: Path, record: dict[str, Any]) -> None:
    """Heatmap in the style of Raghu et al. (2021), Figure 1: layers of A up the y axis, of B along the x axis
    (input side at the origin), colour the CKA; each cell's value is written when the matrix is small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = _matrix(record)
    rows, columns = record["rows"], record["columns"]
    n_rows, n_cols = matrix.shape
    fig, ax = plt.subplots(figsize=(min(14.0, 3.0 + 0.36 * n_cols), min(12.0, 2.2 + 0.3 * n_rows)), dpi=120)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="magma", origin="lower", aspect="auto")
    if max(n_rows, n_cols) <= ANNOTATE_UP_TO:
        for i in range(n_rows):
            for j in range(n_cols):
                value = matrix[i, j]
                ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if not np.isnan(value) and value > 0.6 else "white")
    ax.set_yticks(*_ticks(rows["layers"]), fontsize=7)
    ax.set_xticks(*_ticks(columns["layers"]), fontsize=7, rotation=60, ha="right")
    ax.set_ylabel(f"{rows['model']} layers", fontsize=8)
    ax.set_xlabel(f"{columns['model']} layers", fontsize=8)
    ax.set_title(f"linear CKA, every layer against every layer, on {record['images']} images", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03)
    save_figure(fig, path)


def cross_table(record: dict[str, Any]) -> str:
    """The printed matrix (columns numbered, with a legend), the best match of each row, and any warnings."""
    rows, columns = record["rows"], record["columns"]
    lines = [f"[{i + 1}] {m['label']}: {describe_record(m)}" for i, m in enumerate(record["models"])]
    lines.append(f"linear CKA on {record['images']} images of {record['data']}: every layer of [1] (rows) against "
                 "every layer of [2] (columns)")
    lines.append("columns: " + ", ".join(f"{j}={name}" for j, name in enumerate(columns["layers"])))
    width = max(10, *(len(name) for name in rows["layers"]))
    header = f"{'layer':<{width}}" + "".join(f" {j:>5}" for j in range(len(columns["layers"])))
    lines += [header, "-" * len(header)]
    for name, line in zip(rows["layers"], record["cka"]):
        lines.append(f"{name:<{width}}" + "".join(f" {'n/a' if v is None else f'{v:.2f}':>5}" for v in line))
    lines.append(record["summary"])
    lines += [f"warning: {w}" for w in record["warnings"]]
    return "\n".join(lines)
