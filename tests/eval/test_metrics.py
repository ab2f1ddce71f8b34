from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hpt.errors import HptError
from hpt.eval.metrics import (
    Interval,
    Score,
    _AurocPlan,
    bootstrap_interval,
    differs,
    evaluate,
    mean_auroc,
    standard_error_top1,
    summarize_seeds,
    top1_accuracy,
)


def fixed_accuracy(n: int, accuracy: float, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels whose top-1 accuracy is exactly `accuracy` (n * accuracy must be whole)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    predicted = labels.copy()
    wrong = rng.permutation(n)[: n - round(n * accuracy)]
    predicted[wrong] = (labels[wrong] + 1) % classes
    return np.eye(classes)[predicted] + 0.01 * rng.random((n, classes)), labels


def multilabel(n: int, k: int, prevalence: float = 0.3, seed: int = 0,
               decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < prevalence).astype(int)
    scores = rng.random((n, k)) + 0.5 * labels
    return (np.round(scores, decimals) if decimals is not None else scores), labels


def pairwise_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Reference AUROC by brute force over (positive, negative) pairs, ties counting 1/2."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


# ------------------------------------------------------------------------------------------------ point estimates


def test_top1_accuracy_hand_built() -> None:
    scores = np.array([[0.9, 0.1, 0.0],   # -> 0, label 0: right
                       [0.2, 0.7, 0.1],   # -> 1, label 2: wrong
                       [0.3, 0.3, 0.3],   # tie -> lowest index 0, label 0: right
                       [0.1, 0.5, 0.5]])  # tie -> 1, label 2: wrong
    labels = np.array([0, 2, 0, 2])
    assert top1_accuracy(scores, labels) == pytest.approx(0.5)
    assert top1_accuracy(scores, np.array([0, 1, 0, 1])) == pytest.approx(1.0)
    assert evaluate(scores, labels) == Score("top1", 0.5)


def test_auroc_hand_built_matches_hand_value_and_sklearn() -> None:
    # class 0: positives 0.8, 0.4; negatives 0.5, 0.4, 0.1
    #   pairs won: 0.8 beats all 3 -> 3; 0.4 loses to 0.5, ties 0.4 (1/2), beats 0.1 -> 1.5; AUROC = 4.5 / 6 = 0.75
    # class 1: positives 0.2; negatives 0.9, 0.3, 0.2, 0.1 -> 0 + 0 + 0.5 + 1 = 1.5 / 4 = 0.375
    scores = np.array([[0.8, 0.9], [0.4, 0.3], [0.5, 0.2], [0.4, 0.2], [0.1, 0.1]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0]])
    score = mean_auroc(scores, labels)
    assert score.metric == "auroc"
    assert score.excluded == ()
    assert score.value == pytest.approx((0.75 + 0.375) / 2)
    sk = [roc_auc_score(labels[:, k], scores[:, k]) for k in range(2)]
    assert sk == pytest.approx([0.75, 0.375])
    assert [pairwise_auroc(labels[:, k], scores[:, k]) for k in range(2)] == pytest.approx(sk)
    assert score.value == pytest.approx(np.mean(sk))
    assert evaluate(scores, labels) == score


def test_one_valued_class_is_excluded_by_name_not_scored_zero() -> None:
    scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.6, 0.4, 0.7], [0.3, 0.1, 0.2]])
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # columns 1 (all 0) and 2 (all 1) one-valued
    score = mean_auroc(scores, labels, class_names=["cat", "dog", "eel"])
    assert score.excluded == ("dog", "eel")
    assert score.value == pytest.approx(1.0)  # class 0 alone, perfectly ranked; counting the others as 0 gives 1/3
    unnamed = evaluate(scores, labels)
    assert unnamed.excluded == ("class 1", "class 2")
    assert unnamed.value == pytest.approx(1.0)


def test_every_class_one_valued_raises() -> None:
    scores = np.random.default_rng(0).random((4, 2))
    labels = np.array([[0, 1]] * 4)
    with pytest.raises(HptError, match="no class has both positive and negative test images"):
        mean_auroc(scores, labels)
    with pytest.raises(HptError, match="no class has both positive and negative test images"):
        bootstrap_interval(scores, labels)


