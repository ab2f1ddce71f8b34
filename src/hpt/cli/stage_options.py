"""The options of `hpt pretrain`, in the order its --help lists them (hpt.api.pretraining makes the stage
settings of their values: its keywords are these options' names).

An option that sets a StageConfig field is a Setting: its click type (a choice for a Literal, a flag for a bool,
repeatable for a list) and its default are read from the field, so that the command line cannot drift from the
config. The other options say where the run starts (BaseConfig: --base, --arch, --small-stem, --width), which
stage it is (--data, --steps, --name), where it writes (--out, --resume), and which optional sections are on
(SWITCHES). Every StageConfig field with no option of its own is in SET_ONLY, reached with `--set KEY=VALUE`.
tests/cli/test_stage_options.py checks all of this against StageConfig, BaseConfig and hpt's pretrain();
tests/api/test_signatures.py checks the options against hpt.api.pretrain().
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hpt.cli.backbone_options import architecture_options
from hpt.config import field_at
from hpt.methods import METHODS
from hpt.pretrain.config import StageConfig

F = Callable[..., Any]


@dataclass(frozen=True)
class Setting:
    """A command-line option that sets the StageConfig field at `key` (dotted for a nested one)."""

    flag: str
    key: str
    help: str | None = None
    choices: tuple[str, ...] = ()  # the values a str field accepts (from the registry that checks them)

    @property
    def name(self) -> str:
        """The option's parameter name (what click passes the value as)."""
        return self.flag.lstrip("-").replace("-", "_")

    def option(self) -> Callable[[F], F]:
        hint, default = field_at(StageConfig, self.key)
        return click.option(self.flag, self.name, help=self.help,
                            **click_settings(hint, default, self.key, self.choices))


