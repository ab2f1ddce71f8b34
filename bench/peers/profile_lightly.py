"""Where lightly's MoCo-v2 step spends its time: bench/peers/lightly_side.py's step under torch.profiler, its
phases labelled, printed in the same tables as bench/profile_step.py prints hpt's (run both with the same
settings, in the peer environment, to see where one step loses to the other).

    .venv-peers/bin/python bench/peers/profile_lightly.py [--width 64 --res 32 --batch 256 --queue 4096
                                                           --threads 2 --workers 2 --steps 6 --warmup 2]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for profile_step.py

import lightly_side
import profile_step
import torch
from lightly.loss import NTXentLoss


def lightly_phases() -> list[profile_step.Phase]:
    return [
        ("momentum update", lightly_side, "update_momentum"),
        ("query encoder", lightly_side.MoCo, "forward"),
        ("key encoder", lightly_side.MoCo, "forward_momentum"),
        ("loss", NTXentLoss, "forward"),
        ("backward", torch.Tensor, "backward"),
        ("optimizer", torch.optim.SGD, "step"),
    ]


def profile_lightly(args: Any) -> dict[str, Any]:
    """The tables of lightly's step (the step ends at the optimizer's zero_grad, its last call)."""
    torch.set_num_threads(args.threads)
    args.workers = args.threads if args.workers is None else args.workers
    phases = lightly_phases()
    with profile_step.labelled(phases), \
            profile_step.stepped(torch.optim.SGD, "zero_grad", args.warmup, args.steps) as prof:
        lightly_side.measure(args)
    return profile_step.tables(prof, [label for label, _, _ in phases], args.steps, args.top)


def main(argv: list[str] | None = None) -> None:
    args = profile_step.parse_args(argv)
    result = profile_lightly(args)
    profile_step.report(f"lightly, resnet18 width {args.width}, {args.res} px, batch {args.batch}, queue "
                        f"{args.queue}, {args.threads} threads, {args.workers} loader workers", result, args)


if __name__ == "__main__":
    sys.exit(main())
