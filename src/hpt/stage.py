"""One pretraining stage: its settings, its train modes (all / bn / bn-stats / none), reuse, resume and refusal.

A stage starts from a backbone (the Base or the previous stage's), trains it on one data set with a fresh head and
queue (or the previous stage's, with continue_method; the loop is in stage_loop.py), and writes OUT/<stage>/:
backbone.safetensors, state/ (resume), metrics.csv, config.yaml, summary.json.
summary.json is written last: its presence marks the stage finished, and a finished stage is never retrained.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from tqdm import tqdm

from hpt import distributed
from hpt.atomic import atomic_write
from hpt.augment import AugmentConfig, EvalTransform
from hpt.config import to_dict
from hpt.convergence import StopConfig
from hpt.data import moved_data, parse_data_spec
from hpt.errors import HptError
from hpt.methods import BYOLConfig, MocoV2Config, SimCLRConfig
from hpt.metrics_log import append_result
from hpt.models import (
    ResNet,
    SplitBatchNorm2d,
    load_backbone,
    save_backbone,
    weights_sha256,
)
from hpt.pretrain.anchor import AnchorConfig
from hpt.pretrain.batchnorm import reestimate_bn_statistics
from hpt.pretrain.guard import GuardConfig
from hpt.resume import load_state
from hpt.stage_loop import per_rank_batch, prepare_data, set_trainable, train_ssl

log = logging.getLogger("hpt")

TrainMode = Literal["all", "bn", "bn-stats", "none"]
#: Config keys that change how a stage runs but not what it computes; they may differ on resume.
RUNTIME_KEYS = frozenset({"device", "workers", "checkpoint_every", "log_every", "keep_backbones", "compile"})


@dataclass
class StageConfig:
    """One stage of the hierarchy (recipe defaults)."""

    name: str
    data: Any  # a data spec string or mapping (see hpt.data.parse_data_spec)
    steps: int  # budget in optimizer steps of one global batch
    train: TrainMode = "all"
    method: Literal["mocov2", "simclr", "byol"] = "mocov2"
    batch_size: int = 256  # global batch (all processes together)
    lr: float = 0.03  # for a global batch of lr_reference_batch; scaled linearly with the real global batch
    lr_reference_batch: int = 256
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    moco: MocoV2Config = field(default_factory=MocoV2Config)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    stop: StopConfig | None = None  # stop early when an online probe has converged (--stop-when-converged)
    batchnorm: Literal["shuffle", "sync"] = "shuffle"  # shuffle-BN (MoCo), or SyncBatchNorm over all GPUs
    compile: bool = False  # torch.compile the model (see docs/BENCHMARKS.md for where it pays)
    device: str = "auto"
    seed: int = 0
    workers: int | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    keep_backbones: list[int] = field(default_factory=list)  # also save backbone-step<N>.safetensors at these steps
    # Train only the method's new head (backbone lr 0) for the first steps, so that gradients through a random head
    # do not wreck a pretrained backbone; then every trainable weight, with fresh SGD momentum for the backbone.
    head_warmup_steps: int = 0
    # Raise the learning rate linearly from 0 over the first steps, then the cosine decay over the rest (the warm-up
    # of MoCo v3 / SimCLR): a new head meets the full lr only once it has learned something.
    lr_warmup_steps: int = 0
    # Start the method's head, key (or target) encoder and queue from the previous stage's final state instead of
    # new ones: a longer run of the same method on the same kind of data, with a restarted learning-rate schedule.
    continue_method: bool = False
    # A distillation term to the stage's starting backbone (frozen), next to the method's loss: anchor: {weight: 1.0}.
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    # Read a validation signal every guard.every steps, keep the best checkpoint, roll back on a drop beyond noise.
    guard: GuardConfig | None = None
    # auto: stop once the guard's signal stops improving beyond noise (steps is then the cap); needs no guard:
    # section (a default guard is used).
    budget: Literal["fixed", "auto"] = "fixed"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise HptError(f"stage name {self.name!r} may only hold letters, digits, '_', '.' and '-'")
        if self.steps <= 0:
            raise HptError(f"stage '{self.name}': steps must be > 0, got {self.steps}")
        if self.batch_size <= 0:
            raise HptError(f"stage '{self.name}': batch_size must be > 0, got {self.batch_size}")
        if self.checkpoint_every <= 0 or self.log_every <= 0:
            raise HptError(f"stage '{self.name}': checkpoint_every and log_every must be > 0")
        if not 0 <= self.head_warmup_steps < self.steps:
            raise HptError(f"stage '{self.name}': head_warmup_steps must be >= 0 and below steps ({self.steps}), "
                           f"got {self.head_warmup_steps}")
        if not 0 <= self.lr_warmup_steps < self.steps:
            raise HptError(f"stage '{self.name}': lr_warmup_steps must be >= 0 and below steps ({self.steps}), "
                           f"got {self.lr_warmup_steps}")
        if self.budget == "auto" and self.guard is None:
            self.guard = GuardConfig()
        if (self.anchor.active or self.guard is not None) and self.train not in ("all", "bn"):
            raise HptError(f"stage '{self.name}': anchor and guard need a training stage (train: all or bn), "
                           f"not train: {self.train}")
        self.data = parse_data_spec(self.data).describe()

    def semantic(self) -> dict[str, Any]:
        """The settings that determine the result (compared on resume and on re-runs). Settings added to hpt
        later are left out while they hold their defaults, so that the ids of earlier runs stay the same; the
        comparison (same_settings) reads a missing one as its default."""
        settings = {k: v for k, v in to_dict(self).items() if k not in RUNTIME_KEYS}
        _drop_defaults(settings, LATER_DEFAULTS)
        return settings


def _drop_defaults(settings: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Remove from `settings` (in place) every setting that holds its default, looking into nested ones."""
    for key, default in defaults.items():
        value = settings.get(key)
        if value == default:
            settings.pop(key)
        elif isinstance(default, dict) and isinstance(value, dict):
            _drop_defaults(value, default)


