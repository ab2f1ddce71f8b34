"""Evaluation metrics: top-1 accuracy, mean per-class AUROC, percentile bootstrap intervals, seed summaries."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.metrics import roc_auc_score

from hpt.errors import HptError

# Bound on the elements of one (N images x resamples) block, or of one product with it, while bootstrapping
# (4 MB as float64: cache-sized blocks are several times faster than large ones).
_CHUNK_ELEMENTS = 500_000


@dataclass(frozen=True)
class Score:
    """One test-set score: "top1" (single-label accuracy) or "auroc" (mean per-class AUROC, multi-label)."""

    metric: str
    value: float
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap confidence interval."""

    low: float
    high: float
    level: float = 0.95
    resamples: int = 1000


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _as_scores(scores: np.ndarray) -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HptError(f"scores must be numeric, got {np.asarray(scores).dtype}; pass an (N, C) float array") from exc
    if arr.ndim != 2:
        raise HptError(f"scores must be a 2-D array (N images, C classes), got shape {arr.shape}; "
                       "reshape to (N, C)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise HptError(f"scores has shape {arr.shape}; evaluation needs at least one image and one class")
    if not np.all(np.isfinite(arr)):
        raise HptError("scores contain NaN or infinite values; check the model outputs before evaluating")
    return arr


def _check_single(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise HptError(f"single-label labels must be 1-D (N,), got shape {y.shape}")
    if y.shape[0] != s.shape[0]:
        raise HptError(f"scores have {s.shape[0]} images but labels have {y.shape[0]}; "
                       "pass scores and labels for the same test images")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise HptError(f"single-label labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if np.any(y < 0) or np.any(y >= s.shape[1]):
        raise HptError(f"labels must lie in [0, {s.shape[1] - 1}] for scores with {s.shape[1]} classes, "
                       f"got range [{y.min()}, {y.max()}]; check the class count of the head and the labels")
    return s, y


def _check_multi(scores: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    s = _as_scores(scores)
    y = np.asarray(labels)
    if y.ndim != 2:
        raise HptError(f"multi-label labels must be 2-D (N, K), got shape {y.shape}")
    if y.shape != s.shape:
        raise HptError(f"scores have shape {s.shape} but labels have shape {y.shape}; "
                       "multi-label scores and labels must both be (N images, K classes)")
    if y.dtype.kind not in "biuf" or not np.all(np.isin(y, (0, 1))):
        raise HptError("multi-label labels must contain only 0 and 1; binarise the label matrix first")
    y = y.astype(np.int8)
    k = s.shape[1]
    if class_names is None:
        names = [f"class {i}" for i in range(k)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != k:
            raise HptError(f"got {len(names)} class names for {k} classes; pass one name per label column")
    return s, y, names


def _two_valued(labels: np.ndarray) -> np.ndarray:
    """Boolean mask (K,) of classes with both positive and negative images."""
    pos = labels.sum(axis=0)
    return (pos > 0) & (pos < labels.shape[0])


def _no_class_error() -> HptError:
    return HptError("no class has both positive and negative test images, so AUROC is undefined for every class; "
                    "use a larger or stratified test split")


# ---------------------------------------------------------------------------------------------------------------
# Point estimates


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose highest score (lowest index on ties) is the label."""
    s, y = _check_single(scores, labels)
    return float(np.mean(np.argmax(s, axis=1) == y))


def mean_auroc(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None) -> Score:
    """Mean per-class AUROC over classes with both positives and negatives; one-valued classes go to `excluded`."""
    s, y, names = _check_multi(scores, labels, class_names)
    keep = _two_valued(y)
    if not keep.any():
        raise _no_class_error()
    values = [roc_auc_score(y[:, k], s[:, k]) for k in np.flatnonzero(keep)]
    excluded = tuple(names[k] for k in np.flatnonzero(~keep))
    return Score("auroc", float(np.mean(values)), excluded)


def evaluate(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None) -> Score:
    """Top-1 accuracy for 1-D labels, mean AUROC for 2-D (multi-label) labels."""
    y = np.asarray(labels)
    if y.ndim == 1:
        return Score("top1", top1_accuracy(scores, y))
    if y.ndim == 2:
        return mean_auroc(scores, y, class_names)
    raise HptError(f"labels must be 1-D class indices or a 2-D 0/1 matrix, got shape {y.shape}")


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap


def _resample_counts(rng: np.random.Generator, n: int, resamples: int, rows: int = 0) -> Iterator[np.ndarray]:
    """Yield (n, r) float blocks of image multiplicities: column j counts how often each image is in resample j.

    r is chosen so that an (n, r) block and an (rows, r) product stay under _CHUNK_ELEMENTS (cache-sized).
    """
    cols = max(1, _CHUNK_ELEMENTS // max(n, rows))
    done = 0
    while done < resamples:
        r = min(cols, resamples - done)
        idx = rng.integers(0, n, size=(r, n))
        idx *= r
        idx += np.arange(r)[:, None]
        yield np.bincount(idx.ravel(), minlength=n * r).reshape(n, r).astype(np.float64)
        done += r


class _AurocPlan:
    """Per-class AUROC of many resamples at once, as sparse products with the (n, r) multiplicity matrix.

    The AUROC of a resample is the weighted Mann-Whitney statistic with ties counted as 1/2, which equals sklearn's
    roc_auc_score on the data set that repeats image i counts[i] times:
        2 * P * N * AUROC = sum over positives i of w_i * (2 * negatives scored below i + negatives tied with i).
    Positives with no negative scored between them share "negatives below", so each class's matrix has
      m rows  summing negatives into bins between the m distinct "negatives below" levels (cumulated afterwards),
      m rows  giving each level twice the weight of the positives on it,
      2t rows summing positives and negatives of each of the t tie groups holding both.
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self._n = scores.shape[0]
        self._classes: list[tuple[csr_matrix, int, int]] = []
        for c in range(scores.shape[1]):
            order = np.argsort(scores[:, c], kind="stable")
            ordered = scores[order, c]
            pos = labels[order, c].astype(bool)
            neg = ~pos
            neg_before = np.cumsum(neg) - neg  # negatives at earlier sorted positions
            group_start = np.searchsorted(ordered, ordered, side="left")
            levels, level_of_pos = np.unique(neg_before[group_start[pos]], return_inverse=True)
            m = levels.size
            # a negative of rank k is below level j iff k < levels[j] iff its bin (levels <= k) is <= j
            neg_bins = np.searchsorted(levels, neg_before[neg], side="right")
            below_some = neg_bins < m
            group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
            mixed = (np.bincount(group[pos], minlength=group[-1] + 1) > 0) & (
                np.bincount(group[neg], minlength=group[-1] + 1) > 0)
            tie_index = np.cumsum(mixed) - 1
            t = int(mixed.sum())
            pos_tied, neg_tied = pos & mixed[group], neg & mixed[group]
            rows = np.concatenate([neg_bins[below_some], m + level_of_pos,
                                   2 * m + tie_index[group[pos_tied]], 2 * m + t + tie_index[group[neg_tied]]])
            cols = np.concatenate([order[neg][below_some], order[pos], order[pos_tied], order[neg_tied]])
            values = np.ones(rows.size)
            values[below_some.sum():below_some.sum() + pos.sum()] = 2.0
            matrix = csr_matrix((values, (rows, cols)), shape=(2 * m + 2 * t, self._n))
            self._classes.append((matrix, m, t))

    @property
    def max_rows(self) -> int:
        """Largest number of rows of a class's matrix (bounds the memory of one product)."""
        return max(matrix.shape[0] for matrix, _, _ in self._classes)

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        """(r, K) AUROCs for the (n, r) multiplicities; NaN where a class is one-valued in a resample."""
        out = np.empty((counts.shape[1], len(self._classes)))
        for c, (matrix, m, t) in enumerate(self._classes):
            sums = np.asarray(matrix @ counts)
            uses = sums[m:2 * m]
            twice_num = np.einsum("ij,ij->j", np.cumsum(sums[:m], axis=0), uses)
            if t:
                twice_num += np.einsum("ij,ij->j", sums[2 * m:2 * m + t], sums[2 * m + t:])
            n_pos = uses.sum(axis=0) / 2.0
            denom = 2.0 * n_pos * (self._n - n_pos)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, c] = np.where(denom > 0, twice_num / denom, np.nan)
        return out


def bootstrap_interval(scores: np.ndarray, labels: np.ndarray, *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of the `evaluate` metric, resampling test images with replacement."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise HptError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise HptError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    if y.ndim == 1:
        s, y = _check_single(scores, y)
        correct = (np.argmax(s, axis=1) == y).astype(np.float64)
        n = correct.size
        values = np.concatenate([correct @ counts / n for counts in _resample_counts(rng, n, resamples)])
    elif y.ndim == 2:
        s, y, _ = _check_multi(scores, y)
        keep = np.flatnonzero(_two_valued(y))
        if keep.size == 0:
            raise _no_class_error()
        plan = _AurocPlan(s[:, keep], y[:, keep])
        blocks = []
        for counts in _resample_counts(rng, s.shape[0], resamples, plan.max_rows):
            per_class = plan.auroc(counts)
            scored = np.isfinite(per_class)
            with np.errstate(invalid="ignore"):
                blocks.append(np.where(scored.any(axis=1),
                                       np.nansum(per_class, axis=1) / np.maximum(scored.sum(axis=1), 1), np.nan))
        values = np.concatenate(blocks)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise HptError("no bootstrap resample had a class with both positive and negative images; "
                           "use a larger test split")
    else:
        raise HptError(f"labels must be 1-D class indices or a 2-D 0/1 matrix, got shape {y.shape}")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(float(low), float(high), float(level), int(resamples))


# ---------------------------------------------------------------------------------------------------------------
# Summaries and comparisons


def summarize_seeds(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) of per-seed results."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise HptError("summarize_seeds got no values; pass at least one per-seed result")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return float(np.mean(arr)), std


def standard_error_top1(accuracy: float, n: int) -> float:
    """Binomial standard error sqrt(p(1-p)/n) of an accuracy measured on n images."""
    if not 0.0 <= accuracy <= 1.0:
        raise HptError(f"accuracy must lie in [0, 1], got {accuracy!r}")
    if n < 1:
        raise HptError(f"n must be a positive number of test images, got {n!r}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def differs(a: Score | float, a_interval: Interval, b: float, b_interval: Interval) -> bool:
    """True only when the two intervals do not overlap (touching counts as overlap).

    `a` and `b` are the point estimates, kept for readable call sites; the decision uses the intervals alone.
    """
    return a_interval.high < b_interval.low or b_interval.high < a_interval.low
