"""Time of the test-set bootstrap interval (1,000 seeded resamples) for accuracy and multi-label AUROC.

    python bench/bootstrap.py [--images 10000 --classes 20 --resamples 1000 --repeats 3]

Every evaluation of hpt computes one; the goal is a few seconds for 10,000 test images of 20 labels, so that
intervals never become the slow part of an evaluation. Prints the median over the repeats; nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hpt.eval.metrics import bootstrap_interval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    multi = (rng.random((args.images, args.classes)) < 0.2).astype(int)
    multi_scores = np.round(rng.random(multi.shape) + 0.5 * multi, 3)  # ties, as real scores have
    single = rng.integers(0, args.classes, args.images)
    single_scores = rng.random((args.images, args.classes))
    for name, scores, labels in (("top-1 accuracy", single_scores, single), ("mean AUROC", multi_scores, multi)):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            interval = bootstrap_interval(scores, labels, resamples=args.resamples)
            times.append(time.perf_counter() - start)
        print(f"{name}: {args.images:,} images, {args.classes} classes, {args.resamples} resamples: "
              f"median {statistics.median(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}); "
              f"interval [{interval.low:.4f}, {interval.high:.4f}]")


if __name__ == "__main__":
    main()
