"""Seeded subsets that keep the class balance of labelled data."""

from __future__ import annotations

import numpy as np


def stratified_choice(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k sorted indices, per-class quotas proportional to class sizes, at least one per class when k allows."""
    classes, counts = np.unique(labels, return_counts=True)
    n = int(counts.sum())
    exact = k * counts / n
    quota = np.floor(exact).astype(np.int64)
    if k >= len(classes):
        quota = np.maximum(quota, 1)
    remainder = exact - np.floor(exact)
    # Hand out (or take back) single images until the quotas add up to k; order is deterministic.
    while quota.sum() < k:
        room = quota < counts
        order = np.lexsort((-counts, -np.where(room, remainder, -np.inf)))
        c = order[0]
        quota[c] += 1
        remainder[c] = -1.0
    while quota.sum() > k:
        floor_ = 1 if k >= len(classes) else 0
        can = quota > floor_
        order = np.lexsort((counts, np.where(can, -quota, np.inf)))
        quota[order[0]] -= 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
              for c, q in zip(classes, quota, strict=True) if q > 0]
    return np.sort(np.concatenate(picked)).astype(np.int64)
