"""The resume state of a stage: written atomically, read back without running pickled code."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.atomic import atomic_write
from hpt.errors import HptError
from hpt.models.formats import torch_load_safely, unreadable_pickle

STATE_FILE = "last.pt"


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
