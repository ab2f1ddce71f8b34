"""A classifier's score curve (val and test against steps), best-val selection, and its CSV / PNG / JSON outputs."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpt.atomic import atomic_text_file, atomic_write, atomic_write_text


@dataclass
class CurvePoint:
    step: int
    lr: float
    val: float
    test: float


@dataclass
class Curve:
    """Scores of one classifier run; `best()` is the first point with the highest val score (test is never used)."""

    seed: int
    points: list[CurvePoint] = field(default_factory=list)

    def add(self, step: int, lr: float, val: float, test: float) -> None:
        self.points.append(CurvePoint(step, lr, val, test))

    def best(self) -> CurvePoint:
        if not self.points:
            raise ValueError("the curve has no points")
        vals = np.array([p.val for p in self.points])
        return self.points[int(np.argmax(vals))]  # argmax: the earliest of equal val scores


def write_curves_csv(path: Path, curves: list[Curve]) -> None:
    with atomic_text_file(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "step", "lr", "val", "test"])
        for curve in curves:
            for p in curve.points:
                writer.writerow([curve.seed, p.step, f"{p.lr:.6g}", f"{p.val:.6f}", f"{p.test:.6f}"])


def plot_curves(path: Path, curves: list[Curve], *, metric: str, title: str) -> None:
    """Val (dashed) and test (solid) score against classifier step, one colour per seed, best-val marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "top-1 accuracy (%)" if metric == "top1" else "mean AUROC (%)"
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for i, curve in enumerate(curves):
        colour = f"C{i % 10}"
        steps = [p.step for p in curve.points]
        ax.plot(steps, [100 * p.test for p in curve.points], color=colour, label=f"test (seed {curve.seed})")
        ax.plot(steps, [100 * p.val for p in curve.points], color=colour, linestyle="--", alpha=0.7,
                label=f"val (seed {curve.seed})")
        best = curve.best()
        ax.plot([best.step], [100 * best.test], marker="o", color=colour)
    ax.set_xlabel("classifier step")
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write as PNG (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write a results record atomically (a reader never sees half a file)."""
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
