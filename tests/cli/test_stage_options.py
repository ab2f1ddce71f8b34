"""`hpt pretrain`'s options against the configs: each sets a StageConfig field with its type and default (or is one
of the documented others), every StageConfig field has an option or is reached with --set, and `hpt run`'s
overrides reach every field. Adding a field without its option (or a SET_ONLY line) fails here."""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

import click
import pytest

from hpt.cli.pretrain import pretrain_command
from hpt.cli.stage_options import OTHER_OPTIONS, SET_ONLY, SETTINGS, SWITCHES
from hpt.config import field_at, nested, to_dict
from hpt.pretrain import hierarchy
from hpt.pretrain.config import StageConfig
from hpt.pretrain.hierarchy import (
    BaseConfig,
    HierarchyConfig,
    HierarchyResult,
    load_hierarchy,
)

from ..helpers import call, write_hierarchy

REQUIRED = ("name", "data", "steps")  # StageConfig fields without a default: options of their own


def _sections(hint: Any) -> list[type]:
    # a section of settings, not a value type read from one YAML value (a DataSpec is given as one string)
    return [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a) and not hasattr(a, "from_config")]


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every setting of a config dataclass, dotted into its sections (also optional ones)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        section = _sections(hints[f.name])
        keys += leaf_keys(section[0], f"{prefix}{f.name}.") if section else [f"{prefix}{f.name}"]
    return keys


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _params() -> dict[str, click.Parameter]:
    return {str(p.name): p for p in pretrain_command.params}


SWITCH_FLAGS = [_params()[name].opts[0] for name in SWITCHES.values()]  # --stop-when-converged, --guard


def test_every_option_sets_a_stage_field_of_its_type_and_default_or_is_documented() -> None:
    params = _params()
    settings = {s.name: s for s in SETTINGS}
    assert not set(settings) & set(OTHER_OPTIONS)
    undocumented = set(params) - set(settings) - set(OTHER_OPTIONS)
    assert not undocumented, f"options of hpt pretrain that are no Setting and not in OTHER_OPTIONS: {undocumented}"
    assert not set(OTHER_OPTIONS) - set(params), "OTHER_OPTIONS lists options hpt pretrain does not have"
    for name, setting in settings.items():
        param, (hint, default) = params[name], field_at(StageConfig, setting.key)
        hint = _without_none(hint)
        where = f"{setting.flag} ({setting.key}: {hint} = {default!r})"
        if setting.choices:
            assert hint is str and list(param.type.choices) == list(setting.choices), where  # type: ignore[attr-defined]
            for choice in setting.choices:  # each one a stage accepts
                StageConfig(name="t", data="npz:x.npz", steps=1, **nested({setting.key: choice}))
        elif typing.get_origin(hint) is typing.Literal:
            assert isinstance(param.type, click.Choice) and list(param.type.choices) == list(typing.get_args(hint)), where
        elif hint is bool:
            assert isinstance(param, click.Option) and param.is_flag and default is False, where
        elif typing.get_origin(hint) is list:
            assert param.multiple and default == [], where
        else:
            text = click.STRING if hasattr(hint, "from_config") else None  # a value type: given as its string
            assert param.type == (text or {int: click.INT, float: click.FLOAT, str: click.STRING}[hint]), where
        if not (hint is bool or param.multiple):
            assert param.default == default and not param.required, where


def test_the_other_options_match_base_config_and_pretrain() -> None:
    params = _params()
    signature = inspect.signature(hierarchy.pretrain).parameters
    for name, target in OTHER_OPTIONS.items():
        param = params[name]
        if target.startswith("base."):
            _, default = field_at(BaseConfig, target.removeprefix("base."))
            assert param.required or param.default == default, f"--{name}: {target} defaults to {default!r}"
        elif target in REQUIRED:
            hint, default = field_at(StageConfig, target)
            assert default is dataclasses.MISSING, target
            assert param.required or param.default == signature[target].default, f"--{name} against pretrain()"
            assert hint is not int or param.type == click.INT, f"--{name}: {hint}"
        elif target.startswith("pretrain("):
            keyword = target.removeprefix("pretrain(").removesuffix("=)")
            default = signature[keyword].default
            assert param.default == (Path(default) if isinstance(param.default, Path) else default) or (
                param.is_flag and default is False), f"--{name} against pretrain({keyword}=)"
        elif target.startswith("switch "):
            section = target.removeprefix("switch ")
            assert SWITCHES[section] == name and param.is_flag
            assert field_at(StageConfig, section)[1] is None, f"{section} is no optional section"
        else:
            assert target == "--set" and param.multiple, f"--{name}: {target}"