#: Settings added after the first runs, with their defaults: absent from a saved run's settings means the default.
LATER_DEFAULTS: dict[str, Any] = {"head_warmup_steps": 0, "lr_warmup_steps": 0, "continue_method": False,
                                  "anchor": to_dict(AnchorConfig()), "guard": None, "budget": "fixed",
                                  "moco": {"head_bn": False}}


@dataclass
class StageResult:
    name: str
    stage_dir: Path
    backbone_path: Path
    skipped: bool
    summary: dict[str, Any]


def run_stage(
    config: StageConfig,
    backbone: ResNet,
    out_dir: Path,
    *,
    resume: bool = False,
    info: distributed.DistInfo | None = None,
    previous_stage_dir: Path | None = None,
) -> StageResult:
    """Run (or skip, if finished, or resume) one stage; `backbone` is updated in place and also saved.

    previous_stage_dir: the stage before this one, whose final method state `continue_method` starts from.
    """
    info = info or distributed.init_distributed(config.device)
    stage_dir = Path(out_dir) / config.name
    summary_path = stage_dir / "summary.json"
    init_sha = weights_sha256(backbone)
    semantic = {**config.semantic(), "init_sha256": init_sha}

    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        _check_same(summary["config"], semantic, stage_dir, "finished")
        load_backbone(backbone, stage_dir / "backbone.safetensors")
        log.info("stage '%s' is finished (%s); skipping it", config.name, summary_path)
        return StageResult(config.name, stage_dir, stage_dir / "backbone.safetensors", True, summary)

    state = load_state(stage_dir / "state")
    if state is not None and not resume:
        raise HptError(
            f"{stage_dir} holds an unfinished run of stage '{config.name}' (saved at step {state['step']}); "
            "pass --resume to continue it, or use another --out"
        )
    if state is not None:
        _check_same(state["semantic"], semantic, stage_dir, "interrupted")
    if info.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    started = time.time()
    if config.train in ("all", "bn"):
        continued = _previous_method_state(config, previous_stage_dir) if state is None else None
        stats = train_ssl(config, backbone, stage_dir, state, semantic, info, continued)
    elif config.train == "bn-stats":
        stats = _reestimate_bn(config, backbone, info)
    else:
        stats = {"steps_done": 0}
    backbone_path = stage_dir / "backbone.safetensors"
    summary = {
        "status": "done",
        "kind": "pretrain",
        "stage": config.name,
        "train": config.train,
        "data": config.data,
        "config": semantic,
        "backbone_sha256": weights_sha256(backbone),
        "wall_time_s": round(time.time() - started, 3),
        "world_size": info.world_size,
        **stats,
    }
    if info.is_main:
        metadata = {"stage": config.name, "train": config.train, "data": config.data, "steps": str(config.steps)}
        save_backbone(backbone, backbone_path, metadata)
        atomic_write(summary_path, lambda h: h.write(json.dumps(summary, indent=2).encode()))
        append_result(Path(out_dir) / "results.jsonl", summary)
    distributed.barrier()
    return StageResult(config.name, stage_dir, backbone_path, False, summary)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same(saved: dict[str, Any], current: dict[str, Any], stage_dir: Path, what: str) -> None:
    """Refuse to resume or reuse a stage whose result-determining settings changed.

    Every setting is compared both ways; one that a side lacks counts as its default when it is a setting added
    to hpt later (LATER_DEFAULTS: runs made before it existed used that default), and as a change otherwise.
    Data that was moved (the same file name in another folder, the old one gone) is the same data.
    """
    defaults = _flatten(LATER_DEFAULTS)
    old, new = _flatten({**LATER_DEFAULTS, **saved}), _flatten({**LATER_DEFAULTS, **current})
    missing = object()
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k, defaults.get(k, missing)) != new.get(k, defaults.get(k, missing)))
    if "data" in changed and moved_data(old["data"], new["data"]):
        log.warning("stage in %s: its data %s no longer exists; taking %s, which has the same name, as that data "
                    "moved", stage_dir, old["data"], new["data"])
        changed.remove("data")
    if not changed:
        return
    details = "; ".join(f"{k}: {old.get(k, 'unset')!r} -> {new.get(k, 'unset')!r}" for k in changed[:5]
                        if k != "init_sha256")
    if "init_sha256" in changed:
        details = "; ".join(filter(None, ["the starting backbone differs (the base or an earlier stage changed)",
                                          details]))
    raise HptError(
        f"the {what} stage in {stage_dir} was run with other settings ({details}); "
        "use another --out, or delete that folder to train it again"
    )


