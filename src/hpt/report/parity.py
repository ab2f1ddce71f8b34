"""Convergence: the steps-to-parity ratio - Target's steps to reach HPT's best score over HPT's steps there.

HPT's best point is chosen on val (on test for rows written before rows kept a val score); whether Target reaches
it compares the test scores of those fixed points. Target points that did not learn (hpt.report.learned) never
count as reaching it, and no ratio is given when Target's largest budget did not learn, or when HPT's best did not.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hpt.report.learned import learning_failure, random_reference
from hpt.report.noise import pct, score_cell, separated
from hpt.report.selection import chosen_on


def steps_to_parity(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Target steps needed to reach HPT's best score, divided by HPT's steps at its best (chosen on val).
    When Target never reaches it, the ratio is a lower bound (Target's largest budget / HPT's steps). Also keeps
    the rows it rests on: HPT's best, the Base (HPT at step 0) and Target's points that learned, for the noise
    caveats; and the same ratio from HPT's first step within noise of its best (early_*), which differs where HPT
    plateaus. `ratio` is None, with `hpt_failure` or `target_failure` saying why, when HPT's best or Target's
    largest budget did not learn."""
    hpt = sorted((r for r in rows if r["series"] == "HPT" and r["pretrain_steps"] > 0), key=lambda r: r["x"])
    trained = sorted((r for r in rows if r["series"] == "Target" and r["pretrain_steps"] > 0), key=lambda r: r["x"])
    if not hpt or not trained:
        return None
    on = chosen_on(rows)
    reference = random_reference(rows)
    best = max(hpt, key=lambda r: r[on])
    base = next((r for r in rows if r["series"] == "HPT" and r["pretrain_steps"] == 0), None)
    learned = [r for r in trained if learning_failure(r, reference) is None]
    parity: dict[str, Any] = {"hpt_best": best["test"], "hpt_steps": best["x"], "best_row": best, "base_row": base,
                              "target_rows": learned, "chosen_on": on, "ratio": None}
    hpt_failure = learning_failure(best, reference)
    target_failure = learning_failure(trained[-1], reference)
    if hpt_failure or target_failure:
        return {**parity, "hpt_failure": hpt_failure, "target_failure": target_failure,
                "target_last": trained[-1], "target_best": max(trained, key=lambda r: r[on])}
    steps, reached = _target_steps_to(best["test"], learned, trained[-1]["x"])
    early = next(r for r in hpt if r is best or not separated(r, best))
    early_steps, early_reached = _target_steps_to(early["test"], learned, trained[-1]["x"])
    return {**parity, "target_steps": steps, "ratio": steps / best["x"], "lower_bound": not reached,
            "early_row": early, "early_target_steps": early_steps, "early_ratio": early_steps / early["x"],
            "early_lower_bound": not early_reached}


def _target_steps_to(score: float, learned: list[dict[str, Any]], largest: int) -> tuple[int, bool]:
    """Target's first steps (among its points that learned) at or above score, and whether it got there (else its
    largest budget)."""
    reached = [r for r in learned if r["test"] >= score]
    return (reached[0]["x"], True) if reached else (largest, False)


def parity_sentence(parity: dict[str, Any] | None) -> str:
    if parity is None:
        return ""
    best = f"HPT's best{' on val' if parity.get('chosen_on') == 'val' else ''}"
    if parity["ratio"] is None:
        return _no_ratio(parity, best)
    if parity["lower_bound"]:
        text = (f"Steps to parity: Target did not reach {best} ({pct(parity['hpt_best'])} at "
                f"{parity['hpt_steps']} steps) within {parity['target_steps']} steps: ratio > {parity['ratio']:.1f}.")
    else:
        text = (f"Steps to parity: Target needed {parity['target_steps']} steps to reach {best} "
                f"({pct(parity['hpt_best'])} at {parity['hpt_steps']} steps): ratio {parity['ratio']:.1f} "
                "(point estimates; see the intervals in the table).")
    return " ".join([text, *early_parity(parity), *parity_caveats(parity)])


def _no_ratio(parity: dict[str, Any], best: str) -> str:
    """Why there is no ratio: HPT's best, or Target's largest budget, did not learn."""
    on = parity["chosen_on"]
    if parity.get("hpt_failure"):
        row = parity["best_row"]
        return (f"No steps-to-parity: HPT did not learn ({best}, {score_cell(row)} at {row['x']} steps: "
                f"{parity['hpt_failure']}).")
    last, top = parity["target_last"], parity["target_best"]
    if top is last:
        its = f"its best on {on}, {score_cell(top)} at {top['x']} steps: {parity['target_failure']}"
    else:
        its = (f"its best on {on}: {score_cell(top)} at {top['x']} steps; at {last['x']} steps: "
               f"{parity['target_failure']}")
    return " ".join([f"No steps-to-parity: Target did not learn within {last['x']} steps ({its}).",
                     *parity_caveats(parity)])


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
    Target's first point (that learned) within noise of it (the ratio counted by noise rather than by estimates)."""
    best, base = parity.get("best_row"), parity.get("base_row")
    notes = []
    if best is not None and base is not None:
        if not separated(best, base):
            notes.append(f"HPT's best is within noise of the Base before any HPT step ({score_cell(base)}): the lead "
                         "over Target is the Base's, and HPT itself added nothing measurable.")
        elif best["test"] < base["test"]:
            notes.append(f"HPT's best is below the Base before any HPT step ({score_cell(base)}), beyond noise: "
                         "HPT lowered the Base's score.")
    if parity.get("lower_bound") and best is not None:
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
