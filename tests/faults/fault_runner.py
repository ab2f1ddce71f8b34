"""Run the `hpt` command line with a fault injected into the training loop, from outside the product.

    python tests/faults/fault_runner.py [FAULT OPTIONS] -- HPT ARGUMENTS

--signal KILL|INT|TERM --after-step N sends that signal to this process at a moment of training step N of a stage
(1-based as in metrics.csv, counted from step 0 of the stage also in a resumed run; the first stage to reach it):
  --moment between    after step N is finished (its saves written), as step N+1 begins (its batch already read;
                      the default)
  --moment optimizer  right after the optimizer step of step N, before the loop has counted it
  --moment forward    in the middle of the forward pass of step N+1 (as its second BatchNorm starts)
--probe-scores-by-rank makes the convergence probe score differently on each rank (under torchrun): rank 0's
scores stay flat (it would stop at the first chance), the other ranks' rise every time (they never would).

The loop is reached through what it calls once per step: hpt.pretrain.loop.step_seed (the seed of step `step`,
0-based, at the start of that step), torch's global optimizer-step and module-forward hooks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import hpt.pretrain.loop
from hpt.cli import main
from hpt.pretrain.early_stop import OnlineProbe

BATCHNORM_CALLS = 2  # the signal comes as the second BatchNorm of the forward starts: the first has updated its
# running statistics, the rest of the forward (the key encoder, the queue) has not run


def inject_signal(signum: int, after_step: int, moment: str) -> None:
    """Send `signum` to this process at `moment` of step `after_step` (see the module's docstring)."""
    original_step_seed = hpt.pretrain.loop.step_seed
    fired = {"done": False}
    armed = {"optimizer": False, "forward": False, "calls": 0}

    def fire() -> None:
        fired["done"] = True
        os.kill(os.getpid(), signum)

    def after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        if armed["optimizer"] and not fired["done"]:
            armed["optimizer"] = False
            fire()

    def in_forward(module: Any, args: Any) -> None:
        if armed["forward"] and not fired["done"] and isinstance(module, torch.nn.BatchNorm2d):
            armed["calls"] += 1
            if armed["calls"] == BATCHNORM_CALLS:
                fire()

    def step_seed(seed: int, step: int, rank: int) -> int:
        if not fired["done"]:
            if moment == "between" and step == after_step:
                fire()
            armed["optimizer"] = moment == "optimizer" and step == after_step - 1
            armed["forward"] = moment == "forward" and step == after_step
        return original_step_seed(seed, step, rank)

    hpt.pretrain.loop.step_seed = step_seed
    register_optimizer_step_post_hook(after_optimizer_step)
    torch.nn.modules.module.register_module_forward_pre_hook(in_forward)


def probe_scores_by_rank() -> None:
    """Rank 0's probe scores 0.5 at every step; every other rank's score rises with the step."""
    rank = int(os.environ.get("RANK", "0"))

    def score(self: OnlineProbe, step: int, backbone: torch.nn.Module) -> float:
        value = 0.5 if rank == 0 else 0.5 + 0.01 * step
        self.history.append((step, value))
        return value

    OnlineProbe.score = score  # type: ignore[method-assign]


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signal", choices=["KILL", "INT", "TERM"])
    parser.add_argument("--after-step", type=int)
    parser.add_argument("--moment", choices=["between", "optimizer", "forward"], default="between")
    parser.add_argument("--probe-scores-by-rank", action="store_true")
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if args.signal:
        if not args.after_step or args.after_step < 1:
            parser.error("--signal needs --after-step N (N >= 1)")
        inject_signal(getattr(signal, f"SIG{args.signal}"), args.after_step, args.moment)
    if args.probe_scores_by_rank:
        probe_scores_by_rank()
    main(argv[split + 1:])


if __name__ == "__main__":
    run(sys.argv[1:])
