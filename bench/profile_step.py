"""Where hpt's MoCo-v2 step spends its time: the real stage (`hpt pretrain`'s step, as bench/throughput.py's full
step runs it) under torch.profiler, its phases labelled by wrapping the functions that do them.

    python bench/profile_step.py [--width 64 --res 32 --batch 256 --queue 4096 --threads 2 --steps 6 --warmup 2]
                                 [--data NPZ] [--json FILE]

Prints, per measured step: the wall time, each phase's time and share (augmentation, momentum update, query and
key encoders, loss, enqueue, backward + optimizer, the metrics row, the finite check), then the operators with
the most self time. bench/peers/profile_lightly.py prints the same for lightly's step, so the two tables say
where one step loses to the other. A profiler adds its own overhead: read shares, not absolute speed (that is
bench/peers/lightly_moco.py's job).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_32.npz"
# (label, owner, attribute): the phases of a step, as the functions that do them
Phase = tuple[str, Any, str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="loader workers (lightly's side; hpt: npz in memory)")
    p.add_argument("--steps", type=int, default=6, help="profiled steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="operators listed")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", type=Path, default=None, help="also write the tables to this file")
    return p.parse_args(argv)


@contextlib.contextmanager
def labelled(phases: list[Phase]) -> Iterator[None]:
    """Each phase's function wrapped in record_function(label) while the block runs, restored after."""
    saved = [(owner, attribute, getattr(owner, attribute)) for _, owner, attribute in phases]
    for label, owner, attribute in phases:
        original = getattr(owner, attribute)

        def wrapped(*args: Any, __original: Callable[..., Any] = original, __label: str = label,
                    **kwargs: Any) -> Any:
            with record_function(__label):
                return __original(*args, **kwargs)

        functools.update_wrapper(wrapped, original)
        setattr(owner, attribute, wrapped)
    try:
        yield
    finally:
        for owner, attribute, original in saved:
            setattr(owner, attribute, original)


@contextlib.contextmanager
def stepped(owner: Any, attribute: str, warmup: int, steps: int) -> Iterator[profile]:
    """A CPU profiler over `steps` steps after `warmup`, each step ended by a call of owner.attribute, and the
    wall time of the profiled steps in profiler.step_times."""
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
                   record_shapes=False)
    original = getattr(owner, attribute)
    clock = {"last": time.perf_counter(), "count": 0}
    prof.step_times = []  # type: ignore[attr-defined]

    def ended(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        now = time.perf_counter()
        if warmup <= clock["count"] < warmup + steps:
            prof.step_times.append(now - clock["last"])  # type: ignore[attr-defined]
        clock["last"], clock["count"] = now, clock["count"] + 1
        prof.step()
        return result

    setattr(owner, attribute, ended)
    try:
        with prof:
            yield prof
    finally:
        setattr(owner, attribute, original)


def tables(prof: profile, phases: list[str], steps: int, top: int) -> dict[str, Any]:
    """Per-step milliseconds of each phase (its inclusive CPU time) and of the operators with the most self time."""
    events = prof.key_averages()
    by_name = {event.key: event for event in events}
    wall_ms = 1000 * sum(prof.step_times) / max(len(prof.step_times), 1)  # type: ignore[attr-defined]
    phase_ms = {name: by_name[name].cpu_time_total / 1000 / steps if name in by_name else 0.0 for name in phases}
    operators = sorted((e for e in events if e.key not in phases and not e.key.startswith("ProfilerStep")),
                       key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "wall_ms_per_step": wall_ms,
        "phases_ms": phase_ms,
        "operators_self_ms": {e.key: e.self_cpu_time_total / 1000 / steps for e in operators},
        "operators_calls": {e.key: e.count // steps for e in operators},
    }


def report(title: str, result: dict[str, Any], args: argparse.Namespace) -> None:
    """The tables on stdout, and with the settings in args.json when set."""
    print_tables(title, result)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, **result},
                                        indent=2) + "\n")


def print_tables(title: str, result: dict[str, Any]) -> None:
    wall = result["wall_ms_per_step"]
    print(f"{title}: {wall:.0f} ms per step (wall, under the profiler)")
    print(f"  {'phase':<28}{'ms/step':>10}{'share':>8}")
    for name, ms in result["phases_ms"].items():
        print(f"  {name:<28}{ms:>10.1f}{ms / wall:>8.1%}")
    print(f"  {'operator (self time)':<44}{'ms/step':>10}{'calls':>7}")
    for name, ms in result["operators_self_ms"].items():
        print(f"  {name[:44]:<44}{ms:>10.1f}{result['operators_calls'][name]:>7}")


def hpt_phases() -> list[Phase]:
    from hpt.augment import MocoAugment
    from hpt.methods import mocov2
    from hpt.pretrain import loop
    from hpt.pretrain.health import FiniteCheck
    from hpt.pretrain.progress import StepLog

    return [
        ("augment (both views)", MocoAugment, "forward"),
        ("method forward", mocov2.MocoV2, "forward"),
        ("momentum update", mocov2.MocoV2, "momentum_update"),
        ("key encoder", mocov2.MocoV2, "encode_keys"),
        ("loss", mocov2, "info_nce"),
        ("enqueue", mocov2.MocoV2, "enqueue"),
        ("backward + optimizer", loop, "optimizer_step"),
        ("metrics row", StepLog, "_row"),
        ("finite check", FiniteCheck, "check"),
    ]


def profile_hpt(args: argparse.Namespace) -> dict[str, Any]:
    """The tables of hpt's stage: MoCo-v2 with a queue of args.queue keys on the npz at args.data."""
    from hpt.config import from_dict
    from hpt.models import build_resnet
    from hpt.pretrain.config import StageConfig
    from hpt.pretrain.progress import StepLog
    from hpt.pretrain.stage import run_stage

    torch.set_num_threads(args.threads)
    config = from_dict(StageConfig, {
        "name": "profile", "data": f"npz:{args.data}", "steps": args.warmup + args.steps, "batch_size": args.batch,
        "log_every": 1, "checkpoint_every": 10**9, "augment": {"image_size": args.res},
        "moco": {"queue_size": args.queue}, "seed": 0,
    })
    backbone = build_resnet("resnet18", small_stem=True, width=args.width)
    phases = hpt_phases()
    with tempfile.TemporaryDirectory() as tmp, labelled(phases), \
            stepped(StepLog, "step", args.warmup, args.steps) as prof:
        run_stage(config, backbone, Path(tmp))
    return tables(prof, [label for label, _, _ in phases], args.steps, args.top)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = profile_hpt(args)
    report(f"hpt, resnet18 width {args.width}, {args.res} px, batch {args.batch}, queue {args.queue}, "
           f"{args.threads} threads", result, args)


if __name__ == "__main__":
    sys.exit(main())
