"""Experiments expand into variants: a start backbone and a chain of stages, each stage addressed by its content.

A stage's id hashes the start and every stage setting up to it, so the same HPT run serves several
experiments and a chain B+S+T reuses the B+S stage it begins with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpt.config import deep_merge, from_dict
from hpt.data import DataSpec
from hpt.data.heldout import without_heldout
from hpt.errors import HptError
from hpt.experiments.config import ExperimentConfig
from hpt.experiments.family import NormTraining, norm_training, random_start
from hpt.models import file_sha256
from hpt.pretrain.config import TRAINING_MODES, StageConfig
from hpt.pretrain.hierarchy import BaseConfig

KINDS = ("compare", "sequential", "augment", "datasize", "convergence", "bases", "sweep")


@dataclass
class Variant:
    """One row of an experiment: `label` in series `series` at axis value `x`."""

    experiment: str
    label: str
    start: BaseConfig
    stages: list[StageConfig] = field(default_factory=list)
    series: str = ""
    x: Any = None
    snapshot: int | None = None  # evaluate the last stage's backbone saved at this step, not its final one
    setting: str | None = None  # the sweep experiment: the (dotted) stage setting whose value `x` is

    def stage_ids(self) -> list[str]:
        """Content ids: hash(start, stage 1..i settings) for every stage i."""
        ids, chain = [], [start_identity(self.start)]
        for stage in self.stages:
            chain.append(stage.semantic())
            digest = hashlib.sha256(json.dumps(chain, sort_keys=True, default=str).encode()).hexdigest()[:12]
            ids.append(f"{stage.name}-{digest}")
        return ids

    def result_id(self) -> str:
        """Where this variant's evaluation lives: its last stage, or its start when it trains nothing."""
        ids = self.stage_ids()
        if ids:
            return ids[-1]
        digest = hashlib.sha256(json.dumps(start_identity(self.start), sort_keys=True).encode()).hexdigest()[:12]
        return f"start-{digest}"

    def _trained(self) -> list[tuple[int, int]]:
        """(steps, batch size) of every gradient stage, the last one cut at the snapshot."""
        out = [(s.steps, s.batch_size) for s in self.stages if s.train in TRAINING_MODES]
        if self.snapshot is not None and out:
            out[-1] = (self.snapshot, out[-1][1])
        return out

    @property
    def steps(self) -> int:
        """Pretraining steps on top of the start (BatchNorm re-estimation is not counted: no gradient step)."""
        return sum(steps for steps, _ in self._trained())

    @property
    def images_seen(self) -> int:
        return sum(steps * batch for steps, batch in self._trained())

    @property
    def eval_name(self) -> str:
        """The evaluation folder: the last stage's name (or 'start'), and the snapshot step if any."""
        name = self.stages[-1].name if self.stages else "start"
        return name if self.snapshot is None else f"{name}-step{self.snapshot}"


def start_identity(start: BaseConfig) -> dict[str, Any]:
    """What the start backbone is: 'random' with its architecture and seed, or a file by its content hash."""
    ident: dict[str, Any] = {"checkpoint": start.checkpoint, "arch": start.arch, "small_stem": start.small_stem,
                             "width": start.width}
    if start.checkpoint == "random":
        ident["seed"] = start.seed
    elif Path(start.checkpoint).is_file():
        ident["checkpoint"] = file_sha256(Path(start.checkpoint))
    return ident



def expand(kind: str, config: ExperimentConfig) -> list[Variant]:
    """The variants of one experiment kind."""
    if kind not in KINDS:
        raise HptError(f"unknown experiment '{kind}'; choose from {', '.join(KINDS)}")
    variants = {"compare": _compare, "sequential": _sequential, "augment": _augment, "datasize": _datasize,
                "convergence": _convergence, "bases": _bases, "sweep": _sweep}[kind](config)
    if config.seeds == [0]:
        return variants
    return [_with_seed(v, seed) for v in variants for seed in (config.seeds if v.stages else config.seeds[:1])]


def _with_seed(variant: Variant, seed: int) -> Variant:
    """The variant with every stage run at pretraining seed `seed` (a seed of 0 leaves the stage ids as they are)."""
    return replace(variant, stages=[replace(stage, seed=seed) for stage in variant.stages])


