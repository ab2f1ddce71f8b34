"""Feature extraction speed of the evaluations: the backbone as trained vs its BatchNorm-folded channels_last copy.

    python bench/features.py [--arch resnet18 --small-stem --width 16 --res 28 --batch 256 --images 4096
                             --repeats 3 --device cpu --json FILE]

Every evaluation (linear, kNN, the convergence probes, source ranking) encodes its train, val and test images
once per backbone with `hpt.eval.features.extract_features`, which runs `hpt.models.inference.inference_copy`
of the backbone. This times, on the same random images (after one warm-up pass), images/s of
 1. the plain model in eval mode (what extraction ran before the folded copy),
 2. the folded copy (what it runs now),
and the largest absolute difference between their features. The median of the repeats is reported.
Results are for docs/benchmarks.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from hpt.models import build_resnet
from hpt.models.inference import inference_copy


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--res", type=int, default=28)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def images_per_s(encode: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor],
                 repeats: int, device: torch.device) -> float:
    """Median images/s of encoding every batch, over repeats (after one warm-up batch)."""
    rates = []
    with torch.no_grad():
        encode(batches[0])
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for x in batches:
                encode(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(sum(len(x) for x in batches) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_resnet(args.arch, small_stem=args.small_stem, width=args.width).to(device)
    with torch.no_grad():  # BatchNorm statistics away from their initial values, as after training
        model.train()
        for _ in range(3):
            model(torch.randn(args.batch, 3, args.res, args.res, device=device))
    model.eval()
    fused = inference_copy(model)
    batches = [torch.randn(min(args.batch, args.images - i), 3, args.res, args.res, device=device)
               for i in range(0, args.images, args.batch)]
    plain_rate = images_per_s(model, batches, args.repeats, device)
    fused_rate = images_per_s(lambda x: fused(x.contiguous(memory_format=torch.channels_last)), batches,
                              args.repeats, device)
    with torch.no_grad():
        diff = (model(batches[0]) - fused(batches[0].contiguous(memory_format=torch.channels_last))).abs().max()
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "plain_images_per_s": round(plain_rate, 1),
              "folded_images_per_s": round(fused_rate, 1), "speedup": round(fused_rate / plain_rate, 2),
              "max_abs_difference": float(diff)}
    print(f"plain eval model: {plain_rate:.1f} images/s | BatchNorm folded, channels_last: {fused_rate:.1f} "
          f"images/s | {fused_rate / plain_rate:.2f}x | largest feature difference {float(diff):.2e}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
