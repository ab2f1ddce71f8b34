"""How often was the source `hpt rank-sources` put first the best one? Reads run_sources.sh's outputs.

    python scripts/validate_ranking.py [runs/results] [_paper]

The optional suffix picks the sequential studies of `run_sources.sh _paper` (runs/results/seq_<target>_paper).

For each target: the ranking (Frechet distance of base features), the B+S+T score of every source with its
interval, and whether the top-ranked source was the best beyond noise, within noise of the best (a best point
estimate inside the others' noise counts here), or beaten beyond noise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hpt.eval.metrics import differs
from hpt.experiments.plan import source_name
from hpt.report.tables import interval, pct, score_cell


def main(root: Path, suffix: str = "") -> None:
    counts = {"best": 0, "tied": 0, "beaten": 0}
    for ranking_file in sorted(root.glob("rank_*/ranking.json")):
        target = ranking_file.parent.name.removeprefix("rank_")
        ranking = json.loads(ranking_file.read_text())
        order = [source_name(s["source"]) for s in ranking["scores"]]
        rows_file = root / f"seq_{target}{suffix}" / "experiments" / "sequential.jsonl"
        if not rows_file.exists():
            print(f"{target}: no sequential results yet ({rows_file})")
            continue
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
        both = {r["variant"][len("B+S+T ("):-1]: r for r in rows if r["variant"].startswith("B+S+T (")}
        plain = {r["variant"]: r for r in rows}
        best = max(both.values(), key=lambda r: r["test"])
        top = both[order[0]]
        others = [r for r in both.values() if r is not top]
        if differs(top["test"], interval(top), best["test"], interval(best)):
            verdict = "beaten"
        elif top is best and all(differs(top["test"], interval(top), r["test"], interval(r)) for r in others):
            verdict = "best"
        else:  # the best point estimate, or not, but inside the noise of the best
            verdict = "tied"
        counts[verdict] += 1
        print(f"\n### {target}: ranked {' > '.join(order)}; top-ranked source: {verdict}\n")
        print("| source | Frechet distance | B+S+T | B+S |")
        print("|---|---|---|---|")
        for score in ranking["scores"]:
            name = source_name(score["source"])
            print(f"| {name} | {score['frechet']:.1f} | {score_cell(both[name])} | "
                  f"{score_cell(plain[f'B+S ({name})'])} |")
        for label in ("B+T", "B"):
            print(f"| ({label}, no source) | | {score_cell(plain[label])} | |")
        far = ranking.get("base_domain") or {}
        if far:
            print(f"\ntarget's distance from the base domain: {far['ratio']:.2f} of the distance to noise"
                  f"{' (warned: far)' if far['far'] else ''}; best B+S+T - B+T: "
                  f"{pct(best['test'] - plain['B+T']['test'])} points")
    total = sum(counts.values())
    print(f"\ntop-ranked source: best beyond noise on {counts['best']} of {total} targets, within noise of the best on "
          f"{counts['tied']}, beaten beyond noise on {counts['beaten']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results"), sys.argv[2] if len(sys.argv) > 2 else "")