def click_settings(hint: Any, default: Any, key: str, choices: Sequence[str] = ()) -> dict[str, Any]:
    """click.option's type, default and flags for a config field of type `hint` (`choices`: the values a str field
    accepts); TypeError for a field that has no option form (a section, a mapping, a tuple: set it with --set)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) != 1 or default is not None:
            raise TypeError(f"{key}: no command-line option for a setting of type {hint}")
        hint = options[0]
    if default is dataclasses.MISSING:
        raise TypeError(f"{key}: a required setting is an option of its own, not a Setting")
    origin = typing.get_origin(hint)
    if choices and hint is str:
        return {"type": click.Choice(list(choices)), "default": default, "show_default": True}
    if origin is typing.Literal:
        return {"type": click.Choice(list(typing.get_args(hint))), "default": default, "show_default": True}
    if hint is bool and default is False:
        return {"is_flag": True}
    if origin is list and typing.get_args(hint) == (str,) and default == []:
        return {"multiple": True}
    if hint in (int, float, str):
        return {"type": hint, "default": default, **({"show_default": True} if default is not None else {})}
    if isinstance(hint, type) and hasattr(hint, "from_config"):  # a value type given as a string (a data spec)
        return {"type": str, "default": default, **({"show_default": True} if default is not None else {})}
    raise TypeError(f"{key}: no command-line option for a setting of type {hint} with default {default!r}")


#: The options of `hpt pretrain`, in --help's order: Settings (StageConfig fields) and the others.
PRETRAIN_OPTIONS: tuple[Setting | Callable[[F], F], ...] = (
    click.option("--base", required=True,
                 help="'random', a checkpoint file, or named weights (e.g. torchvision:resnet50)."),
    click.option("--data", required=True, help="Data spec, e.g. npz:PATH?split=train or folder:PATH."),
    click.option("--steps", required=True, type=int, help="Budget in steps of one global batch."),
    Setting("--train", "train", "all = HPT, bn = HPT-BN (BatchNorm affine only), norm = every norm layer's affine "
            "(HPT-BN for any architecture), lora = LoRA adapters only (merged into the saved backbone), bn-stats = "
            "re-estimate BatchNorm statistics only, none = no training."),
    Setting("--last-blocks", "last_blocks",
            "With --train bn, norm or lora: also train every parameter of the last N blocks (lora: ExPLoRA)."),
    Setting("--lora-rank", "lora.rank", "Rank of the LoRA adapters (--train lora; more: --set lora.alpha=...)."),
    *architecture_options("the checkpoint's; resnet50 for --base random"),
    click.option("--out", type=click.Path(path_type=Path), default=Path("runs/pretrain"), show_default=True),
    click.option("--name", default="target", show_default=True, help="Stage name (the sub-folder of --out)."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run in --out."),
    Setting("--batch-size", "batch_size", "Global batch size."),
    Setting("--lr", "lr", "Learning rate for a global batch of 256."),
    Setting("--optimizer", "optimizer", "sgd (the paper's) or adamw (ViTs and ConvNeXts; betas: --set adamw_betas=...)."),
    Setting("--precision", "precision"),
    Setting("--channels-last", "channels_last", "channels_last memory format."),
    Setting("--device", "device", "auto, cpu or cuda."),
    Setting("--image-size", "augment.image_size", "Side of the augmented views (default: the images')."),
    Setting("--remove-aug", "augment.remove", "Leave out an augmentation (repeatable), e.g. grayscale."),
    Setting("--queue-size", "moco.queue_size", "MoCo queue size (default: sized to the stage)."),
    Setting("--workers", "workers", "DataLoader workers (default: chosen by data kind)."),
    Setting("--seed", "seed"),
    Setting("--checkpoint-every", "checkpoint_every", "Steps between resume states."),
    Setting("--method", "method", "Self-supervised method of the stage.", choices=tuple(METHODS)),
    Setting("--head-warmup-steps", "head_warmup_steps",
            "Train only the new head for the first N steps (backbone lr 0): keeps a random head from wrecking a "
            "pretrained backbone."),
    Setting("--lr-warmup-steps", "lr_warmup_steps",
            "Raise the lr linearly from 0 over the first N steps, then cosine decay."),
    click.option("--stop-when-converged", is_flag=True,
                 help="Probe every --probe-every steps (kNN on labelled images); stop when it stops improving."),
    Setting("--probe-data", "stop.data", "Labelled data for the probe (default: --data, if labelled)."),
    Setting("--probe-every", "stop.every"),
    Setting("--probe-patience", "stop.patience", "Probes without progress before stopping."),
    Setting("--probe-margin", "stop.margin",
            "Least gain that counts (0.01 = 1 point); default: one standard error of the probe's val score."),
    Setting("--anchor-weight", "anchor.weight",
            "Weight of a distillation term to the frozen start (Base-anchored continuation); 0: off."),
    click.option("--guard", "guard_on", is_flag=True,
                 help="Read a validation signal every --guard-every steps; keep a later checkpoint only when it reads "
                      "better beyond noise; roll back to the kept one when the signal drops beyond noise."),
    Setting("--guard-every", "guard.every", "Steps between the guard's readings."),
    Setting("--guard-signal", "guard.signal", "auto: kNN accuracy where the data has labels, else effective rank."),
    Setting("--guard-on-drop", "guard.on_drop", "After a roll-back: stop, or go on at a tenth of the lr."),
    Setting("--budget", "budget",
            "auto: stop once the guard's signal stops improving beyond noise (--steps is the cap)."),
    click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
                 help="Any other stage setting, dotted for nested ones (repeatable), e.g. --set moco.temperature=0.1 "
                      "--set moco.head_bn=true --set augment.crop_scale=[0.5,1.0]; it wins over the options above."),
)

SETTINGS: tuple[Setting, ...] = tuple(o for o in PRETRAIN_OPTIONS if isinstance(o, Setting))
#: The options that are no Setting, by parameter name, and what each sets: a BaseConfig field ('base.KEY'), a
#: StageConfig field without a default ('name', 'data', 'steps'), a keyword of pretrain() ('pretrain(KEY=)'), an
#: optional section switched on ('switch SECTION'), or any setting ('--set').
OTHER_OPTIONS: dict[str, str] = {
    "base": "base.checkpoint", "arch": "base.arch", "small_stem": "base.small_stem", "width": "base.width",
    "data": "data", "steps": "steps", "name": "name", "out": "pretrain(out=)", "resume": "pretrain(resume=)",
    "stop_when_converged": "switch stop", "guard_on": "switch guard", "set_items": "--set",
}
#: Optional sections of StageConfig (None unless switched on) and the flag that switches each on; its Settings fill
#: it. --budget auto also switches the guard on (it stops on the guard's signal).
SWITCHES: dict[str, str] = {"stop": "stop_when_converged", "guard": "guard_on"}
#: StageConfig fields with no option of their own: `--set KEY=VALUE` sets them (KEY dotted into a section).
SET_ONLY: tuple[str, ...] = ("lr_reference_batch", "sgd_momentum", "adamw_betas", "weight_decay", "simclr", "byol", "batchnorm",
                             "compile", "log_every", "keep_backbones", "continue_method", "mocov3", "dino")


def pretrain_options(func: F) -> F:
    """Apply PRETRAIN_OPTIONS to a command function (the first one first in --help)."""
    for option in reversed(PRETRAIN_OPTIONS):
        func = (option.option() if isinstance(option, Setting) else option)(func)
    return func