def test_every_stage_field_has_an_option_or_is_set_only() -> None:
    fields = [f.name for f in dataclasses.fields(StageConfig)]
    with_option = {s.key.split(".")[0] for s in SETTINGS} | set(REQUIRED) | set(SWITCHES)
    missing = [f for f in fields if f not in with_option and f not in SET_ONLY]
    assert not missing, (f"StageConfig fields that hpt pretrain cannot set: {missing}; add a Setting to PRETRAIN_OPTIONS "
                         "(hpt/cli/stage_options.py) or list the field in SET_ONLY (reached with --set KEY=VALUE)")
    stale = [f for f in SET_ONLY if f not in fields or f in with_option]
    assert not stale, f"SET_ONLY lists fields that are gone or have an option: {stale}"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run `hpt pretrain` up to the validated config: pretrain() builds it, run_hierarchy is not called."""
    seen: dict[str, Any] = {}
    real = hierarchy.pretrain

    def pretrain(*args: Any, **kwargs: Any) -> HierarchyResult:
        seen["settings"] = kwargs
        return real(*args, **kwargs)

    def run_hierarchy(config: HierarchyConfig, out: Any, *, resume: bool = False) -> HierarchyResult:
        seen["config"] = config
        return HierarchyResult(Path(out), [], 0.0)

    monkeypatch.setattr(hierarchy, "pretrain", pretrain)
    monkeypatch.setattr(hierarchy, "run_hierarchy", run_hierarchy)
    return seen


def _pretrain(capsys: pytest.CaptureFixture[str], captured: dict[str, Any], data: Path, out: Path,
              *argv: str) -> tuple[BaseConfig, StageConfig, dict[str, Any]]:
    captured.clear()
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{data}", "--steps", "10",
                        "--out", str(out), *argv)
    assert code == 0, err
    config = captured["config"]
    return config.base, config.stages[0], captured["settings"]


def test_pretrain_without_options_is_a_stage_of_default_settings(
        capsys: pytest.CaptureFixture[str], captured: dict[str, Any], tiny_npz: Path, tmp_path: Path) -> None:
    base, stage, _ = _pretrain(capsys, captured, tiny_npz, tmp_path / "o")
    assert base == BaseConfig(checkpoint="random")
    assert to_dict(stage) == to_dict(StageConfig(name="target", data=f"npz:{tiny_npz}", steps=10))
    _, stage, _ = _pretrain(capsys, captured, tiny_npz, tmp_path / "o", *SWITCH_FLAGS)
    hints = typing.get_type_hints(StageConfig)
    on = {section: _sections(hints[section])[0]() for section in SWITCHES}  # each section with its defaults
    assert to_dict(stage) == to_dict(StageConfig(name="target", data=f"npz:{tiny_npz}", steps=10, **on))


def _at(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part] if isinstance(tree, dict) else getattr(tree, part)
    return tree


def _yaml(value: Any) -> str:
    return json.dumps(to_dict(value))  # JSON is YAML: lists, numbers, strings, true/false, null


STAGE_KEYS = [k for k in leaf_keys(StageConfig) if k not in REQUIRED]


def test_set_reaches_every_stage_setting(capsys: pytest.CaptureFixture[str], captured: dict[str, Any],
                                         tiny_npz: Path, tmp_path: Path) -> None:
    for key in STAGE_KEYS:
        _, default = field_at(StageConfig, key)
        _, stage, settings = _pretrain(capsys, captured, tiny_npz, tmp_path / "o", *SWITCH_FLAGS,
                                       "--set", f"{key}={_yaml(default)}")
        assert to_dict(_at(settings, key)) == to_dict(default), f"--set {key} did not reach the stage settings"
        assert to_dict(_at(stage, key)) == to_dict(default), key


def test_run_overrides_reach_every_stage_setting(tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 10}])
    for key in STAGE_KEYS:
        _, default = field_at(StageConfig, key)
        stage = load_hierarchy(config, [f"stages.t.{key}={_yaml(default)}"]).stages[0]
        assert to_dict(_at(stage, key)) == to_dict(default), key
