"""One evaluation's record: the test score at best val per seed, its bootstrap interval, and the seeds' spread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpt.eval.curve import Curve
from hpt.eval.metrics import Interval, bootstrap_interval, evaluate, standard_error_top1, summarize_seeds
from hpt.eval.paired import pack_outcomes
from hpt.eval.splits import LabelledSplits

RESAMPLES = 1000


@dataclass
class SeedRun:
    """One classifier (or fine-tuning) run: test scores at the step chosen on val."""

    seed: int
    test_scores: np.ndarray  # (N_test, C) logits / scores at the selected step
    val: float  # val score at the selected step
    step: int | None  # the selected step (None for kNN)
    curve: Curve | None = None


class BestVal:
    """Scores val and test along a run, keeps the curve and the test scores at the first best val score."""

    def __init__(self, seed: int, splits: LabelledSplits) -> None:
        self.seed, self.splits, self.curve = seed, splits, Curve(seed)
        self._best: tuple[float, np.ndarray, int] | None = None

    def add(self, step: int, lr: float, val_scores: np.ndarray, test_scores: np.ndarray) -> float:
        """Record one evaluation point; returns the val score."""
        names = self.splits.class_names
        val = evaluate(val_scores, self.splits.val.labels, names).value
        self.curve.add(step, lr, val, evaluate(test_scores, self.splits.test.labels, names).value)
        if self._best is None or val > self._best[0]:
            self._best = (val, test_scores, step)
        return val

    def result(self) -> SeedRun:
        assert self._best is not None, "no evaluation point was recorded"
        val, test_scores, step = self._best
        return SeedRun(self.seed, test_scores, val, step, self.curve)


def summarize(protocol: str, runs: list[SeedRun], splits: LabelledSplits, *, settings: dict[str, Any],
              backbone: dict[str, Any], wall_time_s: float, bootstrap_seed: int = 0) -> dict[str, Any]:
    """The results.json record. With several seeds the headline is their mean test score (with their std),
    and each seed keeps its own bootstrap interval over the test images."""
    labels = splits.test.labels
    per_seed = []
    for run in runs:
        score = evaluate(run.test_scores, labels, splits.class_names)
        interval = bootstrap_interval(run.test_scores, labels, resamples=RESAMPLES, seed=bootstrap_seed)
        per_seed.append({"seed": run.seed, "test": score.value, "interval": [interval.low, interval.high],
                         "val": run.val, "step": run.step, "excluded_classes": list(score.excluded)})
    first = evaluate(runs[0].test_scores, labels, splits.class_names)
    values = [s["test"] for s in per_seed]
    mean, std = summarize_seeds(values)
    head = per_seed[0]
    record: dict[str, Any] = {
        "kind": "eval",
        "protocol": protocol,
        "metric": first.metric,
        "test": mean,
        "interval": head["interval"] if len(runs) == 1 else _mean_interval(per_seed),
        "interval_kind": f"95% percentile bootstrap over the {len(labels)} test images, {RESAMPLES} resamples"
                         + ("" if len(runs) == 1 else ", bounds averaged over seeds"),
        "seeds": {"count": len(runs), "mean": mean, "std": std, "runs": per_seed},
        "excluded_classes": list(first.excluded),
        "data": splits.spec.describe(),
        "splits": splits.record(),
        "backbone": backbone,
        "settings": settings,
        "wall_time_s": round(wall_time_s, 2),
    }
    if first.metric == "top1":
        record["standard_error"] = standard_error_top1(mean, len(labels))
        # per seed, which test images were right: reports compare two backbones on the same images (eval.paired)
        record["test_correct"] = [pack_outcomes(np.argmax(np.asarray(run.test_scores), axis=1) == labels)
                                  for run in runs]
    return record


def _mean_interval(per_seed: list[dict[str, Any]]) -> list[float]:
    return [float(np.mean([s["interval"][0] for s in per_seed])), float(np.mean([s["interval"][1] for s in per_seed]))]


def headline(record: dict[str, Any]) -> str:
    """One line for people: protocol, score with interval, seeds' spread, and the noise it carries."""
    metric = "top-1" if record["metric"] == "top1" else "mean AUROC"
    low, high = record["interval"]
    text = (f"{record['protocol']}: test {metric} {100 * record['test']:.2f}% "
            f"[95% CI {100 * low:.2f}-{100 * high:.2f}] on {record['splits']['sizes']['test']} test images")
    seeds = record["seeds"]
    if seeds["count"] > 1:
        text += f"; {seeds['count']} seeds: mean {100 * seeds['mean']:.2f} +- {100 * seeds['std']:.2f} (std)"
    if record.get("excluded_classes"):
        text += f"; left out (one-valued test labels): {', '.join(record['excluded_classes'])}"
    return text


def interval_of(record: dict[str, Any]) -> Interval:
    low, high = record["interval"]
    return Interval(low, high)
