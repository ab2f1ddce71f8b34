"""Scores with their noise: cells, intervals, and whether two rows differ beyond the test images' noise.

Two rows are told apart by the paired bootstrap interval of their difference over the same test images when both
carry per-image outcomes (top-1), else by whether their own intervals overlap (AUROC, or rows from older runs).
"""

from __future__ import annotations

from typing import Any

from hpt.eval.metrics import Interval, differs
from hpt.eval.paired import mean_outcomes, paired_difference_interval


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def score_cell(row: dict[str, Any]) -> str:
    text = f"{pct(row['test'])} [{pct(row['low'])}, {pct(row['high'])}]"
    if row.get("seeds", 1) > 1:
        kind = f"{row['seed_kind']} " if row.get("seed_kind") else ""
        text += f" (sd {pct(row['seed_std'])} over {row['seeds']} {kind}seeds)"
    return text


def interval(row: dict[str, Any]) -> Interval:
    return Interval(row["low"], row["high"])


def paired_interval(a: dict[str, Any], b: dict[str, Any]) -> Interval | None:
    """The bootstrap interval of a - b resampling the same test images for both; None without per-image outcomes."""
    if not a.get("test_correct") or not b.get("test_correct") or a.get("test_images") != b.get("test_images"):
        return None
    n = int(a["test_images"])
    return paired_difference_interval(mean_outcomes(a["test_correct"], n), mean_outcomes(b["test_correct"], n))


def separated(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when a and b differ beyond the test set's noise (paired where possible, else intervals apart)."""
    paired = paired_interval(a, b)
    if paired is None:
        return differs(a["test"], interval(a), b["test"], interval(b))
    return paired.low > 0 or paired.high < 0


def difference_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'+1.2 points [+0.4, +2.0] paired over the same test images, beyond noise', or the overlap rule's words."""
    delta = 100 * (a["test"] - b["test"])
    paired = paired_interval(a, b)
    if paired is None:
        verdict = "beyond noise" if separated(a, b) else "within noise (intervals overlap)"
        return f"{delta:+.1f} points, {verdict}"
    verdict = "beyond noise" if separated(a, b) else "within noise (the interval holds 0)"
    return (f"{delta:+.1f} points [{100 * paired.low:+.2f}, {100 * paired.high:+.2f}] paired over the same test "
            f"images, {verdict}")


def label(row: dict[str, Any]) -> str:
    return row["variant"] if row.get("x") in (None, "") else f"{row['variant']} @ {row['x']}"


def metric_name(rows: list[dict[str, Any]]) -> str:
    return "top-1 accuracy (%)" if rows[0]["metric"] == "top1" else "mean AUROC (%)"
