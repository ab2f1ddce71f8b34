"""One line per CSV of scripts/diagnose_from_scratch.py: kNN at step 0 (random weights) and at the probe steps,
and the run's turning points (lowest positive-pair cosine and where, loss and accuracy at the end).

  python scripts/summarize_diagnose_runs.py runs/diagnose/fashion_*.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def summarize(path: Path) -> str:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    probes = [(int(r["step"]), float(r["knn"])) for r in rows if r["knn"]]
    logged = [r for r in rows if r["loss"]]
    if not probes or not logged:
        return f"{path.stem}: no rows yet"
    start, end = probes[0][1], probes[-1][1]
    low = min(logged, key=lambda r: float(r["pos_cos"]))
    last = logged[-1]
    curve = " ".join(f"{s}:{100 * v:.1f}" for s, v in probes)
    return (f"{path.stem:32s} kNN start {100 * start:.1f} end {100 * end:.1f} ({100 * (end - start):+.1f}) | "
            f"min pos_cos {float(low['pos_cos']):.2f} @ {low['step']} | end loss {float(last['loss']):.2f}/"
            f"{float(last['uniform_logits_loss']):.2f} acc {float(last['pos_acc']):.2f} "
            f"spread {float(last['spread_q']):.2f} unif {float(last['uniformity']):.2f} | {curve}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path)
    for path in parser.parse_args().csv:
        print(summarize(path))


if __name__ == "__main__":
    main()
