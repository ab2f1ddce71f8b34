"""Markdown tables of experiment rows: every score with its interval, and differences inside noise named as such.

Two rows are told apart by the paired bootstrap interval of their difference over the same test images when both
carry per-image outcomes (top-1), else by whether their own intervals overlap (AUROC, or rows from older runs).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from hpt.eval.metrics import Interval, differs
from hpt.eval.paired import mean_outcomes, paired_difference_interval


def merge_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant, point and protocol: the mean over its pretraining seeds, with their spread (seed_std).

    The bounds are the seeds' bounds averaged; the per-image outcomes of every seed are kept, so that paired
    comparisons use the seed-averaged accuracy of each test image. Rows of one seed pass through unchanged.
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
        merged.append({**group[0], "test": float(tests.mean()), "low": float(np.mean([r["low"] for r in group])),
                       "high": float(np.mean([r["high"] for r in group])), "seeds": len(group),
                       "seed_std": float(tests.std(ddof=1)), "seed_kind": "pretraining",
                       "pretrain_seed": [r.get("pretrain_seed") for r in group],
                       "pretrain_wall_s": float(np.mean([r["pretrain_wall_s"] for r in group])),
                       "test_correct": outcomes if all(r.get("test_correct") for r in group) else None})
    return merged


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


def versus_best(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """'best', 'within noise of best' or 'below best' (separated from the best beyond noise)."""
    best = max(rows, key=lambda r: r["test"])
    if row is best:
        tied = [r for r in rows if r is not best and not separated(r, best)]
        return "best" + (f" (not separated from {', '.join(label(r) for r in tied)})" if tied else "")
    return "below best" if separated(row, best) else "within noise of best"


def label(row: dict[str, Any]) -> str:
    return row["variant"] if row.get("x") in (None, "") else f"{row['variant']} @ {row['x']}"


def metric_name(rows: list[dict[str, Any]]) -> str:
    return "top-1 accuracy (%)" if rows[0]["metric"] == "top1" else "mean AUROC (%)"


def experiment_table(rows: list[dict[str, Any]]) -> str:
    """One markdown table per protocol: variants as rows; score, interval, comparison, steps, images, time."""
    parts = []
    by_protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_protocol[row["protocol"]].append(row)
    for protocol, group in by_protocol.items():
        parts.append(f"**{protocol}** - test {metric_name(group)} [95% bootstrap interval], "
                     f"{group[0]['test_images']} test images\n")
        parts.append("| variant | score | vs best | pretraining steps | images seen | pretraining time (s) |")
        parts.append("|---|---|---|---|---|---|")
        for row in group:
            parts.append(f"| {label(row)} | {score_cell(row)} | {versus_best(row, group)} | {row['pretrain_steps']:,} "
                         f"| {row['images_seen']:,} | {row['pretrain_wall_s']:,.1f} |")
        parts.append("")
        parts.extend(pairwise_notes(group))
    return "\n".join(parts)


def pairwise_notes(rows: list[dict[str, Any]]) -> list[str]:
    """HPT and HPT-BN (or each B+S+T, or B+T) against each baseline present, in points, beyond or within noise."""
    named = {label(r): r for r in rows}
    ours = [k for k in ("HPT", "HPT-BN") if k in named] or [k for k in named if k.startswith("B+S+T")] or \
        (["B+T"] if "B+T" in named else [])
    notes, done = [], set()
    for mine in ours:
        suffix = mine[len("B+S+T"):] if mine.startswith("B+S+T") else ""
        for other in ("Base", "Target", "HPT-BN", "Random", "B", "B+T", f"B+S{suffix}"):
            if other in named and other != mine and frozenset((mine, other)) not in done:
                done.add(frozenset((mine, other)))
                notes.append(f"- {mine} - {other}: {difference_note(named[mine], named[other])}")
    return notes + ([""] if notes else [])


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


def steps_to_parity(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Convergence: the Target steps needed to reach HPT's best score, divided by HPT's steps at its best.
    When Target never reaches it, the ratio is a lower bound (Target's largest budget / HPT's steps). Also keeps
    the rows it rests on: HPT's best, the Base (HPT at step 0) and Target's last point, for the noise caveats; and
    the same ratio from HPT's first step within noise of its best (early_*), which differs where HPT plateaus."""
    hpt = sorted((r for r in rows if r["series"] == "HPT" and r["pretrain_steps"] > 0), key=lambda r: r["x"])
    target = sorted((r for r in rows if r["series"] == "Target"), key=lambda r: r["x"])
    if not hpt or not target:
        return None
    best = max(hpt, key=lambda r: r["test"])
    base = next((r for r in rows if r["series"] == "HPT" and r["pretrain_steps"] == 0), None)
    steps, reached = _target_steps_to(best["test"], target)
    early = next(r for r in hpt if r is best or not separated(r, best))
    early_steps, early_reached = _target_steps_to(early["test"], target)
    return {"hpt_best": best["test"], "hpt_steps": best["x"], "target_steps": steps, "ratio": steps / best["x"],
            "lower_bound": not reached, "best_row": best, "base_row": base, "target_rows": target,
            "early_row": early, "early_target_steps": early_steps, "early_ratio": early_steps / early["x"],
            "early_lower_bound": not early_reached}