class _Builder:
    """Makes stages and starts for one experiment config."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.target_data = self.pretraining_data(config.target)
        self._random: BaseConfig | None = None
        self._norm: NormTraining | None = None

    def pretraining_data(self, data: DataSpec) -> DataSpec:
        """The train split of `data`, without the images evaluation holds out of it as val/test (when the data has
        no such split and evaluation scores the same data)."""
        evaluated = self.config.eval.data or self.config.target
        return without_heldout(data.train_split(), evaluated, f"evaluation ({evaluated})")

    def stage(self, name: str, data: DataSpec, steps: int, train: str = "all", recipe: str | None = None,
              **extra: Any) -> StageConfig:
        """A stage: the defaults, then the recipe of its kind (target, hpt, hpt_bn, source), then `extra`."""
        settings = deep_merge(self.config.defaults, self.config.recipes.get(recipe or "") or {})
        settings = deep_merge(settings, {"name": name, "data": data, "steps": steps, "train": train})
        if self.config.convergence_mode == "snapshots" and train in TRAINING_MODES:
            # A runtime setting (not part of the stage's id): any run may later serve as a convergence curve.
            settings["keep_backbones"] = [k for k in self.config.convergence_steps if k < steps]
        settings = deep_merge(settings, extra)
        return from_dict(StageConfig, settings, "stage")

    def hpt_settings(self, lr: float | None) -> dict[str, Any]:
        """HPT's and HPT-BN's own settings from the budgets (only what is set, so that stage ids stay put)."""
        settings: dict[str, Any] = {"lr": lr} if lr is not None else {}
        if self.config.budgets.hpt_head_warmup:
            settings["head_warmup_steps"] = self.config.budgets.hpt_head_warmup
        return settings

    def base(self, checkpoint: str | None = None) -> BaseConfig:
        return replace(self.config.base, checkpoint=checkpoint) if checkpoint else self.config.base

    def random(self) -> BaseConfig:
        """Random weights of the base's architecture (Target's start; hpt.experiments.family.random_start)."""
        if self._random is None:
            self._random = random_start(self.config.base, batchnorm=self.norm().train == "bn")
        return self._random

    def norm(self) -> NormTraining:
        """How the HPT-BN row trains the base: BatchNorm affine (HPT-BN), or every norm layer's (HPT-norm) for a
        base without BatchNorm (hpt.experiments.family)."""
        if self._norm is None:
            self._norm = norm_training(self.config.base)
        return self._norm

    def base_variant(self, experiment: str, label: str = "Base", data: DataSpec | None = None,
                     checkpoint: str | None = None, **kw: Any) -> Variant:
        stats = self.stage("bn-stats", data or self.target_data, self.config.budgets.bn_stats, "bn-stats")
        return Variant(experiment, label, self.base(checkpoint), [stats], **kw)

    def hpt(self, experiment: str, label: str = "HPT", steps: int | None = None, data: DataSpec | None = None,
            start: BaseConfig | None = None, prefix: list[StageConfig] | None = None, **kw: Any) -> Variant:
        # the variant's own settings (an augmentation level, a swept value) over the budgets' HPT settings
        extra = deep_merge(self.hpt_settings(self.config.budgets.hpt_lr), kw.pop("stage_extra", {}))
        stage = self.stage("target", data or self.target_data, steps or self.config.budgets.hpt, "all", "hpt", **extra)
        return Variant(experiment, label, start or self.base(), [*(prefix or []), stage], **kw)

    def hpt_bn(self, experiment: str, steps: int | None = None, data: DataSpec | None = None, **kw: Any) -> Variant:
        extra = self.hpt_settings(self.config.budgets.hpt_bn_lr)
        norm = self.norm()
        stage = self.stage(norm.stage, data or self.target_data, steps or self.config.budgets.hpt_bn, norm.train,
                           "hpt_bn", **extra)
        return Variant(experiment, norm.label, self.base(), [stage], **kw)

    def target(self, experiment: str, steps: int | None = None, data: DataSpec | None = None, **kw: Any) -> Variant:
        extra = kw.pop("stage_extra", {})
        stage = self.stage("target", data or self.target_data, steps or self.config.budgets.target, "all", "target",
                           **extra)
        return Variant(experiment, "Target", self.random(), [stage], **kw)

    def random_variant(self, experiment: str) -> Variant:
        return Variant(experiment, "Random", self.random(), [])


def _compare(config: ExperimentConfig) -> list[Variant]:
    """Random, Base, Target, HPT and HPT-BN; HPT-norm instead of HPT-BN for a base without BatchNorm (a ViT, a
    ConvNeXt: hpt.experiments.family)."""
    b = _Builder(config)
    rows = [b.random_variant("compare")] if config.include_random else []
    return rows + [b.base_variant("compare"), b.target("compare"), b.hpt("compare"), b.hpt_bn("compare")]


def _sequential(config: ExperimentConfig) -> list[Variant]:
    """B, B+T, and B+S, B+S+T for each source (labelled by the source's file when there are several)."""
    if not config.sources:
        raise HptError("the sequential experiment needs a 'source' data set (or a list of them) in the experiment file")
    b = _Builder(config)
    target_stats = b.stage("bn-stats", b.target_data, config.budgets.bn_stats, "bn-stats")
    with_source, with_both = [], []
    for spec in config.sources:
        source = b.stage("source", b.pretraining_data(spec), config.budgets.source, "all", "source")
        suffix = f" ({source_name(spec)})" if len(config.sources) > 1 else ""
        with_source.append(Variant("sequential", f"B+S{suffix}", b.base(), [source, target_stats], series="B+S"))
        with_both.append(b.hpt("sequential", f"B+S+T{suffix}", prefix=[source], series="B+S+T"))
    return [b.base_variant("sequential", "B"), *with_source, b.hpt("sequential", "B+T"), *with_both]


def source_name(spec: DataSpec) -> str:
    """A short name of a data spec: its file or folder name without the extension."""
    return spec.path.stem


def _augment(config: ExperimentConfig) -> list[Variant]:
    b = _Builder(config)
    rows = []
    for level, removed in config.augment_levels.items():
        extra = {"augment": {"remove": list(removed)}}
        rows.append(b.hpt("augment", series="HPT", x=level, stage_extra=extra))
        rows.append(b.target("augment", series="Target", x=level, stage_extra=extra))
    return rows


def _datasize(config: ExperimentConfig) -> list[Variant]:
    b = _Builder(config)
    rows = []
    for fraction in config.fractions:
        data = b.target_data if fraction == 1 else replace(b.target_data, fraction=fraction)
        rows.append(b.hpt("datasize", data=data, series="HPT", x=fraction))
        rows.append(b.hpt_bn("datasize", data=data, series=b.norm().label, x=fraction))
        rows.append(b.target("datasize", data=data, series="Target", x=fraction))
        rows.append(b.base_variant("datasize", data=data, series="Base", x=fraction))
    return rows


def _convergence(config: ExperimentConfig) -> list[Variant]:
    b = _Builder(config)
    rows = [b.base_variant("convergence", series="HPT", x=0),
            replace(b.random_variant("convergence"), label="Target", series="Target", x=0)]
    if config.convergence_mode == "snapshots":
        for series, full in (("HPT", b.hpt("convergence", series="HPT")), ("Target", b.target("convergence"))):
            for steps in [k for k in config.convergence_steps if k < full.steps]:
                rows.append(replace(full, series=series, x=steps, snapshot=steps))
            rows.append(replace(full, series=series, x=full.steps))
        return rows
    for steps in config.convergence_steps:
        rows.append(b.hpt("convergence", steps=steps, series="HPT", x=steps))
        rows.append(b.target("convergence", steps=steps, series="Target", x=steps))
    return rows


def _bases(config: ExperimentConfig) -> list[Variant]:
    if not config.bases:
        raise HptError("the bases experiment needs 'bases:', a mapping of label -> checkpoint (weaker and stronger)")
    b = _Builder(config)
    rows = []
    for label, checkpoint in config.bases.items():
        rows.append(b.base_variant("bases", checkpoint=checkpoint, series="Base", x=label))
        rows.append(b.hpt("bases", start=b.base(checkpoint), series="HPT", x=label))
    return rows


def _sweep(config: ExperimentConfig) -> list[Variant]:
    """The Base, and HPT at each value of the swept setting (series HPT, x the value)."""
    if config.sweep is None:
        raise HptError("the sweep experiment needs 'sweep:', a stage setting of HPT and the values to try, e.g. "
                       "sweep: {setting: lr, values: [0.01, 0.03, 0.1]} (dotted for nested ones: moco.temperature)")
    b = _Builder(config)
    setting = config.sweep.setting
    rows = [b.base_variant("sweep")]
    for value in config.sweep.values:
        rows.append(b.hpt("sweep", series="HPT", x=value, setting=setting, stage_extra=nested(setting, value)))
    return rows


def nested(path: str, value: Any) -> dict[str, Any]:
    """{'moco': {'temperature': 0.1}} from 'moco.temperature' and 0.1."""
    settings: Any = value
    for part in reversed(path.split(".")):
        settings = {part: settings}
    return settings

