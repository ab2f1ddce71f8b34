"""Markdown tables of experiment rows: every score with its interval, and differences inside noise named as such.

The best row is chosen on val scores (hpt.report.selection) and its test score is read; rows that did not learn
(hpt.report.learned) are marked, and no lead over them is claimed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from hpt.report.learned import learning_failures
from hpt.report.noise import (  # the cells and noise rules, also imported from here by reports and scripts
    difference_note,
    interval,
    label,
    metric_name,
    paired_interval,
    pct,
    score_cell,
    separated,
)
from hpt.report.selection import chosen_on

__all__ = ["difference_note", "experiment_table", "guard_notes", "interval", "label", "merge_seeds", "metric_name",
           "paired_interval", "pairwise_notes", "pct", "score_cell", "separated", "verdict_cell", "versus_best"]


def merge_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant, point and protocol: the mean over its pretraining seeds, with their spread (seed_std).

    The bounds are the seeds' bounds averaged; the per-image outcomes of every seed are kept, so that paired
    comparisons use the seed-averaged accuracy of each test image. The val score is the seeds' mean (None when a
    seed's row has none); a collapse in any seed marks the merged row (with how many seeds collapsed), and every
    seed's guard is kept (`guards`). Rows of one seed pass through unchanged.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], str(row.get("x")), row["protocol"])].append(row)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        tests = np.array([r["test"] for r in group])
        outcomes = [o for r in group for o in (r.get("test_correct") or [])]
        vals = [r.get("val") for r in group]
        collapsed = [r["collapse"] for r in group if r.get("collapse")]
        merged.append({**group[0], "test": float(tests.mean()), "low": float(np.mean([r["low"] for r in group])),
                       "high": float(np.mean([r["high"] for r in group])), "seeds": len(group),
                       "seed_std": float(tests.std(ddof=1)), "seed_kind": "pretraining",
                       "pretrain_seed": [r.get("pretrain_seed") for r in group],
                       "pretrain_wall_s": float(np.mean([r["pretrain_wall_s"] for r in group])),
                       "test_correct": outcomes if all(r.get("test_correct") for r in group) else None,
                       "val": float(np.mean(vals)) if all(v is not None for v in vals) else None,
                       "collapse": collapsed[0] if collapsed else None, "collapsed_seeds": len(collapsed),
                       "guards": [(r.get("pretrain_seed"), r["guard"]) for r in group if r.get("guard")]})
    return merged


def versus_best(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Against the best row chosen on val (on test for older rows): 'best on val', 'within noise of it', or
    'below it beyond noise' / 'above it beyond noise' (a higher test score is possible where val and test disagree)."""
    on = chosen_on(rows)
    best = max(rows, key=lambda r: r[on])
    if row is best:
        tied = [r for r in rows if r is not best and not separated(r, best)]
        return f"best on {on}" + (f" (not separated from {', '.join(label(r) for r in tied)})" if tied else "")
    if not separated(row, best):
        return "within noise of it"
    return "above it beyond noise" if row["test"] > best["test"] else "below it beyond noise"


def verdict_cell(row: dict[str, Any], rows: list[dict[str, Any]], failures: dict[str, str]) -> str:
    """The 'vs best' cell: 'did not learn (...)' for a row that did not learn, else versus_best."""
    verdict = versus_best(row, rows)
    why = failures.get(label(row))
    if why is None:
        return verdict
    return f"did not learn ({why})" + (f"; {verdict.split(' (')[0]}" if verdict.startswith("best on") else "")


def experiment_table(rows: list[dict[str, Any]]) -> str:
    """One markdown table per protocol: variants as rows; score, interval, comparison, steps, images, time."""
    parts = []
    by_protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_protocol[row["protocol"]].append(row)
    for protocol, group in by_protocol.items():
        failures = learning_failures(group)
        parts.append(f"**{protocol}** - test {metric_name(group)} [95% bootstrap interval], "
                     f"{group[0]['test_images']} test images; the best row is chosen on {chosen_on(group)}\n")
        parts.append("| variant | score | vs best | pretraining steps | images seen | pretraining time (s) |")
        parts.append("|---|---|---|---|---|---|")
        for row in group:
            parts.append(f"| {label(row)} | {score_cell(row)} | {verdict_cell(row, group, failures)} "
                         f"| {row['pretrain_steps']:,} | {row['images_seen']:,} | {row['pretrain_wall_s']:,.1f} |")
        parts.append("")
        parts.extend(pairwise_notes(group))
    parts.extend(guard_notes(rows))
    return "\n".join(parts)


def pairwise_notes(rows: list[dict[str, Any]]) -> list[str]:
    """HPT and HPT-BN (HPT-norm for a backbone without BatchNorm; or each B+S+T, or B+T) against each baseline
    present, in points, beyond or within noise; a baseline that did not learn is not compared, and one of ours that
    did not learn is said to."""
    named = {label(r): r for r in rows}
    failures = learning_failures(rows)
    ours = [k for k in ("HPT", "HPT-BN", "HPT-norm") if k in named] or [k for k in named if k.startswith("B+S+T")] or \
        (["B+T"] if "B+T" in named else [])
    notes, done = [], set()
    for mine in ours:
        if mine in failures:
            notes.append(f"- {mine} did not learn ({failures[mine]}).")
        suffix = mine[len("B+S+T"):] if mine.startswith("B+S+T") else ""
        for other in ("Base", "Target", "HPT-BN", "HPT-norm", "Random", "B", "B+T", f"B+S{suffix}"):
            if other in named and other != mine and frozenset((mine, other)) not in done:
                done.add(frozenset((mine, other)))
                if other in failures:
                    notes.append(f"- {mine} - {other}: not compared: {other} did not learn ({failures[other]})")
                else:
                    notes.append(f"- {mine} - {other}: {difference_note(named[mine], named[other])}")
    return notes + ([""] if notes else [])


def guard_notes(rows: list[dict[str, Any]]) -> list[str]:
    """'- HPT: the guard kept step 300 (knn 0.831): <reason>' for every variant whose stage's guard kept a step
    (once per variant, whatever the protocols; per pretraining seed where seeds were merged)."""
    notes: dict[str, str] = {}
    for row in rows:
        entries = row.get("guards") or ([(None, row["guard"])] if row.get("guard") else [])
        for seed, guard in entries:
            name = label(row) if seed is None else f"{label(row)} (pretraining seed {seed})"
            value = guard.get("kept_value")
            kept = f" ({guard.get('signal', 'signal')} {value:.3f})" if isinstance(value, (int, float)) else ""
            reason = f": {guard['reason']}" if guard.get("reason") else ""
            notes.setdefault(name, f"- {name}: the guard kept step {guard.get('kept_step')}{kept}{reason}")
    return list(notes.values()) + ([""] if notes else [])
