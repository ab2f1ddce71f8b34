"""Figures in the spirit of the paper, from experiment rows (matplotlib, PNG): bars and lines with 95% intervals,
and linear separability curves."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from hpt.eval.curve import save_figure
from hpt.report.noise import label, metric_name
from hpt.report.sweep import chosen_value


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    save_figure(fig, path)
    return path


def bars(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One bar per variant with its 95% interval as an error bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.8), dpi=120)
    values = [100 * r["test"] for r in rows]
    errors = [[100 * (r["test"] - r["low"]) for r in rows], [100 * (r["high"] - r["test"]) for r in rows]]
    ax.bar(range(len(rows)), values, yerr=errors, capsize=4, color=[f"C{i % 10}" for i in range(len(rows))])
    ax.set_xticks(range(len(rows)), [label(r) for r in rows], rotation=20, ha="right", fontsize=8)
    low = min(100 * r["low"] for r in rows)
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(100 * r["high"] for r in rows) + 3))
    ax.set_ylabel(metric_name(rows))
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def lines(rows: list[dict[str, Any]], path: Path, title: str, xlabel: str, log_x: bool = False) -> Path:
    """One line per series against the experiment's axis, with 95% intervals as bands."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        series[row["series"]].append(row)
    categorical = any(isinstance(r["x"], str) for r in rows)
    order = list(dict.fromkeys(r["x"] for r in rows))
    for i, (name, group) in enumerate(series.items()):
        xs = [order.index(r["x"]) if categorical else r["x"] for r in group]
        ax.plot(xs, [100 * r["test"] for r in group], marker="o", color=f"C{i}", label=name)
        ax.fill_between(xs, [100 * r["low"] for r in group], [100 * r["high"] for r in group], color=f"C{i}",
                        alpha=0.15)
    if categorical:
        ax.set_xticks(range(len(order)), [str(x) for x in order], rotation=15, fontsize=8)
    elif log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_name(rows))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def sweep_values(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """The val score of every swept value (the chosen one ringed), and the Base's val score as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    values = [r for r in rows if r["series"] == "HPT"]
    scores = [100 * r["val"] if r.get("val") is not None else float("nan") for r in values]
    ax.plot(range(len(values)), scores, marker="o", color="C0", label="HPT (val)")
    chosen = chosen_value(values)
    if chosen is not None and chosen.get("val") is not None:
        at = next(i for i, r in enumerate(values) if r is chosen)
        ax.plot([at], [100 * chosen["val"]], marker="o", markersize=12, fillstyle="none", color="C3",
                linestyle="none", label="chosen on val")
    base = next((r for r in rows if r["series"] == "Base" and r.get("val") is not None), None)
    if base is not None:
        ax.axhline(100 * base["val"], color="C1", linestyle="--", label="Base (val)")
    ax.set_xticks(range(len(values)), [str(r["x"]) for r in values], fontsize=8)
    ax.set_xlabel((values[0].get("setting") or "value") if values else "value")
    ax.set_ylabel(f"val {metric_name(rows)}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def separability_curves(curves: dict[str, Path], path: Path, title: str, metric: str) -> Path | None:
    """Test score against linear-classifier step, one line per variant (from each evaluation's curve.csv)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    drawn = 0
    for i, (name, csv_path) in enumerate(curves.items()):
        if not csv_path.exists():
            continue
        with csv_path.open(newline="") as handle:
            points = list(csv.DictReader(handle))
        points = [p for p in points if p["seed"] == points[0]["seed"]]  # the first seed's curve
        ax.plot([int(p["step"]) for p in points], [100 * float(p["test"]) for p in points], color=f"C{i % 10}",
                label=name)
        drawn += 1
    if not drawn:
        _plt().close(fig)
        return None
    ax.set_xlabel("linear classifier step")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "top1" else "mean AUROC (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
