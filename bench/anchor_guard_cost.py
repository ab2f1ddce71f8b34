"""What the Base anchor and the guard cost: time per step and peak memory of a stage with and without them.

    python bench/anchor_guard_cost.py [--data npz:src/hpt/assets/fashion_demo.npz?split=train --steps 60
                                       --batch 128 --res 28 --guard-every 20 --repeats 2 --json FILE]

Runs the same stage (the demo's base and settings) as `plain`, `anchor` (anchor weight 1), `guard` (kNN on the
data's val split every --guard-every steps) and `anchor+guard`, each in its own process (so that its peak
resident memory is its own), the variants interleaved over --repeats rounds so that a slow spell of a shared
machine hits them alike. Prints, per variant, the median seconds per step (the stage's whole training loop,
guard readings included), its ratio to `plain`, and the peak RSS. Results are for docs/benchmarks.md; nothing
here is a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "src" / "hpt" / "assets" / "base_cifar10_w16.safetensors"
VARIANTS = {
    "plain": {},
    "anchor": {"anchor": {"weight": 1.0}},
    "guard": {"guard": "GUARD"},
    "anchor+guard": {"anchor": {"weight": 1.0}, "guard": "GUARD"},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=f"npz:{ROOT / 'src/hpt/assets/fashion_demo.npz'}?split=train")
    p.add_argument("--base", default=str(BASE))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--res", type=int, default=28)
    p.add_argument("--guard-every", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print its numbers
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def run_one(args: argparse.Namespace) -> None:
    """One stage of the variant `args.one` in this process; prints its seconds per step and peak RSS as JSON."""
    from hpt.pretrain.hierarchy import pretrain

    extra = {k: ({"every": args.guard_every} if v == "GUARD" else v) for k, v in VARIANTS[args.one].items()}
    result = pretrain(args.base, args.data, args.steps, out=args.out, name="bench", batch_size=args.batch,
                      device=args.device, checkpoint_every=10**9, log_every=10**9, precision="fp32",
                      augment={"image_size": args.res, "remove": ["gaussian_blur"]}, **extra)
    summary = result.stages[-1].summary
    print(json.dumps({"s_per_step": summary["train_time_s"] / summary["steps_this_run"],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    args = parse_args()
    if args.one:
        run_one(args)
        return
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in VARIANTS:
                out = Path(tmp) / f"{name}-{repeat}"
                command = [sys.executable, __file__, "--one", name, "--out", str(out), "--data", args.data,
                           "--base", args.base, "--steps", str(args.steps), "--batch", str(args.batch),
                           "--res", str(args.res), "--guard-every", str(args.guard_every), "--device", args.device]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                measured[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    plain = statistics.median(m["s_per_step"] for m in measured["plain"])
    result = {"settings": {k: str(v) for k, v in vars(args).items() if k not in ("one", "out")}, "variants": {}}
    print(f"{'variant':14s} {'s/step':>8s} {'x plain':>8s} {'peak RSS MiB':>13s}")
    for name, runs in measured.items():
        per_step = statistics.median(m["s_per_step"] for m in runs)
        peak = max(m["peak_rss_mib"] for m in runs)
        result["variants"][name] = {"s_per_step": round(per_step, 4), "x_plain": round(per_step / plain, 3),
                                    "peak_rss_mib": round(peak, 1), "runs": runs}
        print(f"{name:14s} {per_step:8.3f} {per_step / plain:8.2f} {peak:13.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