def _previous_method_state(config: StageConfig, previous_stage_dir: Path | None) -> dict[str, torch.Tensor] | None:
    """The final method weights (head, key encoder, queue) of the previous stage, when continue_method asks."""
    if not config.continue_method:
        return None
    if previous_stage_dir is None:
        raise HptError(f"stage '{config.name}': continue_method needs a previous stage in the same run to continue; "
                       "it cannot continue the base checkpoint (set continue_method: false)")
    state = load_state(previous_stage_dir / "state")
    if state is None:
        raise HptError(f"stage '{config.name}': continue_method needs the final state of the previous stage, but "
                       f"{previous_stage_dir / 'state'} holds none (it was not trained with SSL, or was deleted); "
                       "set continue_method: false to start a new head and queue")
    return state["model"]


@torch.no_grad()
def _reestimate_bn(config: StageConfig, backbone: ResNet, info: distributed.DistInfo) -> dict[str, Any]:
    """The paper's Base baseline: only BatchNorm running statistics, re-estimated on un-augmented target images."""
    per_rank = per_rank_batch(config, info)
    dataset, side, mean, std, loader = prepare_data(config, info, per_rank, 0)
    transform = EvalTransform(mean, std, side).to(info.device)
    set_trainable(backbone, "none")
    backbone.to(info.device)
    iterator = iter(loader)
    batches = (next(iterator)[0] for _ in tqdm(range(config.steps), disable=not info.is_main or None,
                                                desc=f"{config.name} (bn-stats)"))
    start = time.perf_counter()
    reestimate_bn_statistics(backbone, batches, transform, info.device)
    for module in backbone.modules():
        if isinstance(module, SplitBatchNorm2d):
            module.num_splits = 1
    backbone.eval()
    elapsed = time.perf_counter() - start
    log.info("stage '%s': BatchNorm statistics re-estimated over %d batches of %d images", config.name,
             config.steps, config.batch_size)
    return {"steps_done": config.steps, "train_time_s": round(elapsed, 3), "num_images": len(dataset),
            "images_per_s": round(config.steps * config.batch_size / max(elapsed, 1e-9), 2)}