@pytest.mark.parametrize(("scores_shape", "labels", "message"), [
    ((5, 3), np.zeros(4, dtype=int), "scores have 5 images but labels have 4"),
    ((4, 3), np.array([0, 1, 2, 3]), r"labels must lie in \[0, 2\]"),
    ((4, 3), np.array([0, 1, -1, 2]), r"labels must lie in \[0, 2\]"),
    ((4, 3), np.zeros((4, 2), dtype=int), r"scores have shape \(4, 3\) but labels have shape \(4, 2\)"),
    ((5, 3), np.zeros((4, 3), dtype=int), r"scores have shape \(5, 3\) but labels have shape \(4, 3\)"),
    ((4,), np.zeros(4, dtype=int), "scores must be a 2-D array"),
    ((4, 3), np.full((4, 3), 2), "only 0 and 1"),
    ((4, 3), np.zeros((4, 3, 1), dtype=int), "labels must be 1-D class indices or a 2-D 0/1 matrix"),
])
def test_bad_shapes_raise(scores_shape: tuple[int, ...], labels: np.ndarray, message: str) -> None:
    scores = np.random.default_rng(0).random(scores_shape)
    with pytest.raises(HptError, match=message):
        evaluate(scores, labels)
    with pytest.raises(HptError, match=message):
        bootstrap_interval(scores, labels, resamples=10)


def test_class_names_length_and_nan_scores_raise() -> None:
    scores, labels = multilabel(20, 3)
    with pytest.raises(HptError, match="got 2 class names for 3 classes"):
        mean_auroc(scores, labels, class_names=["a", "b"])
    scores[0, 0] = np.nan
    with pytest.raises(HptError, match="NaN"):
        evaluate(scores, labels)


# ------------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_contains_point_estimate() -> None:
    scores, labels = fixed_accuracy(200, 0.8)
    interval = bootstrap_interval(scores, labels, resamples=500)
    assert interval.low < 0.8 < interval.high
    assert (interval.level, interval.resamples) == (0.95, 500)
    scores, labels = multilabel(200, 4)
    point = evaluate(scores, labels).value
    interval = bootstrap_interval(scores, labels, resamples=200)
    assert interval.low < point < interval.high
    # the same 200 resamples of the test images drawn directly, each scored by sklearn
    idx = np.random.default_rng(0).integers(0, 200, size=(200, 200))
    direct = [np.mean([roc_auc_score(labels[row, k], scores[row, k]) for k in range(4)]) for row in idx]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(direct, [0.025, 0.975])), abs=1e-12)


def test_bootstrap_interval_narrows_as_test_set_grows() -> None:
    small = bootstrap_interval(*fixed_accuracy(100, 0.8), resamples=1000)
    large = bootstrap_interval(*fixed_accuracy(10_000, 0.8), resamples=1000)
    small_width, large_width = small.high - small.low, large.high - large.low
    assert small_width > 5 * large_width  # ~10x in theory (sqrt of the 100x size ratio)
    # both close to the normal-approximation width 2 * 1.96 * SE
    for width, n in ((small_width, 100), (large_width, 10_000)):
        assert width == pytest.approx(2 * 1.96 * standard_error_top1(0.8, n), rel=0.2)
    assert large.low < 0.8 < large.high


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    for scores, labels in (fixed_accuracy(300, 0.7), multilabel(300, 3, decimals=1)):
        first = bootstrap_interval(scores, labels, resamples=300, seed=7)
        again = bootstrap_interval(scores, labels, resamples=300, seed=7)
        other = bootstrap_interval(scores, labels, resamples=300, seed=8)
        assert first == again
        assert first != other


def test_top1_bootstrap_matches_direct_resampling() -> None:
    scores, labels = fixed_accuracy(50, 0.6)
    resamples, seed = 400, 3
    idx = np.random.default_rng(seed).integers(0, 50, size=(resamples, 50))
    correct = np.argmax(scores, axis=1) == labels
    expected = np.quantile(correct[idx].mean(axis=1), [0.025, 0.975])
    interval = bootstrap_interval(scores, labels, resamples=resamples, seed=seed)
    assert (interval.low, interval.high) == pytest.approx(tuple(expected))


