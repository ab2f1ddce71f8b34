"""compare(): finished evaluations on the same test images, each against the first, paired: `hpt eval compare`.

Reads results records only (hpt.report.evals checks that they are comparable and writes the table); trains and
evaluates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpt.api.evaluation import EvalResult
from hpt.errors import HptError
from hpt.report.evals import (
    as_row,
    compare_evaluations,
    evaluation_name,
    load_evaluation,
)
from hpt.report.noise import paired_interval, separated

REFERENCE, BEYOND, WITHIN = "reference", "beyond noise", "within noise"


@dataclass(frozen=True)
class ComparisonRow:
    """One evaluation of a comparison, and its difference from the first (the reference)."""

    name: str
    score: float  # the test score, in [0, 1]
    low: float  # its 95% bootstrap interval
    high: float
    difference: float  # score minus the reference's (0 for the reference)
    difference_low: float | None  # the paired bootstrap interval of the difference over the same test images;
    difference_high: float | None  # None where the records keep no per-image outcomes (AUROC): intervals decide
    verdict: str  # 'reference', 'beyond noise' or 'within noise'

    @property
    def paired(self) -> bool:
        return self.difference_low is not None


@dataclass(frozen=True)
class Comparison:
    """Evaluations of one protocol on the same test images; `table` is what `hpt eval compare` prints."""

    protocol: str
    metric: str
    data: str
    test_images: int
    rows: tuple[ComparisonRow, ...]
    table: str

    def row(self, name: str) -> ComparisonRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise HptError(f"no evaluation named {name!r} in the comparison; names: {', '.join(r.name for r in self.rows)}")

    def __str__(self) -> str:
        return self.table


def compare(evaluations: Sequence[str | Path | EvalResult], names: Sequence[str] = ()) -> Comparison:
    """Compare finished evaluations (results.json files, their folders, or evaluate()'s results with an out) of the
    same protocol on the same test images: each minus the first, with the paired bootstrap interval of the
    difference, and whether it is beyond the test images' noise. `names`: one per evaluation (default: the stage
    or the folder of each)."""
    paths = [_path_of(item) for item in evaluations]
    table = compare_evaluations(paths, list(names))  # checks that they compare, and the printed table
    records = [load_evaluation(p) for p in paths]
    labels = list(names) or [evaluation_name(Path(p), r) for p, r in zip(paths, records)]
    rows = [as_row(label, record) for label, record in zip(labels, records)]
    first = rows[0]
    out = [ComparisonRow(first["variant"], first["test"], first["low"], first["high"], 0.0, None, None, REFERENCE)]
    for row in rows[1:]:
        paired = paired_interval(row, first)
        out.append(ComparisonRow(row["variant"], row["test"], row["low"], row["high"], row["test"] - first["test"],
                                 None if paired is None else paired.low, None if paired is None else paired.high,
                                 BEYOND if separated(row, first) else WITHIN))
    head = records[0]
    return Comparison(head["protocol"], head["metric"], head["data"], int(first["test_images"]), tuple(out), table)


def _path_of(item: str | Path | EvalResult) -> Path:
    if not isinstance(item, EvalResult):
        return Path(item)
    if item.path is None:
        raise HptError(f"the {item.protocol} evaluation was run without out=, so it has no results.json to compare; "
                       "run evaluate(..., out=FOLDER)")
    return item.path
