"""pretrain(): one stage from a base on one data set, `hpt pretrain` in Python, and what it returns.

The keywords are `hpt pretrain`'s options in snake_case, with their defaults (tests/api/test_signatures.py holds
the two together); `overrides` is `--set`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpt import distributed
from hpt.api.output import holding
from hpt.config import apply_overrides, nested
from hpt.errors import HptError
from hpt.pretrain import hierarchy
from hpt.pretrain.stage import StageResult
from hpt.report.stages import stages_summary

#: The keywords of pretrain() that set a stage setting, and the StageConfig key each sets (dotted into a section).
STAGE_SETTINGS: dict[str, str] = {
    "train": "train", "last_blocks": "last_blocks", "lora_rank": "lora.rank", "batch_size": "batch_size",
    "lr": "lr", "optimizer": "optimizer", "precision": "precision", "channels_last": "channels_last",
    "device": "device", "image_size": "augment.image_size", "remove_aug": "augment.remove",
    "queue_size": "moco.queue_size", "workers": "workers", "seed": "seed", "checkpoint_every": "checkpoint_every",
    "method": "method", "head_warmup_steps": "head_warmup_steps", "lr_warmup_steps": "lr_warmup_steps",
    "probe_data": "stop.data", "probe_every": "stop.every", "probe_patience": "stop.patience",
    "probe_margin": "stop.margin", "anchor_weight": "anchor.weight", "guard_every": "guard.every",
    "guard_signal": "guard.signal", "guard_on_drop": "guard.on_drop", "budget": "budget",
}

Overrides = Sequence[str] | Mapping[str, Any]


@dataclass(frozen=True)
class PretrainResult:
    """A finished run: its folder, each stage (hpt.pretrain.stage.StageResult) and the backbone it ends with."""

    out_dir: Path
    stages: tuple[StageResult, ...]
    wall_time_s: float

    @classmethod
    def of(cls, run: hierarchy.HierarchyResult) -> PretrainResult:
        return cls(Path(run.out_dir), tuple(run.stages), run.wall_time_s)

    @property
    def backbone_path(self) -> Path:
        """The last stage's backbone.safetensors: what --base, --backbone and export() take."""
        if not self.stages:
            raise HptError(f"the run in {self.out_dir} has no stages, so no backbone")
        return self.stages[-1].backbone_path

    @property
    def steps(self) -> dict[str, int]:
        """The steps each stage's backbone was trained for, by name (also for a stage reused as finished earlier)."""
        return {s.name: int(s.summary.get("steps_done", 0)) for s in self.stages}

    def summary(self) -> str:
        """What `hpt pretrain` prints at the end: a line per stage and the total wall time."""
        return stages_summary(hierarchy.HierarchyResult(self.out_dir, list(self.stages), self.wall_time_s))

    def __str__(self) -> str:
        return self.summary()


def stage_settings(values: Mapping[str, Any], *, stop_when_converged: bool = False, guard: bool = False,
                   overrides: Overrides = ()) -> dict[str, Any]:
    """The stage settings of pretrain()'s keywords (`values`, by the names of STAGE_SETTINGS): the early stop and
    the guard sections left out unless switched on (budget='auto' switches the guard on), then `overrides` over
    them: 'KEY=VALUE' items (the value read as YAML), or a mapping of dotted keys to values."""
    settings = nested({key: _plain(values[name]) for name, key in STAGE_SETTINGS.items()})
    if not stop_when_converged:
        settings["stop"] = None
    if not (guard or values["budget"] == "auto"):
        settings["guard"] = None
    if isinstance(overrides, Mapping):  # JSON is YAML: each value reads back as itself
        overrides = [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    elif isinstance(overrides, str):
        raise HptError(f"overrides must be a list of KEY=VALUE items or a mapping, not the string {overrides!r}")
    return apply_overrides(settings, list(overrides))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # repeated values: a list, as in YAML


def pretrain(
    base: str | Path,
    data: str,
    steps: int,
    *,
    train: str = "all",
    last_blocks: int = 0,
    lora_rank: int = 8,
    arch: str | None = None,
    small_stem: bool | None = None,
    width: int | None = None,
    out: str | Path = "runs/pretrain",
    name: str = "target",
    resume: bool = False,
    batch_size: int = 256,
    lr: float = 0.03,
    optimizer: str = "sgd",
    precision: str = "fp32",
    channels_last: bool = False,
    device: str = "auto",
    image_size: int | None = None,
    remove_aug: Sequence[str] = (),
    queue_size: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    checkpoint_every: int = 200,
    method: str = "mocov2",
    head_warmup_steps: int = 0,
    lr_warmup_steps: int = 0,
    stop_when_converged: bool = False,
    probe_data: str | None = None,
    probe_every: int = 100,
    probe_patience: int = 3,
    probe_margin: float | None = None,
    anchor_weight: float = 0.0,
    guard: bool = False,
    guard_every: int = 100,
    guard_signal: str = "auto",
    guard_on_drop: str = "stop",
    budget: str = "fixed",
    overrides: Overrides = (),
) -> PretrainResult:
    """Pretrain one stage from `base` on `data` for `steps` steps of one global batch: `hpt pretrain` in Python.

    base: 'random' (with arch), a checkpoint file, or named weights (e.g. 'torchvision:resnet50').
    data: a data spec, e.g. 'npz:PATH?split=train' or 'folder:PATH'.
    Writes OUT/NAME/backbone.safetensors (`result.backbone_path`); a finished stage in `out` is reused, and an
    interrupted one continued with resume=True. The other keywords are `hpt pretrain`'s options (see
    `hpt pretrain --help` and docs/guide.md); `overrides` sets any other stage setting, as --set does:
    ['moco.temperature=0.1'] or {'moco.temperature': 0.1}. Bad input raises hpt.errors.HptError.
    """
    arguments = dict(locals())
    values = {key: arguments[key] for key in STAGE_SETTINGS}
    settings = stage_settings(values, stop_when_converged=stop_when_converged, guard=guard, overrides=overrides)
    distributed.init_distributed(str(settings.get("device", "auto")))  # every rank learns whether OUT is free
    out = Path(out)
    with holding(out):
        run = hierarchy.pretrain(str(base), data, steps, out=out, name=name, arch=arch, small_stem=small_stem,
                                 width=width, resume=resume, **settings)
    return PretrainResult.of(run)
