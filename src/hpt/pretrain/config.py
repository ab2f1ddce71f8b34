"""The settings of one pretraining stage (StageConfig: the YAML of a stage), and which of them make a run's identity.

Each method's settings are its own config class (hpt.methods), under its section: moco:, simclr:, byol:, mocov3:,
dino:.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from hpt.augment import AugmentConfig
from hpt.config import to_dict
from hpt.data import DataSpec, parse_data_spec
from hpt.data.heldout import without_heldout
from hpt.errors import HptError
from hpt.methods import (
    METHODS,
    BYOLConfig,
    DinoConfig,
    MocoV2Config,
    MocoV3Config,
    SimCLRConfig,
)
from hpt.models.lora import LoRAConfig
from hpt.pretrain.anchor import AnchorConfig
from hpt.pretrain.early_stop import StopConfig
from hpt.pretrain.guard import AUTO_FLOORS, GuardConfig

TrainMode = Literal["all", "bn", "norm", "lora", "bn-stats", "none"]
#: The train modes that train with gradients (the others re-estimate BatchNorm statistics or change nothing).
TRAINING_MODES = ("all", "bn", "norm", "lora")
#: Config keys that change how a stage runs but not what it computes; they may differ on resume.
RUNTIME_KEYS = frozenset({"device", "workers", "checkpoint_every", "log_every", "keep_backbones", "compile"})


@dataclass
class StageConfig:
    """One stage of the hierarchy (recipe defaults)."""

    name: str
    data: DataSpec  # given as a spec string or mapping (hpt.data.parse_data_spec), parsed once here
    steps: int  # budget in optimizer steps of one global batch
    train: TrainMode = "all"  # what trains: hpt.pretrain.trainable (norm: every norm layer's affine; lora: adapters)
    # With train: bn, norm or lora: also every parameter of the last N blocks (lora + last_blocks: ExPLoRA).
    last_blocks: int = 0
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # the adapters of train: lora (hpt.models.lora)
    method: str = "mocov2"  # a name in hpt.methods.METHODS (mocov2, simclr, byol, mocov3, dino): its section below
    batch_size: int = 256  # global batch (all processes together)
    lr: float = 0.03  # for a global batch of lr_reference_batch; scaled linearly with the real global batch
    lr_reference_batch: int = 256
    # sgd: the paper's (MoCo-v2's) optimizer; adamw: what ViTs and ConvNeXts are trained with (MoCo v3, DINO)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    sgd_momentum: float = 0.9
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    # Each method's settings, under the section hpt.methods.METHODS names (a method added later: its section here,
    # and its defaults in LATER_DEFAULTS, so that the ids of earlier runs stay the same).
    moco: MocoV2Config = field(default_factory=MocoV2Config)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    mocov3: MocoV3Config = field(default_factory=MocoV3Config)
    dino: DinoConfig = field(default_factory=DinoConfig)  # two global views per step: no multi-crop local views
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    stop: StopConfig | None = None  # stop early when an online probe has converged (--stop-when-converged)
    batchnorm: Literal["shuffle", "sync"] = "shuffle"  # shuffle-BN (MoCo), or SyncBatchNorm over all GPUs
    compile: bool = False  # torch.compile the model (see docs/benchmarks.md for where it pays)
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
        if self.method not in METHODS:
            raise HptError(f"stage '{self.name}': method must be one of {', '.join(METHODS)}; got {self.method!r}")
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
        if (self.anchor.active or self.guard is not None) and self.train not in TRAINING_MODES:
            raise HptError(f"stage '{self.name}': anchor and guard need a training stage (train: "
                           f"{', '.join(TRAINING_MODES)}), not train: {self.train}")
        self._check_train_mode()
        self.data = parse_data_spec(self.data)
        for section, reader in ((self.stop, "the convergence probe"), (self.guard, "the guard")):
            if section is not None and self.train in TRAINING_MODES:
                # its val images (and evaluation's test) are carved from this data's train split when the data has
                # no such split: pretraining leaves them out
                self.data = without_heldout(self.data, section.data, f"{reader} of stage '{self.name}'")

    def _check_train_mode(self) -> None:
        """last_blocks only beside a mode that trains part of the backbone; lora: settings only with train: lora."""
        if isinstance(self.last_blocks, bool) or not isinstance(self.last_blocks, int) or self.last_blocks < 0:
            raise HptError(f"stage '{self.name}': last_blocks must be an integer >= 0, got {self.last_blocks!r}")
        if self.last_blocks and self.train not in ("bn", "norm", "lora"):
            fix = ("train: all trains every block already: remove last_blocks, or use train: lora or norm with it"
                   if self.train == "all" else "it trains nothing: remove last_blocks")
            raise HptError(f"stage '{self.name}': last_blocks: {self.last_blocks} adds the last blocks to a train "
                           f"mode that trains part of the backbone (bn, norm, lora); train: {self.train} {fix}")
        if self.train != "lora" and self.lora != LoRAConfig():
            raise HptError(f"stage '{self.name}': the lora: section is read only with train: lora, not train: "
                           f"{self.train}; set train: lora or remove the lora: section")

    def semantic(self) -> dict[str, Any]:
        """The settings that determine the result (compared on resume and on re-runs). Settings added to hpt
        later are left out while they hold their defaults, so that the ids of earlier runs stay the same; the
        comparison (same_settings) reads a missing one as its default."""
        settings = {k: v for k, v in to_dict(self).items() if k not in RUNTIME_KEYS}
        _drop_defaults(settings, LATER_DEFAULTS)
        guard = settings.get("guard")
        if isinstance(guard, dict):  # what `auto` means is part of the result: a new default is a new setting
            for name, meaning in AUTO_FLOORS.items():
                if guard.get(name) == "auto":
                    guard[name] = meaning
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
                                  "moco": {"head_bn": False}, "mocov3": to_dict(MocoV3Config()),
                                  "dino": to_dict(DinoConfig()), "last_blocks": 0, "lora": to_dict(LoRAConfig()),
                                  "optimizer": "sgd", "adamw_betas": [0.9, 0.999]}
