"""hpt.api's keywords are the commands' options: the same names (snake_case of the long option) and defaults.

A parameter on one side only is listed below with the reason; adding an option to a command without its keyword
(or the reverse) fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from hpt import api
from hpt.api.pretraining import STAGE_SETTINGS
from hpt.cli.checkpoints import export_command
from hpt.cli.eval import compare as compare_command
from hpt.cli.eval import finetune, knn, linear
from hpt.cli.pretrain import pretrain_command
from hpt.cli.stage_options import SETTINGS, SWITCHES
from hpt.eval import FinetuneConfig, LinearConfig

#: Per function: the options the command has and the function has not, and the parameters only the function has.
CLI_ONLY: dict[str, dict[str, str]] = {
    "pretrain": {"set": "`set` is a Python builtin: the KEY=VALUE items are `overrides`"},
    "evaluate": {"json": "printing the record is the command's; the function returns it (EvalResult.record)"},
    "compare": {"name": "repeated once per evaluation on the command line: a list, `names`, in Python"},
    "export": {},
    "load_backbone": {},
}
API_ONLY: dict[str, dict[str, str]] = {
    "pretrain": {"overrides": "--set KEY=VALUE (also a mapping of keys to values)"},
    "evaluate": {"protocol": "the sub-command: hpt eval linear|finetune|knn"},
    "compare": {"names": "--name, repeated"},
    "export": {},
    "load_backbone": {},
}
#: evaluate() keywords whose command default differs by protocol: None in Python, which is the protocol's config
#: default, which each command must show.
PER_PROTOCOL = {"steps", "lr", "batch_size"}
CONFIGS = {"linear": LinearConfig, "finetune": FinetuneConfig}
#: Options required on the command line that have a default in Python, with the reason.
OPTIONAL_IN_PYTHON = {"labels": "required by the finetune protocol only: evaluate() asks for it there"}


@dataclasses.dataclass(frozen=True)
class Option:
    """A command's parameter and the value the command gets when it is not given."""

    param: click.Parameter
    default: Any


def option_name(param: click.Parameter) -> str:
    """The snake_case of a parameter's long option (its name, for an argument)."""
    if isinstance(param, click.Option):
        long = [o for o in param.opts if o.startswith("--")]
        return long[0].removeprefix("--").replace("-", "_")
    return str(param.name)


def options(command: click.Command) -> dict[str, Option]:
    context = click.Context(command)
    return {option_name(p): Option(p, p.get_default(context)) for p in command.params if option_name(p) != "help"}


def check(function: Callable[..., Any], params: dict[str, Option], key: str) -> None:
    signature = inspect.signature(function).parameters
    assert set(params) - set(signature) == set(CLI_ONLY[key]), f"{key}: options without a keyword"
    assert set(signature) - set(params) == set(API_ONLY[key]), f"{key}: keywords without an option"
    for name, option in params.items():
        if name in CLI_ONLY[key] or name in PER_PROTOCOL and key == "evaluate":
            continue
        assert_same_default(name, option, signature[name])


def assert_same_default(name: str, option: Option, parameter: inspect.Parameter) -> None:
    default, param = parameter.default, option.param
    if param.required:
        assert default is inspect.Parameter.empty or name in OPTIONAL_IN_PYTHON, f"{name}: required on the command line"
    elif param.multiple or param.nargs == -1:
        given = tuple(option.default) if isinstance(option.default, (list, tuple)) else ()
        assert tuple(default) == given, f"{name}: repeated, {given} by default"
    elif isinstance(option.default, Path):
        assert Path(default) == option.default, name
    else:
        assert default == option.default and type(default) is type(option.default), \
            f"{name}: {default!r} in Python, {option.default!r} on the command line"


def test_pretrain_matches_hpt_pretrain() -> None:
    check(api.pretrain, options(pretrain_command), "pretrain")


def test_pretrain_sets_the_stage_fields_the_options_set() -> None:
    assert STAGE_SETTINGS == {s.name: s.key for s in SETTINGS}
    # the switches, by the option's name: pretrain(stop_when_converged=, guard=)
    signature = inspect.signature(api.pretrain).parameters
    flags = {option_name(p) for p in pretrain_command.params if p.name in SWITCHES.values()}
    assert flags == {"stop_when_converged", "guard"} and flags <= set(signature)


def test_evaluate_matches_every_hpt_eval_protocol() -> None:
    merged: dict[str, Option] = {}
    for command in (linear, finetune, knn):
        for name, param in options(command).items():
            if name in merged and name not in PER_PROTOCOL:
                assert merged[name].default == param.default, f"--{name} has another default in {command.name}"
            merged.setdefault(name, param)
    check(api.evaluate, merged, "evaluate")
    for protocol, command in (("linear", linear), ("finetune", finetune)):
        here = options(command)
        for name in PER_PROTOCOL:
            assert inspect.signature(api.evaluate).parameters[name].default is None
            config_default = {f.name: f.default for f in dataclasses.fields(CONFIGS[protocol])}[name]
            assert here[name].default == config_default, f"hpt eval {protocol} --{name} against its config"


def test_compare_and_export_match_their_commands() -> None:
    check(api.compare, options(compare_command), "compare")
    check(api.export, options(export_command), "export")
    choices = options(export_command)["format"].param.type.choices  # type: ignore[attr-defined]
    assert list(choices) == list(api.backbones.EXPORT_FORMATS)


@pytest.mark.parametrize("name", ["backbone", "arch", "small_stem", "width", "seed"])
def test_load_backbone_takes_the_backbone_options_of_hpt_eval(name: str) -> None:
    assert_same_default(name, options(linear)[name], inspect.signature(api.load_backbone).parameters[name])
    assert set(inspect.signature(api.load_backbone).parameters) == {"backbone", "arch", "small_stem", "width", "seed"}
