"""Score with kNN on val the backbones that stages guarded by the unlabelled rank signal ended with.

Usage: python scripts/score_rank_guarded.py OUT [OUT ...]   (each OUT an `hpt pretrain --out` folder of
configs/studies/run_agreement.sh)

The rank guard reads no labels, so on labelled data one can check what it kept: for every stage NAME_rank, the kNN
score (k=20, 1,000 labelled training images as memory, the val split scored: the guard's own kNN signal) of its
final backbone, against the start's - the backbone of a kNN-guarded stage of the same OUT that kept step 0 (it
ends rolled back to the start: the Base with its BatchNorm statistics re-estimated on the data) - with the 95%
paired bootstrap interval of the difference over the same val images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hpt.eval.paired import paired_difference_interval
from hpt.models import build_backbone
from hpt.pretrain.signals import LabelledSignal


def summary(stage: Path) -> dict:
    return json.loads((stage / "summary.json").read_text())


def main(outs: list[str]) -> None:
    print("| data | recipe | rank guard kept | val kNN of the start | val kNN of what the rank guard kept | "
          "difference (paired, 95%) |")
    print("|---|---|---|---|---|---|")
    for out in map(Path, outs):
        stages = [p.parent for p in sorted(out.glob("*/summary.json"))]
        starts = [s for s in stages if s.name.endswith("_knn") and summary(s)["guard"]["kept_step"] == 0]
        if not starts:
            continue
        signal = LabelledSignal(summary(starts[0])["data"], "knn", 1000, torch.device("cpu"))
        start = signal.read(build_backbone(str(starts[0] / "backbone.safetensors"))[0])
        for stage in (s for s in stages if s.name.endswith("_rank")):
            reading = signal.read(build_backbone(str(stage / "backbone.safetensors"))[0])
            diff = paired_difference_interval(reading.correct, start.correct)
            gain = reading.value - start.value
            verdict = "within noise" if diff.low <= 0 <= diff.high else "beyond noise"
            print(f"| {out.name} | {stage.name[:-5]} | step {summary(stage)['guard']['kept_step']} | "
                  f"{start.value:.3f} | {reading.value:.3f} | {100 * gain:+.1f} [{100 * diff.low:+.1f}, "
                  f"{100 * diff.high:+.1f}] points, {verdict} |")


if __name__ == "__main__":
    main(sys.argv[1:])
