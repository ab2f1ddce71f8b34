"""The experiment YAML: one Base, one labelled Target (and a Source), stage defaults, budgets, evaluation.

Every experiment kind (compare, sequential, augment, datasize, convergence, bases, sweep) reads the same file, so
one file describes a target and all of its studies; runs that several studies share are trained once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpt.augment import AUGMENTATIONS
from hpt.config import apply_overrides, from_dict, load_yaml
from hpt.data import DataSpec, parse_data_spec
from hpt.errors import HptError
from hpt.eval.suite import EvalSuiteConfig
from hpt.pretrain.config import RUNTIME_KEYS
from hpt.pretrain.hierarchy import STAGE_KEYS, BaseConfig

#: Stage settings an experiment sets itself for each variant (not in defaults, not swept).
FIXED_KEYS = frozenset({"name", "data", "steps", "train", "continue_method"})

#: The kinds of stage a recipe may set: Target's, HPT's, HPT-BN's, and the source stage.
RECIPE_KINDS = ("target", "hpt", "hpt_bn", "source")

#: The paper's augmentation-robustness ladder: each level removes more (cumulatively).
PAPER_AUGMENT_LEVELS: dict[str, list[str]] = {
    "all": [],
    "no grayscale": ["grayscale"],
    "no colour": ["grayscale", "color_jitter"],
    "crop+blur": ["grayscale", "color_jitter", "horizontal_flip"],
    "crop only": ["grayscale", "color_jitter", "horizontal_flip", "gaussian_blur"],
}


@dataclass
class Budgets:
    """Pretraining budgets in steps of one global batch (the paper's: HPT 50-50k, Target 5k-400k)."""

    hpt: int = 500
    hpt_bn: int = 500
    target: int = 5000
    source: int = 500
    bn_stats: int = 100  # batches used to re-estimate BatchNorm statistics for the Base variant
    hpt_lr: float | None = None  # lr of HPT's target stage (all weights, from a pretrained start); None: the stages'
    hpt_bn_lr: float | None = None  # HPT-BN's lr (the paper tried 0.003-0.1); None: the stages' lr
    hpt_head_warmup: int = 0  # HPT's and HPT-BN's head_warmup_steps (the new head alone first); Target keeps 0

    def __post_init__(self) -> None:
        for name in ("hpt", "hpt_bn", "target", "source", "bn_stats"):
            if getattr(self, name) < 1:
                raise HptError(f"budgets.{name} must be >= 1 step, got {getattr(self, name)}")
        for name in ("hpt_lr", "hpt_bn_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise HptError(f"budgets.{name} must be a learning rate > 0 (or left out), got {value}")


@dataclass
class SweepConfig:
    """The sweep experiment: HPT's stage run at each value of one setting (dotted for nested ones, e.g.
    moco.temperature), the value chosen on val."""

    setting: str
    values: list[Any]

    def __post_init__(self) -> None:
        top = self.setting.split(".")[0]
        swept = STAGE_KEYS - FIXED_KEYS - RUNTIME_KEYS - {"seed"}
        if top not in swept:
            raise HptError(f"sweep.setting '{self.setting}' is not a stage setting a sweep may vary (seeds: use "
                           f"'seeds:'; runtime settings change no result); valid: {', '.join(sorted(swept))}, "
                           "dotted for nested ones such as moco.temperature")
        if not self.values:
            raise HptError(f"sweep.values is empty; give the values of {self.setting} to try, e.g. "
                           "values: [0.01, 0.03, 0.1]")
        if len({repr(v) for v in self.values}) != len(self.values):
            raise HptError(f"sweep.values repeats a value ({self.values}); give each value once")


@dataclass
class ExperimentConfig:
    """What `hpt experiment KIND file.yaml` reads."""

    target: DataSpec  # labelled target data: its train split is pretrained on, its splits evaluate
    base: BaseConfig = field(default_factory=BaseConfig)
    source: DataSpec | list[DataSpec] | None = None  # for the sequential experiment: one source, or several candidates
    name: str = "experiment"
    out: str | None = None  # relative to the file; --out overrides
    # Where stage runs live (default OUT/stages): experiment files that name the same folder share runs, e.g. one
    # source stage serving the sequential studies of several targets.
    stages_dir: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # stage settings for every pretraining stage
    budgets: Budgets = field(default_factory=Budgets)
    eval: EvalSuiteConfig = field(default_factory=EvalSuiteConfig)
    include_random: bool = True  # a random-weights row: shows how much any pretraining adds
    augment_levels: dict[str, list[str]] = field(default_factory=lambda: dict(PAPER_AUGMENT_LEVELS))
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.25, 1.0])
    convergence_steps: list[int] = field(default_factory=lambda: [50, 100, 200, 400, 800])
    # budgets: one run per budget (the paper's); snapshots: backbones saved along the budgets.hpt and
    # budgets.target runs at these steps (cheaper; points share one cosine schedule, so they are not the same).
    convergence_mode: Literal["budgets", "snapshots"] = "budgets"
    bases: dict[str, str] = field(default_factory=dict)  # label -> checkpoint, for the bases experiment
    # Pretraining seeds: every variant that trains is run once per seed (seed 0 is the stages' own default, so its
    # runs are the ones made without this setting); reports show the mean and the spread over the seeds.
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: SweepConfig | None = None  # for the sweep experiment: one HPT setting and the values to try
    # Stage settings of one kind of stage over `defaults`: `target` (Target, from random weights: the baseline's
    # own from-scratch recipe), `hpt` (HPT's stage on the target), `hpt_bn`, `source` (the source stage of the
    # sequential experiment). E.g. recipes: {target: {moco: {head_bn: true}}, hpt: {anchor: {weight: 1.0}}}.
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target = parse_data_spec(self.target)
        if isinstance(self.source, list):
            self.source = [parse_data_spec(spec) for spec in self.source]
        elif self.source is not None:
            self.source = parse_data_spec(self.source)
        for key in self.defaults:
            if key not in STAGE_KEYS or key in FIXED_KEYS:
                raise HptError(f"defaults.{key} is not a stage setting an experiment may set; valid: "
                               f"{', '.join(sorted(STAGE_KEYS - FIXED_KEYS))}")
        for kind, settings in self.recipes.items():
            if kind not in RECIPE_KINDS:
                raise HptError(f"recipes.{kind}: not a kind of stage; valid: {', '.join(RECIPE_KINDS)}")
            for key in settings or {}:
                if key not in STAGE_KEYS or key in FIXED_KEYS:
                    raise HptError(f"recipes.{kind}.{key} is not a stage setting an experiment may set; valid: "
                                   f"{', '.join(sorted(STAGE_KEYS - FIXED_KEYS))}")
        for level, removed in self.augment_levels.items():
            unknown = [a for a in removed if a not in AUGMENTATIONS]
            if unknown:
                raise HptError(f"augment_levels['{level}']: unknown augmentation(s) {', '.join(unknown)}; "
                               f"valid: {', '.join(AUGMENTATIONS)}")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise HptError(f"fractions must lie in (0, 1], got {self.fractions}")
        if any(s < 1 for s in self.convergence_steps):
            raise HptError(f"convergence_steps must be >= 1, got {self.convergence_steps}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise HptError(f"seeds must be distinct integers >= 0 (pretraining seeds, e.g. [0, 1, 2]), got {self.seeds}")
        if isinstance(self.source, list) and not self.source:
            raise HptError("source is an empty list; give one data spec or a list of candidate sources")

    @property
    def sources(self) -> list[DataSpec]:
        """The source data specs (none, one, or several candidates)."""
        if self.source is None:
            return []
        return list(self.source) if isinstance(self.source, list) else [self.source]


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment file; relative paths are taken from the file's folder."""
    path = Path(path)
    raw = apply_overrides(load_yaml(path), overrides or [])
    return parse_experiment(raw, path.parent.resolve())


def parse_experiment(raw: dict[str, Any], root: Path | None = None) -> ExperimentConfig:
    raw = dict(raw)
    if "target" not in raw:
        raise HptError("the experiment has no 'target'; give the labelled target data, e.g. target: npz:target.npz")
    if root is not None:
        if raw.get("target") is not None:
            raw["target"] = parse_data_spec(raw["target"]).resolved(root)
        if isinstance(raw.get("source"), list):
            raw["source"] = [parse_data_spec(spec).resolved(root) for spec in raw["source"]]
        elif raw.get("source") is not None:
            raw["source"] = parse_data_spec(raw["source"]).resolved(root)
        base = raw.get("base")
        if isinstance(base, dict) and isinstance(base.get("checkpoint"), str) and (root / base["checkpoint"]).exists():
            raw["base"] = {**base, "checkpoint": str((root / base["checkpoint"]).resolve())}
        if isinstance(raw.get("bases"), dict):
            raw["bases"] = {k: str((root / v).resolve()) if (root / str(v)).exists() else v
                            for k, v in raw["bases"].items()}
        for key in ("out", "stages_dir"):
            if raw.get(key) is not None and not Path(raw[key]).is_absolute():
                raw[key] = str((root / raw[key]).resolve())
    section = dict(raw.get("eval") or {})
    if section.get("data") is not None and root is not None:
        section["data"] = parse_data_spec(section["data"]).resolved(root)
    section.setdefault("data", parse_data_spec(raw["target"]).whole_train_split())
    augment = (raw.get("defaults") or {}).get("augment") or {}
    if section.get("image_size") is None and isinstance(augment, dict) and augment.get("image_size"):
        section["image_size"] = augment["image_size"]
    raw["eval"] = section
    return from_dict(ExperimentConfig, raw)