def _target_steps_to(score: float, target: list[dict[str, Any]]) -> tuple[int, bool]:
    """Target's first steps at or above score, and whether it got there (else its largest budget)."""
    reached = [r for r in target if r["test"] >= score]
    return (reached[0]["x"], True) if reached else (target[-1]["x"], False)


def parity_sentence(parity: dict[str, Any] | None) -> str:
    if parity is None:
        return ""
    if parity["lower_bound"]:
        text = (f"Steps to parity: Target did not reach HPT's best ({pct(parity['hpt_best'])} at "
                f"{parity['hpt_steps']} steps) within {parity['target_steps']} steps: ratio > {parity['ratio']:.1f}.")
    else:
        text = (f"Steps to parity: Target needed {parity['target_steps']} steps to reach HPT's best "
                f"({pct(parity['hpt_best'])} at {parity['hpt_steps']} steps): ratio {parity['ratio']:.1f} "
                "(point estimates; see the intervals in the table).")
    return " ".join([text, *early_parity(parity), *parity_caveats(parity)])


def early_parity(parity: dict[str, Any]) -> list[str]:
    """Where HPT's best is a plateau: the ratio from HPT's first step within noise of that best."""
    early, best = parity.get("early_row"), parity.get("best_row")
    if early is None or best is None or early is best:
        return []
    start = (f"HPT was within noise of its best already at {early['x']} steps ({pct(early['test'])}); from there, "
             "Target ")
    if parity["early_lower_bound"]:
        return [start + f"did not reach that score within {parity['early_target_steps']} steps: ratio > "
                f"{parity['early_ratio']:.1f}."]
    return [start + f"needed {parity['early_target_steps']} steps to reach that score: ratio "
            f"{parity['early_ratio']:.1f}."]


def parity_caveats(parity: dict[str, Any]) -> list[str]:
    """What the ratio does not say: HPT's best against the Base it started from, and, where Target never reached it,
    Target's first point within noise of it (the ratio counted by noise rather than by point estimates)."""
    best, base = parity.get("best_row"), parity.get("base_row")
    notes = []
    if best is not None and base is not None:
        if not separated(best, base):
            notes.append(f"HPT's best is within noise of the Base before any HPT step ({score_cell(base)}): the lead "
                         "over Target is the Base's, and HPT itself added nothing measurable.")
        elif best["test"] < base["test"]:
            notes.append(f"HPT's best is below the Base before any HPT step ({score_cell(base)}), beyond noise: "
                         "HPT lowered the Base's score.")
    if parity["lower_bound"] and best is not None:
        close = next((r for r in parity.get("target_rows", []) if not separated(best, r)), None)
        if close is not None:
            notes.append(f"Target came within noise of HPT's best at {close['x']} steps ({score_cell(close)}): "
                         f"counted there, the ratio is {close['x'] / best['x']:.1f}, so the bound is not a clear lead.")
    return notes


def parity_sentences(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(protocol, steps-to-parity sentence) for each protocol of convergence rows that has both series."""
    by_protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_protocol[row["protocol"]].append(row)
    found = [(protocol, parity_sentence(steps_to_parity(group))) for protocol, group in by_protocol.items()]
    return [(protocol, sentence) for protocol, sentence in found if sentence]
