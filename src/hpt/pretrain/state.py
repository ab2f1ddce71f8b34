"""The resume state of a stage: written atomically, read back without running pickled code.

state/last.pt holds the step, the method's weights (state_dict: backbone, heads, momentum encoders, queue), the
optimizer, the loss scaler, every random number generator, the settings, what the method recorded when built
(queue_size) and, where the stage has them, the probe's history and the guard's state. The guard keeps the state
of its best reading in guard-kept/ beside it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt import distributed
from hpt.atomic import atomic_write
from hpt.errors import HptError
from hpt.methods import Method
from hpt.models.formats import torch_load_safely, unreadable_pickle

STATE_FILE = "last.pt"
KEPT_DIR = "guard-kept"  # the guard's kept state, beside state/


def rng_state() -> dict[str, Any]:
    """Every random number generator's state, as tensors and plain Python values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(state_dir: Path, state: dict[str, Any]) -> Path:
    """Write the resume state atomically to state_dir/last.pt."""
    path = state_dir / STATE_FILE
    atomic_write(path, lambda handle: torch.save({"hpt_state": 1, **state}, handle))
    return path


def load_state(state_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The saved resume state, or None when there is none. Loaded with weights_only=True."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    fix = f"delete the folder {state_dir} to start the stage again, or restore {STATE_FILE} from a backup"
    try:
        state = torch_load_safely(path, map_location)
    except Exception as err:  # noqa: BLE001 - damaged bytes fail anywhere in torch's zip and pickle readers
        what = unreadable_pickle(path, err) or "is corrupt or truncated"
        raise HptError(f"the resume state {path} {what}; {fix}") from None
    if not isinstance(state, dict) or state.get("hpt_state") != 1:
        raise HptError(f"{path} is not an hpt resume state; {fix}")
    return state


class Saver:
    """Writes the stage's resume state (or the guard's kept state) on rank 0; every rank waits for it."""

    def __init__(self, stage_dir: Path, method: Method, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, semantic: dict[str, Any], info: distributed.DistInfo,
                 last_step: int | None = None) -> None:
        self.stage_dir, self.method, self.optimizer, self.scaler = stage_dir, method, optimizer, scaler
        self.semantic, self.info = semantic, info
        self.last_step = last_step  # the step of the resume state in state/ (None: none)

    def save(self, step: int, extra: dict[str, Any] | None = None, folder: str = "state") -> None:
        if self.info.is_main:
            save_state(self.stage_dir / folder, {
                "step": step, "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "semantic": self.semantic,
                **self.method.recorded(), **(extra or {}),
            })
        if folder == "state":
            self.last_step = step
        distributed.barrier()
