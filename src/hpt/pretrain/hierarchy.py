"""The Base -> Source -> Target chain: a validated config, each stage starting from the previous stage's backbone."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hpt import distributed
from hpt.atomic import atomic_write_text, make_folder
from hpt.config import (
    apply_overrides,
    deep_merge,
    from_dict,
    load_yaml,
    to_dict,
    unknown_key_error,
)
from hpt.data import parse_data_spec
from hpt.errors import HptError
from hpt.eval.suite import EvalSuite, EvalSuiteConfig
from hpt.models import ResNet, build_backbone
from hpt.models.families import describe
from hpt.pretrain.config import StageConfig
from hpt.pretrain.stage import StageResult, run_stage

log = logging.getLogger("hpt")
HIERARCHY_FILE = "hierarchy.yaml"  # the config of the last run in OUT that passed its stages' checks


@dataclass
class BaseConfig:
    """Where the chain starts: 'random', a checkpoint file, or named public weights."""

    checkpoint: str = "random"
    arch: str | None = None  # None: the checkpoint's own (resnet50 for random)
    small_stem: bool | None = None  # 3x3 stride-1 stem without max-pool, for 28-64 px images
    width: int | None = None  # base width of layer1 (64 in torchvision)
    seed: int = 0  # seeds a random initialisation, so that re-runs reuse finished stages


@dataclass
class HierarchyConfig:
    base: BaseConfig = field(default_factory=BaseConfig)
    stages: list[StageConfig] = field(default_factory=list)
    out: str | None = None  # output folder (relative to the config file); --out overrides it
    eval: EvalSuiteConfig | None = None  # protocols run on the start backbone and after every stage

    def __post_init__(self) -> None:
        if not self.stages:
            raise HptError("the config has no stages; add at least one under 'stages:'")
        names = [s.name for s in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise HptError(f"stage names must be unique; repeated: {', '.join(duplicates)}")


STAGE_KEYS = {f for f in StageConfig.__dataclass_fields__}


def parse_hierarchy(raw: dict[str, Any], root: Path | None = None) -> HierarchyConfig:
    """Validate a raw config mapping. `defaults:` is merged under every stage; relative paths in data specs and
    the base checkpoint are resolved against `root` (the config file's folder), so configs hold no absolute paths."""
    raw = dict(raw)
    defaults = raw.pop("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise HptError("'defaults' must be a mapping of stage settings")
    for key in defaults:
        if key not in STAGE_KEYS:
            raise unknown_key_error(key, "defaults", STAGE_KEYS)
    stages = raw.get("stages")
    if not isinstance(stages, list):
        raise HptError("'stages' must be a list of stages, each with at least name, data and steps")
    merged = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise HptError(f"stages[{i}] must be a mapping, got {stage!r}")
        stage = deep_merge(defaults, stage)
        if root is not None and "data" in stage:
            stage["data"] = parse_data_spec(stage["data"]).resolved(root)
        merged.append(stage)
    raw["stages"] = merged
    base = raw.get("base")
    if root is not None and isinstance(base, dict) and isinstance(base.get("checkpoint"), str):
        candidate = root / base["checkpoint"]
        if candidate.exists():
            raw["base"] = {**base, "checkpoint": str(candidate)}
    for i, stage in enumerate(merged):  # name the stage in errors
        if not isinstance(stage.get("name"), str):
            raise HptError(f"stages[{i}] needs a 'name'")
    if raw.get("eval") is not None:
        raw["eval"] = _eval_defaults(raw["eval"], merged[-1], root)
    return from_dict(HierarchyConfig, raw)


def _eval_defaults(section: Any, last_stage: dict[str, Any], root: Path | None) -> dict[str, Any]:
    """eval.data defaults to the last stage's data (all of its train split), resolved like stage data;
    eval.image_size to the last stage's augment.image_size."""
    if not isinstance(section, dict):
        raise HptError("'eval' must be a mapping, e.g. {protocols: [linear], data: npz:target.npz}")
    section = dict(section)
    if section.get("data") is None and "data" in last_stage:
        section["data"] = parse_data_spec(last_stage["data"]).whole_train_split()
    elif section.get("data") is not None and root is not None:
        section["data"] = parse_data_spec(section["data"]).resolved(root)
    augment = last_stage.get("augment") or {}
    if section.get("image_size") is None and isinstance(augment, dict) and augment.get("image_size"):
        section["image_size"] = augment["image_size"]
    return section





def load_hierarchy(path: str | Path, overrides: list[str] | None = None) -> HierarchyConfig:
    """Read, override and validate a hierarchy YAML file."""
    path = Path(path)
    raw = apply_overrides(load_yaml(path), overrides or [])
    config = parse_hierarchy(raw, root=path.parent.resolve())
    if config.out is not None and not Path(config.out).is_absolute():
        config.out = str((path.parent / config.out).resolve())
    return config


@dataclass
class HierarchyResult:
    out_dir: Path
    stages: list[StageResult]
    wall_time_s: float


def run_hierarchy(config: HierarchyConfig, out_dir: str | Path | None = None, *, resume: bool = False) -> HierarchyResult:
    """Run every stage in order; finished stages are skipped, an interrupted one is resumed with resume=True."""
    out = Path(out_dir or config.out or "runs/hpt")
    info = distributed.init_distributed(config.stages[0].device)
    started = time.time()
    torch.manual_seed(config.base.seed)
    backbone, checkpoint_info = build_backbone(
        config.base.checkpoint, arch=config.base.arch, small_stem=config.base.small_stem, width=config.base.width
    )
    written = yaml.safe_dump(to_dict(config), sort_keys=False)
    if info.is_main:
        make_folder(out)
        if _fresh(out, config):  # nothing a check could refuse: record the config at once
            atomic_write_text(out / HIERARCHY_FILE, written)
        where = "random initialisation" if checkpoint_info is None else f"{checkpoint_info.format} {checkpoint_info.path}"
        log.info("base: %s (%s) from %s", config.base.checkpoint, describe(backbone), where)
    start = copy.deepcopy(backbone) if config.eval is not None and config.eval.start else None
    results = []
    for stage in config.stages:
        previous = results[-1].stage_dir if results else None
        results.append(run_stage(stage, backbone, out, resume=resume, info=info, previous_stage_dir=previous))
    if config.eval is not None and info.is_main:
        _evaluate(config, out, start, results)
    if info.is_main:  # the stages passed their checks (a refused re-run leaves the earlier config in place)
        _record_config(out / HIERARCHY_FILE, written)
    return HierarchyResult(out, results, time.time() - started)


def _fresh(out: Path, config: HierarchyConfig) -> bool:
    """No earlier run in `out`: no recorded config and none of the stages' folders."""
    return not (out / HIERARCHY_FILE).exists() and not any((out / s.name).exists() for s in config.stages)


def _record_config(path: Path, text: str) -> None:
    try:
        same = path.read_text() == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        atomic_write_text(path, text)


def _evaluate(config: HierarchyConfig, out: Path, start: ResNet | None, stages: list[StageResult]) -> None:
    """The eval section on the start backbone and on each stage's saved backbone (rank 0 only)."""
    assert config.eval is not None
    suite = EvalSuite(config.eval, out)
    if start is not None:
        fmt = "random" if config.base.checkpoint == "random" else "base checkpoint"
        suite.evaluate("start", start, config.base.checkpoint, fmt)
    for result in stages:
        model, _ = build_backbone(str(result.backbone_path))
        suite.evaluate(result.name, model, str(result.backbone_path), "safetensors")


def pretrain(
    base: str,
    data: str,
    steps: int,
    *,
    out: str | Path = "runs/pretrain",
    name: str = "target",
    train: str = "all",
    arch: str | None = None,
    small_stem: bool | None = None,
    width: int | None = None,
    resume: bool = False,
    **stage_settings: Any,
) -> HierarchyResult:
    """One stage from a base checkpoint on one data set: `hpt pretrain` in Python."""
    raw = {
        "base": {"checkpoint": base, "arch": arch, "small_stem": small_stem, "width": width},
        "stages": [{"name": name, "data": data, "steps": steps, "train": train, **stage_settings}],
    }
    return run_hierarchy(parse_hierarchy(raw), out, resume=resume)
