"""What this machine offers hpt: the torch build and its devices, the optional extras installed, where caches live
and whether hpt may write there. `hpt doctor` prints these checks; a Python user calls checks()."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hpt import __version__
from hpt.device import cache_root
from hpt.extras import EXTRAS, USES
from hpt.models.named import NAMED_WEIGHTS, default_cache_dir

# extra (pip install 'hpt[EXTRA]') -> the module it installs, and what it is for
LOW_DISK_BYTES = 5 * 2**30


@dataclass(frozen=True)
class Check:
    """One line of the report: `status` is 'ok', 'note' (worth knowing, nothing to fix) or 'problem'."""

    name: str
    status: str
    detail: str


def checks(out: Path | None = None) -> list[Check]:
    """Every check, in the order printed; `out` is the folder runs would be written to (default ./runs)."""
    found = [
        Check("hpt", "ok", f"{__version__} (Python {platform.python_version()}, {sys.platform})"),
        _torch_build(),
        *_devices(),
        *_extras(),
        _writable("hpt cache", cache_root(), "data statistics, folder listings, shard indexes, features; "
                  "set HPT_CACHE to move it"),
        _writable("weights cache", default_cache_dir(), _named_in_cache() + "; set TORCH_HOME to move it"),
        _writable("output folder", out if out is not None else Path("runs"), "where runs are written (--out)"),
    ]
    return found


def problems(found: list[Check]) -> list[Check]:
    """The checks that need the user's action."""
    return [check for check in found if check.status == "problem"]


def _torch_build() -> Check:
    cuda = torch.version.cuda
    build = f"CUDA {cuda}" if cuda else ("ROCm " + torch.version.hip if getattr(torch.version, "hip", None) else "CPU")
    return Check("torch", "ok", f"{torch.__version__}, {build} build, {torch.get_num_threads()} threads of "
                                f"{os.cpu_count()} CPUs")


def _devices() -> list[Check]:
    if torch.cuda.is_available():
        rows = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
            rows.append(Check(f"cuda:{index}", "ok", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {bf16}"))
        return rows
    if torch.version.cuda:
        return [Check("device", "note", "a CUDA build but no GPU visible: hpt runs on the CPU "
                                        "(check the driver and CUDA_VISIBLE_DEVICES)")]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return [Check("device", "note", "Apple GPU (mps) present; hpt trains on the CPU or CUDA only")]
    return [Check("device", "note", "CPU only: trainings run on the CPU (fine for small images; a GPU is "
                                    "much faster at 224 px)")]


def _extras() -> list[Check]:
    rows = []
    for module, extra in EXTRAS.items():
        purpose = USES[module]
        if importlib.util.find_spec(module) is not None:
            rows.append(Check(f"extra [{extra}]", "ok", f"{module} installed: {purpose}"))
        else:
            rows.append(Check(f"extra [{extra}]", "note",
                              f"{module} not installed; for {purpose}: pip install 'hpt[{extra}]'"))
    return rows


def _named_in_cache() -> str:
    cache = default_cache_dir()
    present = [name for name, entry in NAMED_WEIGHTS.items() if (cache / entry.filename).is_file()]
    return f"{len(present)} of {len(NAMED_WEIGHTS)} named weights present" + (f" ({', '.join(present)})"
                                                                               if present else "")


def _writable(name: str, folder: Path, purpose: str) -> Check:
    """Whether hpt can create files in `folder` (or create it below its nearest existing parent), and the free
    space there."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Check(name, "problem", f"{folder}: {existing} is not a folder; choose another place")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".hpt-doctor-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return Check(name, "problem", f"{folder}: cannot write there ({reason}); choose a writable place")
    free = shutil.disk_usage(existing).free
    where = f"{folder}" + ("" if existing == folder else " (will be created)")
    if free < LOW_DISK_BYTES:
        return Check(name, "note", f"{where}: only {free / 2**30:.1f} GiB free; {purpose}")
    return Check(name, "ok", f"{where}, {free / 2**30:.0f} GiB free; {purpose}")
