"""What the loop reads from the backbone between steps, and what it does with it: the convergence probe (stop
when it stops improving, early_stop.py) and the guard (keep the best state, roll back on a drop, guard.py). Rank 0
reads; every rank takes its decision."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

from hpt import distributed
from hpt.augment import EvalTransform
from hpt.data import make_eval_loader
from hpt.errors import HptError
from hpt.methods import Method
from hpt.models import ResNet
from hpt.pretrain.batchnorm import reestimate_bn_statistics
from hpt.pretrain.config import StageConfig
from hpt.pretrain.early_stop import OnlineProbe
from hpt.pretrain.guard import Guard
from hpt.pretrain.state import KEPT_DIR, Saver, load_state

log = logging.getLogger("hpt")


def start_probe(config: StageConfig, state: dict[str, Any] | None, start_step: int, backbone: ResNet,
                device: torch.device) -> OnlineProbe | None:
    """The convergence probe (stop:) with its history so far; a stage from step 0 scores its start first."""
    if config.stop is None:
        return None
    probe = OnlineProbe(config.stop, config.stop.data or config.data, device)
    probe.history = [tuple(item) for item in (state or {}).get("probe_history", [])]
    if start_step == 0 and not probe.history:  # the start's score: a stage that never beats it is said so
        probe.decide(0, backbone, config.name)
    return probe


def probe_stop(probe: OnlineProbe, step: int, config: StageConfig, backbone: ResNet) -> dict[str, Any] | None:
    """Score the probe at `step` (rank 0's decision, on every rank): where to stop and why, or None."""
    decision = probe.decide(step, backbone, config.name)
    if not decision.stop:
        return None
    return {"step": step, "reason": decision.reason, "steps_saved": config.steps - step,
            "probe_history": probe.history}


def start_guard(guard: Guard, config: StageConfig, method: Method, optimizer: torch.optim.Optimizer, saver: Saver,
                info: distributed.DistInfo, dataset: Any, per_rank: int, mean: Any, std: Any, side: int) -> None:
    """The guard's reading of the start (step 0), after the start's BatchNorm statistics are re-estimated on the
    stage's images (as the Base baseline has them), so that this reading - and a roll-back to it - is the Base at
    its best. Training uses batch statistics, so this changes only the running statistics the stage starts from."""
    assert config.guard is not None
    batches = (images for images, _ in itertools.islice(make_eval_loader(dataset, per_rank), config.guard.bn_batches))
    transform = EvalTransform(mean, std, side).to(info.device)
    seen = reestimate_bn_statistics(method.backbone, batches, transform, info.device)
    log.info("%s: the start's BatchNorm statistics re-estimated over %d batches before the guard's first reading",
             config.name, seen)
    guard_check(guard, 0, config, method, optimizer, saver, info)


def guard_check(guard: Guard, step: int, config: StageConfig, method: Method, optimizer: torch.optim.Optimizer,
                saver: Saver, info: distributed.DistInfo) -> bool:
    """Read the signal (rank 0), act on the guard's decision on every rank; True when the stage stops here."""
    action = None
    if info.is_main:
        action = guard.observe(step, guard.read(step, method.backbone), config.steps)
        log.info("%s step %d: guard: %s", config.name, step, action.message)
    action, guard.reason = distributed.broadcast_object((action, guard.reason))  # rank 0's, taken by every rank
    guard.lr_scale = action.lr_scale
    if action.keep:
        saver.save(step, {"guard": guard.state()}, KEPT_DIR)
    if action.rollback:
        kept = load_state(saver.stage_dir / KEPT_DIR)
        if kept is None:
            raise HptError(f"the guard's kept state in {saver.stage_dir / KEPT_DIR} is missing; delete "
                           f"{saver.stage_dir} and train the stage again")
        method.load_state_dict(kept["model"])
        optimizer.load_state_dict(kept["optimizer"])
        log.info("%s step %d: rolled back to the guard's kept step %d", config.name, step, int(kept["step"]))
    return action.stop


def guard_stop(guard: Guard, step: int, config: StageConfig, method: Method, optimizer: torch.optim.Optimizer,
               saver: Saver, info: distributed.DistInfo) -> dict[str, Any] | None:
    """The guard's reading at `step`: where to stop and why (before the last step), or None."""
    if guard_check(guard, step, config, method, optimizer, saver, info) and step < config.steps:
        return {"step": step, "reason": guard.reason, "steps_saved": config.steps - step}
    return None
