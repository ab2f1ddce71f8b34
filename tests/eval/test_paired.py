"""Paired comparisons: per-image outcomes round-trip, and the difference's interval tells apart what overlap cannot."""

from __future__ import annotations

import numpy as np
import pytest

from hpt.errors import HptError
from hpt.eval.metrics import bootstrap_interval, differs
from hpt.eval.paired import (
    mean_outcomes,
    pack_outcomes,
    paired_difference_interval,
    unpack_outcomes,
)
from hpt.report.tables import difference_note, separated, versus_best


def test_outcomes_round_trip_and_refuse_the_wrong_size() -> None:
    correct = np.random.default_rng(0).random(5001) < 0.8
    text = pack_outcomes(correct)
    assert np.array_equal(unpack_outcomes(text, 5001), correct)
    assert len(text) < 900
    with pytest.raises(HptError, match="do not fit 6000 test images"):
        unpack_outcomes(text, 6000)
    assert mean_outcomes([pack_outcomes([1, 0, 1]), pack_outcomes([1, 1, 0])], 3).tolist() == [1.0, 0.5, 0.5]


def test_paired_interval_matches_direct_resampling_of_the_same_images() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(300) < 0.7, rng.random(300) < 0.6
    interval = paired_difference_interval(a, b, resamples=500, seed=9)
    idx = np.random.default_rng(9).integers(0, 300, size=(500, 300))  # one resample: the same images for both
    direct = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(direct, [0.025, 0.975])), abs=1e-12)
    assert interval.low < a.mean() - b.mean() < interval.high


def test_paired_interval_of_identical_outcomes_is_zero() -> None:
    a = np.random.default_rng(1).random(1000) < 0.7
    interval = paired_difference_interval(a, a)
    assert interval.low == interval.high == 0.0


def _correlated(n: int = 5000, gain: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """b gets right every image a gets right, and `gain` more: +1 point on 5,000 images."""
    a = np.random.default_rng(2).random(n) < 0.84
    b = a.copy()
    b[np.flatnonzero(~a)[:gain]] = True
    return a, b


def test_a_correlated_one_point_gain_is_beyond_noise_paired_but_not_by_overlap() -> None:
    a, b = _correlated()
    labels = np.zeros(a.size, dtype=int)
    scores_a = np.stack([a, ~a], axis=1).astype(float)  # right when column 0 wins
    scores_b = np.stack([b, ~b], axis=1).astype(float)
    ia, ib = bootstrap_interval(scores_a, labels), bootstrap_interval(scores_b, labels)
    assert not differs(a.mean(), ia, b.mean(), ib)  # the intervals overlap
    paired = paired_difference_interval(b, a)
    assert 0 < paired.low < 0.01 < paired.high < 0.02
    assert paired_difference_interval(a, b).high < 0


def _row(variant: str, outcomes: np.ndarray | None, half_width: float = 0.01) -> dict:
    score = float(np.mean(outcomes)) if outcomes is not None else 0.84
    return {"variant": variant, "x": None, "test": score, "low": score - half_width, "high": score + half_width,
            "test_images": 5000, "test_correct": None if outcomes is None else [pack_outcomes(outcomes)]}


def test_report_rows_use_the_paired_interval_when_both_carry_outcomes() -> None:
    a, b = _correlated()
    base, hpt = _row("Base", a), _row("HPT", b)
    assert separated(hpt, base) and versus_best(base, [base, hpt]) == "below it beyond noise"
    note = difference_note(hpt, base)
    assert note.startswith("+1.0 points [+") and note.endswith("paired over the same test images, beyond noise")
    old = _row("Base", None)  # a row from before outcomes were kept: the overlap rule
    assert not separated(hpt, old) and difference_note(hpt, old).endswith("within noise (intervals overlap)")
    noisy = np.random.default_rng(3).random(5000) < 0.845  # uncorrelated, +0.5 point: within noise either way
    assert not separated(_row("HPT", noisy), base)
    assert difference_note(_row("HPT", noisy), base).endswith("within noise (the interval holds 0)")


def test_a_top1_record_without_outcomes_is_evaluated_again(tmp_path) -> None:  # noqa: ANN001
    import json

    from hpt.eval.suite import _finished

    record = {"metric": "top1", "backbone": {"weights_sha256": "abc"}, "suite_settings": {"data": "x"}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    assert _finished(path, "abc", {"data": "x"}) is None  # made before outcomes were kept: redone
    path.write_text(json.dumps({**record, "test_correct": ["AA=="]}))
    assert _finished(path, "abc", {"data": "x"}) is not None
    path.write_text(json.dumps({**record, "metric": "auroc"}))  # AUROC keeps no outcomes: reused as it is
    assert _finished(path, "abc", {"data": "x"}) is not None


def _record(tmp_path, name: str, outcomes: np.ndarray, **changes: object):  # noqa: ANN001, ANN202
    import json

    score = float(outcomes.mean())
    record = {"kind": "eval", "protocol": "linear", "metric": "top1", "data": "npz:t.npz", "test": score,
              "interval": [score - 0.01, score + 0.01], "seeds": {"count": 1, "std": 0.0},
              "splits": {"sizes": {"test": outcomes.size}}, "test_correct": [pack_outcomes(outcomes)], **changes}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def test_eval_compare_reports_each_evaluation_against_the_first(tmp_path) -> None:  # noqa: ANN001
    from hpt.report.evals import compare_evaluations

    a, b = _correlated()
    text = compare_evaluations([_record(tmp_path, "base", a), _record(tmp_path, "hpt", b)], ["Base", "HPT"])
    assert "| Base | " in text and "| below it beyond noise |" in text and text.count("| best on test |") == 1
    assert "chosen on test scores: these records predate validation scores" in text  # they keep no val score
    assert "- HPT - Base: +1.0 points [+" in text and text.endswith("beyond noise")


def test_eval_compare_refuses_other_test_sets_and_missing_records(tmp_path) -> None:  # noqa: ANN001
    from hpt.cli import main
    from hpt.report.evals import compare_evaluations

    a, _ = _correlated()
    first = _record(tmp_path, "a", a)
    with pytest.raises(HptError, match="another test data than"):
        compare_evaluations([first, _record(tmp_path, "b", a, data="npz:other.npz")])
    with pytest.raises(HptError, match="scored on 100 test images"):
        compare_evaluations([first, _record(tmp_path, "c", a[:100])])
    with pytest.raises(HptError, match="no evaluation record at"):
        compare_evaluations([first, tmp_path / "missing"])
    with pytest.raises(HptError, match="2 names for 3 evaluations"):
        compare_evaluations([first, first, first], ["x", "y"])
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one line, no traceback, non-zero exit
        main(["eval", "compare", str(first), str(tmp_path / "missing")])
    assert exit_info.value.code != 0