def test_resampled_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(15):
        n = int(rng.integers(2, 80))
        scores = rng.integers(0, int(rng.integers(1, 6)), (n, 3)).astype(float)  # heavy ties
        labels = (rng.random((n, 3)) < rng.uniform(0.1, 0.9)).astype(int)
        idx = rng.integers(0, n, size=(6, n))
        counts = np.stack([np.bincount(row, minlength=n) for row in idx], axis=1).astype(float)
        got = _AurocPlan(scores, labels).auroc(counts)
        for r in range(6):
            for k in range(3):
                y = labels[idx[r], k]
                if 0 < y.sum() < n:
                    assert got[r, k] == pytest.approx(roc_auc_score(y, scores[idx[r], k]), abs=1e-12)
                else:
                    assert math.isnan(got[r, k])
        # all multiplicities 1 = the full data set
        full = _AurocPlan(scores, labels).auroc(np.ones((n, 1)))[0]
        for k in range(3):
            if 0 < labels[:, k].sum() < n:
                assert full[k] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]), abs=1e-12)


def test_auroc_bootstrap_with_rare_class_absent_from_some_resamples() -> None:
    n, resamples, seed = 40, 500, 5
    scores, labels = multilabel(n, 3, prevalence=0.4, seed=1, decimals=1)
    labels[:, 2] = 0
    labels[[3, 17], 2] = 1  # rare class: 2 positives in 40
    labels[:, 1] = 0  # one-valued on the full data: never considered
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    absent = ~np.isin(idx, [3, 17]).any(axis=1)
    assert absent.sum() > 0  # the rare class really is missing from some resamples
    expected = []
    for row in idx:
        per_class = [pairwise_auroc(labels[row, k], scores[row, k]) for k in (0, 2)
                     if 0 < labels[row, k].sum() < n]
        expected.append(np.mean(per_class))
    interval = bootstrap_interval(scores, labels, resamples=resamples, seed=seed)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(expected, [0.025, 0.975])))
    assert interval.low <= evaluate(scores, labels).value <= interval.high


def test_auroc_bootstrap_on_10k_images_20_classes_brackets_the_estimate() -> None:
    # Its speed is measured by bench/bootstrap.py (docs/benchmarks.md), not here.
    scores, labels = multilabel(10_000, 20, prevalence=0.2, decimals=3)
    interval = bootstrap_interval(scores, labels, resamples=200)
    assert interval.low < evaluate(scores, labels).value < interval.high
    assert interval.high - interval.low < 0.02  # 10,000 images: a narrow interval


def test_bootstrap_rejects_bad_options() -> None:
    scores, labels = fixed_accuracy(20, 0.5)
    with pytest.raises(HptError, match="resamples must be a positive integer"):
        bootstrap_interval(scores, labels, resamples=0)
    with pytest.raises(HptError, match="level must lie strictly between 0 and 1"):
        bootstrap_interval(scores, labels, level=95)


# ------------------------------------------------------------------------------------------------ summaries


def test_summarize_seeds_known_values() -> None:
    mean, std = summarize_seeds([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5.0 / 3.0))  # ddof=1: sum of squares 5 over 3
    assert summarize_seeds([0.7]) == (0.7, 0.0)
    assert summarize_seeds([0.8, 0.8]) == (pytest.approx(0.8), 0.0)
    with pytest.raises(HptError, match="no values"):
        summarize_seeds([])


def test_standard_error_top1() -> None:
    assert standard_error_top1(0.8, 100) == pytest.approx(0.04)
    assert standard_error_top1(0.5, 10_000) == pytest.approx(0.005)
    assert standard_error_top1(1.0, 10) == 0.0
    with pytest.raises(HptError):
        standard_error_top1(1.2, 10)
    with pytest.raises(HptError):
        standard_error_top1(0.5, 0)


def test_differs_only_when_intervals_do_not_overlap() -> None:
    a = Interval(0.70, 0.74)
    assert differs(0.72, a, 0.80, Interval(0.78, 0.82))
    assert differs(Score("top1", 0.80), Interval(0.78, 0.82), 0.72, a)  # either order
    assert not differs(0.72, a, 0.75, Interval(0.73, 0.77))  # overlap
    assert not differs(0.72, a, 0.76, Interval(0.74, 0.78))  # touching endpoints count as overlap
    assert not differs(0.72, a, 0.72, Interval(0.60, 0.90))  # one inside the other
