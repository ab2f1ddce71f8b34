"""Memory per image of hpt's MoCo-v2 step: the peak memory of the full step (bench/throughput.py's, as `hpt
pretrain` runs it) at several batch sizes, each in a fresh process, and the straight line through them: a fixed
part (weights, optimizer state, queue, data, the runtime) plus so many MiB per image of the batch.

    python bench/memory_per_image.py [--arch resnet50 --res 224 --batches 8,16,32 --precision fp32 --device cpu
                                      --width 64 --small-stem/--no-small-stem --steps 2 --json FILE]

On the CPU the figure is the process's peak resident memory; on a GPU, torch's peak allocated device memory (the
resident memory is printed beside it). The batch a machine can hold is about (memory - fixed) / per image.
Results are for docs/benchmarks.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--res", type=int, default=224, help="side of the images and of the augmented views")
    p.add_argument("--batches", default="8,16,32", help="batch sizes, comma-separated (at least two)")
    p.add_argument("--queue", type=int, default=None, help="MoCo queue (default: the batch)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=2, help="steps after one warm-up step, per batch size")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one batch size, here
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batch_sizes = sorted({int(b) for b in args.batches.split(",")})
    if args.child is None and len(args.batch_sizes) < 2:
        p.error("--batches needs at least two batch sizes to fit the line")
    return args


def measure_one(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """Peak memory of the full step at `batch`, in this process."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput

    settings = argparse.Namespace(
        arch=args.arch, small_stem=args.small_stem, width=args.width, res=args.res, batch=batch,
        precision=args.precision, device=args.device, steps=args.steps, warmup=1, workers=0, compile=False,
        channels_last=False)
    with tempfile.TemporaryDirectory() as tmp:
        spec = throughput.synthetic_data("npz", args.res, 2 * batch, Path(tmp))
        rate = throughput.full_step(settings, spec, Path(tmp) / "run", moco={"queue_size": args.queue or batch})
    result = {"batch": batch, "img_s": rate,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.device(args.device).type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed MiB, MiB per image): the least-squares line through (batch, MiB)."""
    batches, mib = np.array([b for b, _ in points], float), np.array([m for _, m in points], float)
    slope, intercept = np.polyfit(batches, mib, 1)
    return float(intercept), float(slope)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        args.result.write_text(json.dumps(measure_one(args, args.child)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch_sizes:
            result = Path(tmp) / f"batch{batch}.json"
            command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                       "--child", str(batch), "--result", str(result)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"the step at batch {batch} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(result.read_text()))
    key = "peak_cuda_mib" if "peak_cuda_mib" in rows[0] else "peak_rss_mib"
    fixed, per_image = fit([(row["batch"], row[key]) for row in rows])
    print(f"{args.arch} {'small stem ' if args.small_stem else ''}width {args.width}, {args.res} px, "
          f"{args.precision} on {args.device}: peak {'device memory' if key == 'peak_cuda_mib' else 'RSS'}")
    for row in rows:
        print(f"  batch {row['batch']:4d}: {row[key]:9.1f} MiB   ({row['img_s']:.1f} img/s)")
    print(f"  fixed {fixed:9.1f} MiB + {per_image:.1f} MiB per image")
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "child", "result")},
            "python": platform.python_version(), "measured": key, "rows": rows,
            "fixed_mib": round(fixed, 1), "mib_per_image": round(per_image, 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
