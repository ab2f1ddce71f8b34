"""Paired comparison of two evaluations on the same test images: the bootstrap interval of their difference.

Two backbones scored on the same test set make correlated mistakes, so comparing their separate intervals (do they
overlap?) is far more cautious than the noise warrants. Resampling the test images once for both and taking the
difference on each resample gives the interval of the difference itself; a difference is beyond the test set's
noise when that interval excludes 0. Per-image outcomes (correct or not, for top-1) travel in the results records
as packed bits, so reports can do this without the backbones. Mean AUROC is not a per-image mean: AUROC rows
keep the overlap rule.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from hpt.errors import HptError
from hpt.eval.metrics import Interval, _resample_counts

RESAMPLES = 1000


def pack_outcomes(correct: np.ndarray) -> str:
    """Per-image 0/1 outcomes as base64 of packed bits (5,000 images: 836 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_outcomes(text: str, n: int) -> np.ndarray:
    """The first n outcomes of pack_outcomes' text, as a bool array."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if bits.size < n or bits[n:].any():
        raise HptError(f"per-image outcomes hold {bits.size} bits, which do not fit {n} test images")
    return bits[:n].astype(bool)


def mean_outcomes(packed: Sequence[str], n: int) -> np.ndarray:
    """Per-image accuracy averaged over seeds (each seed's packed outcomes on the same n test images)."""
    return np.mean([unpack_outcomes(text, n) for text in packed], axis=0)


def paired_difference_interval(a: np.ndarray, b: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0,
                               level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of mean(a) - mean(b), resampling the same images for both."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise HptError(f"paired outcomes must be two equal 1-D arrays, got shapes {a.shape} and {b.shape}")
    diff, n = a - b, a.size
    rng = np.random.default_rng(seed)
    values = np.concatenate([diff @ counts / n for counts in _resample_counts(rng, n, resamples)])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(float(low), float(high), float(level), int(resamples))
