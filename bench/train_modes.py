"""What each train mode costs: trainable parameters, step time and peak memory of `hpt pretrain`'s own step.

    python bench/train_modes.py [--arch vit_small_patch16_224 --res 224 --batch 32 --steps 5 --warmup 2
                                 --modes all,norm,lora,lora+1 --method mocov2 --optimizer sgd --json out.json]

Each mode runs in a process of its own (so that its peak resident memory is its own): a stage of warmup + steps
steps on synthetic images, exactly as `hpt pretrain --train MODE [--last-blocks N]` runs it; the step time is the
median over the measured steps of the stage's per-step metrics; the peak memory is the process's maximum resident
set (CPU) or torch's peak allocated memory (CUDA). Modes: all, bn, norm, lora, and MODE+N for --last-blocks N
(lora+1 is ExPLoRA's recipe). Results are for docs/benchmarks.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_small_patch16_224", help="any --arch hpt builds (random weights)")
    p.add_argument("--res", type=int, default=224, help="side of the augmented views")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--modes", default="all,norm,lora,lora+1", help="comma-separated: all, bn, norm, lora, MODE+N")
    p.add_argument("--method", default="mocov2")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print its JSON
    return p.parse_args()


def split_mode(mode: str) -> tuple[str, int]:
    """'lora+1' -> ('lora', 1); 'norm' -> ('norm', 0)."""
    name, _, blocks = mode.partition("+")
    return name, int(blocks or 0)


def run_one(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One stage in this process; its step times, what it trained and this process's peak memory."""
    from hpt.config import from_dict
    from hpt.models import build_random
    from hpt.pretrain.config import StageConfig
    from hpt.pretrain.stage import run_stage

    train, last_blocks = split_mode(mode)
    with tempfile.TemporaryDirectory() as tmp:
        images = np.random.default_rng(0).integers(0, 256, (max(4 * args.batch, 64), args.res, args.res, 3),
                                                   dtype=np.uint8)
        np.savez(Path(tmp) / "bench.npz", train_images=images)
        config = from_dict(StageConfig, {
            "name": "bench", "data": f"npz:{tmp}/bench.npz", "steps": args.warmup + args.steps,
            "batch_size": args.batch, "train": train, "last_blocks": last_blocks, "method": args.method,
            "optimizer": args.optimizer, "precision": args.precision, "device": args.device, "log_every": 1,
            "checkpoint_every": 10**9, "workers": 0, "augment": {"image_size": args.res}})
        torch.manual_seed(0)
        backbone = build_random(args.arch)
        total = sum(p.numel() for p in backbone.parameters())
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        result = run_stage(config, backbone, Path(tmp))
        with (Path(tmp) / "bench" / "metrics.csv").open(newline="") as handle:
            rates = [float(row["images_per_s"]) for row in csv.DictReader(handle)][args.warmup:]
    peak = (torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"mode": mode, "trained": result.summary.get("trained", ""), "backbone_parameters": total,
            "step_s": statistics.median(args.batch / r for r in rates), "images_per_s": statistics.median(rates),
            "peak_gib": peak, "peak_kind": "cuda allocated" if args.device.startswith("cuda") else "process RSS"}


def main() -> None:
    args = parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return
    rows = []
    for mode in args.modes.split(","):
        command = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"mode {mode} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.arch}, {args.res} px, batch {args.batch}, {args.method}, {args.optimizer}, {args.precision}, "
          f"{args.device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; median of {args.steps} steps after {args.warmup}")
    print("| mode | trained | step (s) | images/s | peak memory (GiB) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['trained']} | {row['step_s']:.2f} | {row['images_per_s']:.1f} | "
              f"{row['peak_gib']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
