"""Tabulate the guard's readings of pretraining stages: signal and agreement with the start at every reading.

Usage: python scripts/guard_agreement_table.py OUT [OUT ...]   (each OUT an `hpt pretrain --out` folder)

One row per stage with a guard: its signal's readings, the agreement (linear CKA with the start's features) and
the effective rank of the same features at each, the step the guard kept, where it stopped and why. It reads the stages' summary.json only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(out: Path) -> list[str]:
    lines = []
    for summary_path in sorted(out.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        guard = summary.get("guard")
        if not guard:
            continue
        agreement = dict((int(s), v) for s, v in guard.get("agreement", []))
        rank = dict((int(s), v) for s, v in guard.get("feature_rank", []))
        readings = ", ".join(f"{int(s)}: {v:.3f}" + (f" / {agreement[int(s)]:.2f}" if int(s) in agreement else "")
                             + (f" / {rank[int(s)]:.1f}" if int(s) in rank else "") for s, v in guard["history"])
        lines.append(f"| {out.name} | {summary['stage']} | {guard['signal']} | {readings} | {guard['kept_step']} | "
                     f"{guard['stopped_at']} | {guard['reason']} |")
    return lines


def main(outs: list[str]) -> None:
    print("| data | stage | signal | readings (step: signal / agreement / effective rank) | kept | stopped at | reason |")
    print("|---|---|---|---|---|---|---|")
    for out in outs:
        for line in rows(Path(out)):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
