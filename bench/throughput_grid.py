"""MoCo-v2 step throughput for each precision and memory layout, in one process, with bench/throughput.py's
measurements (compute limit, full step, data path).

    python bench/throughput_grid.py [--arch resnet50 --no-small-stem --width 64 --res 224 --batch 256
                                     --precisions fp32,bf16 --layouts contiguous,channels_last --device cuda
                                     --steps 20 --warmup 5 --images 2048 --json FILE]

One synthetic npz data set serves every configuration; the data path (read + decode + two augmented views) does
not depend on precision or layout and is measured once. Prints one line per configuration: images/s at the
compute limit (query forward+backward and key forward on ready tensors), images/s of the full step as
`hpt pretrain` runs it, their ratio, and the peak GPU memory of that configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for throughput.py

import throughput

LAYOUTS = {"contiguous": False, "channels_last": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--res", type=int, default=224, help="side of the augmented views")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--layouts", default="contiguous,channels_last", help="comma-separated: contiguous, channels_last")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=2048, help="images in the synthetic data set")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    args.layouts = [x for x in args.layouts.split(",") if x]
    for value, allowed in ((args.precisions, ("fp32", "bf16", "fp16")), (args.layouts, tuple(LAYOUTS))):
        wrong = [x for x in value if x not in allowed]
        if wrong or not value:
            p.error(f"{', '.join(wrong) or 'nothing'}: choose from {', '.join(allowed)}")
    return args


def settings(args: argparse.Namespace, precision: str, layout: str) -> argparse.Namespace:
    """The options of bench/throughput.py for one configuration."""
    return argparse.Namespace(
        arch=args.arch, small_stem=args.small_stem, width=args.width, res=args.res, batch=args.batch,
        precision=precision, device=args.device, steps=args.steps, warmup=args.warmup, workers=args.workers,
        compile=False, channels_last=LAYOUTS[layout])


def measure(args: argparse.Namespace, device: torch.device, spec: str, folder: Path) -> list[dict[str, Any]]:
    rows = []
    for precision in args.precisions:
        for layout in args.layouts:
            one = settings(args, precision, layout)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            limit = throughput.compute_limit(one, device)
            step = throughput.full_step(one, spec, folder / f"run-{precision}-{layout}")
            row = {"precision": precision, "layout": layout, "compute_limit_img_s": round(limit, 1),
                   "full_step_img_s": round(step, 1), "full_over_limit": round(step / limit, 3)}
            if device.type == "cuda":
                row["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            rows.append(row)
            print(line(row), flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def line(row: dict[str, Any]) -> str:
    memory = f"{row['peak_cuda_mib']:9.0f} MiB" if "peak_cuda_mib" in row else "        -"
    return (f"{row['precision']:<5} {row['layout']:<13} compute limit {row['compute_limit_img_s']:9.1f} img/s   "
            f"full step {row['full_step_img_s']:9.1f} img/s = {row['full_over_limit']:.2f} x   peak GPU {memory}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    stem = "small stem" if args.small_stem else "standard stem"
    print(f"{name} | torch {torch.__version__} | {args.arch} ({stem}, width {args.width}) at {args.res} px, "
          f"batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, MoCo-v2", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = throughput.synthetic_data("npz", args.res, args.images, folder)
        rows = measure(args, device, spec, folder)
        data = throughput.data_path(settings(args, args.precisions[0], args.layouts[0]), spec, device)
    fastest = max(r["full_step_img_s"] for r in rows)
    print(f"data path (read + decode + two augmented views) {data:9.1f} img/s = {data / fastest:.1f} x the fastest "
          "full step", flush=True)
    if args.json:
        result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "device_name": name, "torch": torch.__version__, "rows": rows, "data_path_img_s": round(data, 1)}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
