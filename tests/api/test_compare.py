"""hpt.compare(): rows against the first evaluation with the paired interval and a verdict, the table of
`hpt eval compare`, and clear errors for evaluations that cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import hpt
from hpt.api import Comparison, EvalResult
from hpt.errors import HptError
from hpt.eval.paired import pack_outcomes

from ..helpers import call

N = 200  # test images


def write_record(folder: Path, correct: np.ndarray | None, *, metric: str = "top1", test: float | None = None,
                 interval: tuple[float, float] | None = None, val: float = 0.5) -> Path:
    """A results.json as `hpt eval linear` writes it, for per-image outcomes `correct` (None: an AUROC record)."""
    score = float(np.mean(correct)) if test is None else test
    record = {
        "kind": "eval", "protocol": "linear", "metric": metric, "test": score,
        "interval": list(interval or (max(0.0, score - 0.07), min(1.0, score + 0.07))),
        "seeds": {"count": 1, "mean": score, "std": 0.0, "runs": [{"seed": 0, "test": score, "val": val}]},
        "data": "npz:target.npz", "splits": {"sizes": {"train": 100, "val": 50, "test": N}},
    }
    if correct is not None:
        record["test_correct"] = [pack_outcomes(correct)]
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def outcomes(right: int, seed: int = 0) -> np.ndarray:
    correct = np.zeros(N, bool)
    correct[np.random.default_rng(seed).choice(N, right, replace=False)] = True
    return correct


def test_verdicts_against_the_first(tmp_path: Path) -> None:
    base = outcomes(120)
    better = base.copy()
    better[np.flatnonzero(~base)[:40]] = True  # 40 more right, none lost: beyond noise
    close = base.copy()
    close[np.flatnonzero(~base)[:2]] = True  # 2 more right: within noise
    paths = [write_record(tmp_path / name, c) for name, c in (("base", base), ("hpt", better), ("bn", close))]
    comparison = hpt.compare(paths, names=["Base", "HPT", "HPT-BN"])
    assert isinstance(comparison, Comparison)
    assert (comparison.protocol, comparison.metric, comparison.test_images) == ("linear", "top1", N)
    reference, hpt_row, bn_row = comparison.rows
    assert (reference.name, reference.verdict, reference.difference, reference.paired) == ("Base", "reference", 0.0,
                                                                                           False)
    assert hpt_row.verdict == "beyond noise" and hpt_row.difference == pytest.approx(0.2)
    assert hpt_row.paired and 0 < hpt_row.difference_low < 0.2 < hpt_row.difference_high  # type: ignore[operator]
    assert bn_row.verdict == "within noise" and bn_row.difference_low <= 0 <= bn_row.difference_high  # type: ignore[operator]
    assert comparison.row("HPT") is hpt_row
    with pytest.raises(HptError, match="no evaluation named 'Target'"):
        comparison.row("Target")


def test_the_table_is_what_hpt_eval_compare_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [write_record(tmp_path / "a", outcomes(100)), write_record(tmp_path / "b", outcomes(150, seed=1))]
    comparison = hpt.compare(paths)
    code, out, err = call(capsys, "eval", "compare", *map(str, paths))
    assert code == 0, err
    assert out == f"{comparison.table}\n" and str(comparison) == comparison.table
    assert [row.name for row in comparison.rows] == [f"{tmp_path.name}/a", f"{tmp_path.name}/b"]  # the folders


def test_records_without_per_image_outcomes_are_told_apart_by_their_intervals(tmp_path: Path) -> None:
    first = write_record(tmp_path / "a", None, metric="auroc", test=0.70, interval=(0.65, 0.75))
    apart = write_record(tmp_path / "b", None, metric="auroc", test=0.90, interval=(0.86, 0.94))
    overlapping = write_record(tmp_path / "c", None, metric="auroc", test=0.72, interval=(0.67, 0.77))
    rows = hpt.compare([first, apart, overlapping]).rows
    assert [(r.verdict, r.paired) for r in rows] == [("reference", False), ("beyond noise", False),
                                                     ("within noise", False)]


def test_evaluation_results_are_compared_by_their_files(tmp_path: Path) -> None:
    a, b = write_record(tmp_path / "a", outcomes(100)), write_record(tmp_path / "b", outcomes(110))
    results = [EvalResult.load(a), EvalResult.load(b / "results.json")]
    assert results[0].path == a / "results.json" and results[0].score == 0.5
    assert hpt.compare(results, names=["A", "B"]).rows[1].name == "B"
    unsaved = EvalResult.of(results[1].record)  # as evaluate() returns it without out=
    with pytest.raises(HptError, match="without out=.*evaluate\\(..., out=FOLDER\\)"):
        hpt.compare([results[0], unsaved])


def test_evaluations_that_cannot_be_compared(tmp_path: Path) -> None:
    a = write_record(tmp_path / "a", outcomes(100))
    with pytest.raises(HptError, match="no evaluation record at .*missing"):
        hpt.compare([a, tmp_path / "missing"])
    with pytest.raises(HptError, match="at least two"):
        hpt.compare([a])
    with pytest.raises(HptError, match="one name per evaluation"):
        hpt.compare([a, a], names=["only one"])
    other = write_record(tmp_path / "auroc", None, metric="auroc", test=0.7)
    with pytest.raises(HptError, match="another metric"):
        hpt.compare([a, other])
