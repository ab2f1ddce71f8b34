"""Tabulate the guard's readings of pretraining stages: signal, agreement with the start and effective rank.

Usage: python scripts/guard_agreement_table.py OUT [OUT ...]   (each OUT an `hpt pretrain --out` folder)

First table: one row per stage with a guard: its signal's readings, the agreement (linear CKA with the start's
features) and the effective rank of the same features at each, the step the guard kept, where it stopped and why.
Second table: stages run twice with the same recipe and seed, once guarded by kNN (NAME_knn) and once by the
unlabelled rank signal (NAME_rank). Their training is the same step for step (the guard's readings consume no
randomness), so the kNN twin's val readings score the rank guard's steps: where each guard stopped, and the kNN
score at the step the rank guard kept against the start's. It reads the stages' summary.json only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def guards(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for summary_path in sorted(out.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if summary.get("guard"):
            found[summary["stage"]] = summary["guard"]
    return found


def readings(guard: dict[str, Any]) -> str:
    agreement = {int(s): v for s, v in guard.get("agreement", [])}
    rank = {int(s): v for s, v in guard.get("feature_rank", [])}
    return ", ".join(f"{int(s)}: {v:.3f}" + (f" / {agreement[int(s)]:.2f}" if int(s) in agreement else "")
                     + (f" / {rank[int(s)]:.1f}" if int(s) in rank else "") for s, v in guard["history"])


def ended(guard: dict[str, Any]) -> str:
    reason = guard["reason"]
    why = ("end of budget" if reason.startswith("end of the budget") else
           "agreement floor" if reason.startswith("agreement") else
           "rank floor" if "effective rank" in reason else f"{guard['signal']} fell beyond noise")
    return f"kept {guard['kept_step']}, stopped at {guard['stopped_at']} ({why})"


def twin_row(data: str, recipe: str, knn: dict[str, Any], rank: dict[str, Any]) -> str:
    scores = {int(s): v for s, v in knn["history"]}
    start, kept = scores[0], rank["kept_step"]
    at_kept = f"{scores[kept]:.3f} vs {start:.3f}" if kept in scores else f"not read (the kNN twin stopped at " \
                                                                         f"{knn['stopped_at']})"
    low = min((v, s) for s, v in rank.get("agreement", []))
    low_rank = min((v, s) for s, v in rank.get("feature_rank", []))
    start_rank = rank["feature_rank"][0][1]
    return (f"| {data} | {recipe} | {ended(knn)} | {ended(rank)} | {at_kept} | {low[0]:.2f} (step {low[1]}) | "
            f"{low_rank[0] / start_rank:.2f} (step {low_rank[1]}) |")


def main(outs: list[str]) -> None:
    print("| data | stage | signal | readings (step: signal / agreement / effective rank) | kept | stopped at | reason |")
    print("|---|---|---|---|---|---|---|")
    for out in map(Path, outs):
        for stage, guard in guards(out).items():
            print(f"| {out.name} | {stage} | {guard['signal']} | {readings(guard)} | {guard['kept_step']} | "
                  f"{guard['stopped_at']} | {guard['reason']} |")
    print()
    print("| data | recipe | guarded by kNN | guarded by rank (no labels) | val kNN at the rank guard's kept step vs the "
          "start | lowest agreement (rank guard) | lowest rank / start's (rank guard) |")
    print("|---|---|---|---|---|---|---|")
    for out in map(Path, outs):
        found = guards(out)
        for stage in found:
            if stage.endswith("_knn") and stage[:-4] + "_rank" in found:
                print(twin_row(out.name, stage[:-4], found[stage], found[stage[:-4] + "_rank"]))


if __name__ == "__main__":
    main(sys.argv[1:])
