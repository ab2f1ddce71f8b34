"""hpt's MoCo-v2 step against lightly's on the same architecture, image size, batch, queue, precision and threads.

    .venv-peers/bin/python bench/peers/lightly_moco.py [--res 32 --batch 256 --queue 4096 --width 64 --threads 2
        --rounds 3 --steps 20 --warmup 3 --workers N --data NPZ --sides hpt,lightly --tiny --out JSON]

The rounds alternate the sides (hpt first in odd rounds, lightly first in even ones) and each side runs in a fresh
process, so that its peak resident memory is its own. Prints each side's images/s per round, the ratio hpt/lightly
per round (above 1: hpt is faster) and its median, and each side's peak memory; --out also writes them as JSON.
The side environment with torchvision and lightly: bench/peers/setup_env.sh. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "data" / "cifar10_32.npz"
SIDES = ("hpt", "lightly")
#: --tiny: a quick check that both sides run (its figures mean nothing)
TINY = {"width": 8, "batch": 16, "queue": 64, "steps": 3, "warmup": 1, "rounds": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--res", type=int, default=32, help="side of the augmented views")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue", type=int, default=4096, help="negative keys (hpt: moco.queue_size; lightly: memory bank)")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: torchvision's resnet18)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each side")
    p.add_argument("--workers", type=int, default=None,
                   help="lightly's DataLoader workers (default: --threads); hpt augments in its training process")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="measured steps per side and round (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="an npz with train_images (N,H,W,3) uint8")
    p.add_argument("--sides", default=",".join(SIDES), help="which sides run: hpt,lightly, hpt or lightly")
    p.add_argument("--tiny", action="store_true", help=f"a quick check at {TINY} (unless set explicitly)")
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)  # run one side here, write --result
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.workers = args.threads if args.workers is None else args.workers
    args.sides = [s for s in SIDES if s in args.sides.split(",")]
    if not args.sides:
        p.error(f"--sides names none of {', '.join(SIDES)}")
    if args.queue % args.batch:
        p.error(f"--queue {args.queue} must be a multiple of --batch {args.batch} (hpt's queue takes whole batches)")
    if not args.data.is_file():
        p.error(f"no data at {args.data}; pass --data NPZ (an npz with train_images)")
    return args


def run_child(side: str) -> None:
    """One side, in this process: its images/s and its peak memory, written to --result."""
    args = parse_args()
    import torch
    from memory import peak_rss_mib

    torch.set_num_threads(args.threads)
    module = __import__(f"{side}_side")
    result = module.measure(args)
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    result["peak_rss_mib"] = peak_rss_mib()
    # the side's memory: the training process's peak, and the private memory of its loader workers beside it
    result["memory_mib"] = result["peak_rss_mib"] + result["workers_private_mib"]
    args.result.write_text(json.dumps(result, indent=2) + "\n")


def child_argv(args: argparse.Namespace) -> list[str]:
    return ["--res", str(args.res), "--batch", str(args.batch), "--queue", str(args.queue), "--width", str(args.width),
            "--threads", str(args.threads), "--workers", str(args.workers), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--data", str(args.data)]


def run_side(side: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One side in a fresh process; returns what it measured."""
    result = folder / f"{side}.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), *child_argv(args), "--child", side, "--result",
               str(result)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result.is_file():
        raise SystemExit(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    measured = json.loads(result.read_text())
    measured["process_wall_s"] = round(time.perf_counter() - start, 2)
    return measured


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "lightly", "kornia", "numpy", "pillow", "hpt"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def summarize(rounds: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for side in sides:
        summary[f"{side}_img_s_median"] = round(statistics.median(r[side]["img_s"] for r in rounds), 1)
        summary[f"{side}_memory_mib"] = round(max(r[side]["memory_mib"] for r in rounds), 1)
        summary[f"{side}_peak_rss_mib"] = round(max(r[side]["peak_rss_mib"] for r in rounds), 1)
        summary[f"{side}_workers_private_mib"] = round(max(r[side]["workers_private_mib"] for r in rounds), 1)
    if len(sides) == 2:
        summary["ratio_hpt_over_lightly_median"] = round(statistics.median(r["ratio"] for r in rounds), 3)
    return summary


def print_table(rounds: list[dict[str, Any]], sides: list[str], summary: dict[str, Any]) -> None:
    header = f"{'round':>6}  {'first':<8}" + "".join(f"{side + ' img/s':>14}{'MiB':>8}" for side in sides)
    print(header + (f"{'ratio':>8}" if len(sides) == 2 else ""))
    for r in rounds:
        line = f"{r['round']:>6}  {r['order'][0]:<8}"
        line += "".join(f"{r[s]['img_s']:>14.1f}{r[s]['memory_mib']:>8.0f}" for s in sides)
        print(line + (f"{r['ratio']:>8.3f}" if len(sides) == 2 else ""))
    line = f"{'median':>6}  {'':<8}" + "".join(
        f"{summary[f'{s}_img_s_median']:>14.1f}{summary[f'{s}_memory_mib']:>8.0f}" for s in sides)
    print(line + (f"{summary['ratio_hpt_over_lightly_median']:>8.3f}" if len(sides) == 2 else ""))
    print("MiB = peak resident memory of the training process + private memory of its loader workers (max over rounds)")
    for s in sides:
        print(f"  {s}: process peak {summary[f'{s}_peak_rss_mib']:.0f} MiB, workers "
              f"{summary[f'{s}_workers_private_mib']:.0f} MiB")
    if len(sides) == 2:
        print("ratio = hpt img/s / lightly img/s in the same round (above 1: hpt is faster)")


def main() -> None:
    args = parse_args()
    if "lightly" in args.sides and importlib.util.find_spec("lightly") is None:
        raise SystemExit("lightly is not installed in this environment: run bash bench/peers/setup_env.sh and use "
                         ".venv-peers/bin/python (or pass --sides hpt)")
    load_before = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(1, args.rounds + 1):
            order = args.sides if number % 2 else args.sides[::-1]
            entry: dict[str, Any] = {"round": number, "order": order}
            for side in order:
                entry[side] = run_side(side, args, Path(tmp))
                print(f"round {number}: {side:<8} {entry[side]['img_s']:9.1f} img/s   "
                      f"{entry[side]['memory_mib']:7.0f} MiB", flush=True)
            if len(args.sides) == 2:
                entry["ratio"] = round(entry["hpt"]["img_s"] / entry["lightly"]["img_s"], 4)
            rounds.append(entry)
    summary = summarize(rounds, args.sides)
    print_table(rounds, args.sides, summary)
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("child", "result", "out")},
        "precision": "fp32", "device": "cpu", "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "versions": versions(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds, "summary": summary,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        run_child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
