"""Did a variant learn? Not when its embeddings collapsed, nor when it does not beat random weights beyond noise.

A win over a baseline that did not learn is no finding, so reports name such rows and claim nothing against them.
The random-weights reference is the compare experiment's Random row, or, in a convergence curve, Target's point at
step 0 (random weights of the base's architecture); experiments without one can only be told by a collapse.
"""

from __future__ import annotations

from typing import Any

from hpt.report.noise import label, separated


def random_reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The random-weights row of `rows` (one protocol's rows), or None when the experiment has none."""
    for row in rows:
        if row["variant"] == "Random" and row.get("x") in (None, ""):
            return row
    for row in rows:
        if row.get("series") == "Target" and row.get("x") == 0 and row.get("pretrain_steps", 0) == 0:
            return row
    return None


def reference_name(reference: dict[str, Any]) -> str:
    return "Random" if label(reference) == "Random" else f"random weights ({label(reference)})"


def learning_failure(row: dict[str, Any], reference: dict[str, Any] | None) -> str | None:
    """Why `row` did not learn ('embeddings collapsed at step N', 'not above Random beyond noise', ...), or None."""
    if row is reference:
        return None
    collapse = row.get("collapse")
    if collapse:
        seeds = row.get("collapsed_seeds")
        where = f" in {seeds} of {row['seeds']} pretraining seeds" if seeds and row.get("seeds", 1) > 1 else ""
        return f"embeddings collapsed at step {collapse['step']}{where}"
    if reference is None:
        return None
    if not separated(row, reference):
        return f"not above {reference_name(reference)} beyond noise"
    if row["test"] < reference["test"]:
        return f"below {reference_name(reference)} beyond noise"
    return None


def learning_failures(rows: list[dict[str, Any]]) -> dict[str, str]:
    """label -> why that row did not learn, for the rows of one protocol that did not."""
    reference = random_reference(rows)
    found = {label(r): learning_failure(r, reference) for r in rows}
    return {name: why for name, why in found.items() if why}
