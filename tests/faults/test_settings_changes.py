"""A finished or interrupted stage is reused or resumed only with the settings it ran with: every setting that
changes the result, of every kind (top-level, nested, list, optional section, falsy values), is compared both ways
and named when it changed; settings added to hpt later read as their defaults where a run lacks them."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hpt.config import deep_merge, from_dict
from hpt.errors import HptError
from hpt.pretrain.config import LATER_DEFAULTS, RUNTIME_KEYS, StageConfig
from hpt.pretrain.stage import DATA_CONTENT, _check_same, recorded_settings

from ..helpers import TINY_STAGE, run_cli


def config(data: Path, settings: dict[str, Any]) -> StageConfig:
    return from_dict(StageConfig, deep_merge({"name": "s", "data": f"npz:{data}", "steps": 4, **TINY_STAGE}, settings))


def refusal(saved: dict[str, Any], current: dict[str, Any], tmp_path: Path) -> str | None:
    """The refusal's message, or None when the run would be reused."""
    try:
        _check_same(saved, current, tmp_path, "finished")
    except HptError as err:
        return str(err)
    return None


# (id, settings of one run, settings of the other, the setting the refusal names); each is checked both ways
CHANGES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("lr", {}, {"lr": 0.05}, "lr"),
    ("lr-numeric-string", {}, {"lr": "1e-3"}, "lr"),
    ("steps", {}, {"steps": 5}, "steps"),
    ("batch", {}, {"batch_size": 8}, "batch_size"),
    ("seed", {}, {"seed": 1}, "seed"),
    ("method", {}, {"method": "simclr"}, "method"),
    ("train-mode", {}, {"train": "bn"}, "train"),
    ("precision", {}, {"precision": "bf16"}, "precision"),
    ("channels-last", {}, {"channels_last": True}, "channels_last"),
    ("batchnorm", {}, {"batchnorm": "sync"}, "batchnorm"),
    ("sgd-momentum-zero", {}, {"sgd_momentum": 0.0}, "sgd_momentum"),
    ("weight-decay-zero", {}, {"weight_decay": 0.0}, "weight_decay"),
    ("lr-reference-batch", {}, {"lr_reference_batch": 128}, "lr_reference_batch"),
    ("head-warmup-zero", {"head_warmup_steps": 1}, {"head_warmup_steps": 0}, "head_warmup_steps"),
    ("lr-warmup-zero", {"lr_warmup_steps": 2}, {"lr_warmup_steps": 0}, "lr_warmup_steps"),
    ("continue-method-false", {"continue_method": True}, {}, "continue_method"),
    ("budget-auto", {}, {"budget": "auto"}, "budget"),
    ("anchor-off", {"anchor": {"weight": 1.0}}, {}, "anchor.weight"),
    ("moco-head-bn-false", {"moco": {"head_bn": True}}, {}, "moco.head_bn"),
    ("moco-queue-none", {"moco": {"queue_size": 32}}, {}, "moco.queue_size"),
    ("moco-temperature", {}, {"moco": {"temperature": 0.1}}, "moco.temperature"),
    ("moco-momentum", {}, {"moco": {"momentum": 0.99}}, "moco.momentum"),
    ("moco-dim", {}, {"moco": {"dim": 8}}, "moco.dim"),
    ("simclr-temperature", {}, {"simclr": {"temperature": 0.5}}, "simclr.temperature"),
    ("byol-schedule", {}, {"byol": {"momentum_schedule": "cosine"}}, "byol.momentum_schedule"),
    ("augment-size-none", {}, {"augment": {"image_size": None}}, "augment.image_size"),
    ("augment-crop-list", {}, {"augment": {"crop_scale": [0.5, 1.0]}}, "augment.crop_scale"),
    ("augment-jitter-list", {}, {"augment": {"jitter": [0.4, 0.4, 0.4, 0.0]}}, "augment.jitter"),
    ("augment-jitter-p-zero", {}, {"augment": {"jitter_p": 0.0}}, "augment.jitter_p"),
    ("augment-grayscale-p", {}, {"augment": {"grayscale_p": 0.0}}, "augment.grayscale_p"),
    ("augment-blur-sigma", {}, {"augment": {"blur_sigma": [0.1, 1.0]}}, "augment.blur_sigma"),
    ("augment-blur-p", {}, {"augment": {"blur_p": 0.0}}, "augment.blur_p"),
    ("augment-flip-p", {}, {"augment": {"flip_p": 0.0}}, "augment.flip_p"),
    ("augment-remove-empty", {"augment": {"remove": ["grayscale"]}}, {}, "augment.remove"),
    ("stop-unset", {"stop": {"every": 2}}, {}, "stop"),
    ("stop-every", {"stop": {"every": 2}}, {"stop": {"every": 3}}, "stop.every"),
    ("stop-margin-none", {"stop": {"margin": 0.01}}, {"stop": {}}, "stop.margin"),
    ("guard-unset", {"guard": {"every": 2}}, {}, "guard"),
    ("guard-every", {"guard": {"every": 2}}, {"guard": {"every": 3}}, "guard.every"),
    ("guard-signal", {"guard": {"signal": "knn"}}, {"guard": {"signal": "rank"}}, "guard.signal"),
    ("data-fraction", {}, {"data": "fraction=0.5"}, "data"),
    ("data-count", {}, {"data": "count=10"}, "data"),
    ("data-size", {}, {"data": "size=8"}, "data"),
    ("data-classes", {}, {"data": "classes=0,1"}, "data"),
    ("data-split", {}, {"data": "split=val"}, "data"),
    ("data-subset-seed", {"data": "fraction=0.5"}, {"data": "fraction=0.5&seed=1"}, "data"),
]


def with_data_options(data: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """`data: OPTIONS` in a case stands for the tiny data with those spec options."""
    if "data" in settings:
        return {**settings, "data": f"npz:{data}?{settings['data']}"}
    return settings


@pytest.mark.parametrize(("before", "after", "named"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_a_changed_setting_is_refused_both_ways_and_named(tiny_npz: Path, tmp_path: Path, before: dict,
                                                          after: dict, named: str) -> None:
    one = recorded_settings(config(tiny_npz, with_data_options(tiny_npz, before)), "start")
    other = recorded_settings(config(tiny_npz, with_data_options(tiny_npz, after)), "start")
    for saved, current in ((one, other), (other, one)):
        message = refusal(saved, current, tmp_path)
        assert message is not None and f"{named}:" in message, message
    assert refusal(one, copy.deepcopy(one), tmp_path) is None


RUNTIME_CHANGES = [{"workers": 2}, {"device": "auto"}, {"log_every": 3}, {"checkpoint_every": 1},
                   {"keep_backbones": [2]}, {"compile": True}]


@pytest.mark.parametrize("after", RUNTIME_CHANGES, ids=[next(iter(c)) for c in RUNTIME_CHANGES])
def test_a_runtime_setting_may_change(tiny_npz: Path, tmp_path: Path, after: dict) -> None:
    saved = recorded_settings(config(tiny_npz, {}), "start")
    assert refusal(saved, recorded_settings(config(tiny_npz, after), "start"), tmp_path) is None


def test_the_runtime_settings_are_the_ones_that_leave_the_result_alone() -> None:
    # what the loop does with them: where and how fast it runs, how often it saves (resume is bit-exact), logs
    # and keeps extra backbones; none of them changes the final backbone
    assert frozenset({"device", "workers", "checkpoint_every", "log_every", "keep_backbones", "compile"}) == RUNTIME_KEYS


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def changed_value(value: Any) -> Any:
    """Another value of the same kind: falsy ones become truthy, truthy ones change (or become falsy)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [] if value else [1]
    return "set" if value is None else None


def set_leaf(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value
    return tree


@pytest.fixture
def every_section(tiny_npz: Path) -> dict[str, Any]:
    """A run's record with every optional section set, so that each setting of each section is in it."""
    return recorded_settings(config(tiny_npz, {"stop": {"every": 2}, "guard": {"every": 2}, "anchor": {"weight": 1.0},
                                               "moco": {"head_bn": True}, "head_warmup_steps": 1,
                                               "lr_warmup_steps": 1, "continue_method": True, "budget": "auto",
                                               "train": "lora", "last_blocks": 1, "lora": {"rank": 4},
                                               "mocov3": {"temperature": 0.3}, "dino": {"student_temp": 0.2},
                                               "optimizer": "adamw", "adamw_betas": [0.8, 0.99]}),
                              "start")


def test_every_recorded_setting_is_compared_both_ways(every_section: dict[str, Any], tmp_path: Path) -> None:
    settings = leaves({k: v for k, v in every_section.items() if k != DATA_CONTENT})
    assert len(settings) > 40
    for path, value in settings.items():
        other = set_leaf(every_section, path, changed_value(value))
        for saved, current in ((every_section, other), (other, every_section)):
            message = refusal(saved, current, tmp_path)
            named = "starting backbone" if path == "init_sha256" else f"{path}:"
            assert message is not None and named in message, (path, message)


def test_a_setting_one_side_lacks_is_a_change_unless_added_later_at_its_default(every_section: dict[str, Any],
                                                                               tmp_path: Path) -> None:
    later = leaves(LATER_DEFAULTS)
    for path in leaves({k: v for k, v in every_section.items() if k != DATA_CONTENT}):
        *parents, last = path.split(".")
        lacking = copy.deepcopy(every_section)
        node = lacking
        for part in parents:
            node = node[part]
        del node[last]
        message = refusal(lacking, every_section, tmp_path)
        at_default = path in later and later[path] == leaves(every_section)[path]
        assert (message is None) == at_default, (path, message)


def test_every_setting_of_a_stage_is_recorded_or_runtime(every_section: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(StageConfig)}
    assert fields - RUNTIME_KEYS == set(every_section) - {"init_sha256", DATA_CONTENT}


def test_a_run_made_before_later_settings_existed_is_reused_only_at_their_defaults(tiny_npz: Path,
                                                                                   tmp_path: Path) -> None:
    current = recorded_settings(config(tiny_npz, {}), "start")
    earlier = {k: v for k, v in current.items() if k not in LATER_DEFAULTS}
    earlier["moco"] = {k: v for k, v in current["moco"].items() if k != "head_bn"}
    assert refusal(earlier, current, tmp_path) is None and refusal(current, earlier, tmp_path) is None
    for settings, named in (({"head_warmup_steps": 1}, "head_warmup_steps"), ({"lr_warmup_steps": 1}, "lr_warmup"),
                            ({"continue_method": True}, "continue_method"), ({"moco": {"head_bn": True}}, "head_bn"),
                            ({"anchor": {"weight": 0.5}}, "anchor.weight"), ({"guard": {"every": 2}}, "guard"),
                            ({"budget": "auto"}, "budget")):
        message = refusal(earlier, recorded_settings(config(tiny_npz, settings), "start"), tmp_path)
        assert message is not None and named in message


def test_stage_ids_of_runs_made_before_the_later_settings_stay_the_same() -> None:
    from hpt.experiments.plan import Variant
    from hpt.pretrain.hierarchy import BaseConfig

    stage = from_dict(StageConfig, {"name": "target", "data": "npz:/data/target.npz", "steps": 100, "lr": 0.01})
    variant = Variant("compare", "HPT", BaseConfig("random", "resnet18", True, 8, 0), [stage])
    # the id hpt gave this stage before head_warmup_steps, lr_warmup_steps, continue_method, anchor, guard, budget
    # and moco.head_bn existed
    assert variant.stage_ids() == ["target-226101b7cddb"]
    changed = dataclasses.replace(variant, stages=[dataclasses.replace(stage, head_warmup_steps=0, lr_warmup_steps=1)])
    assert changed.stage_ids() != variant.stage_ids()


# ---- through the command line

PRETRAIN = ["pretrain", "--base", "random", "--arch", "resnet18", "--small-stem", "--width", "8", "--steps", "4",
            "--batch-size", "16", "--device", "cpu", "--workers", "0", "--image-size", "16", "--checkpoint-every", "2",
            "--set", "moco.dim=16", "--set", "moco.bn_splits=2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from ..conftest import write_npz

    root = tmp_path_factory.mktemp("finished")
    data = write_npz(root / "tiny.npz")
    done = run_cli(*PRETRAIN, "--data", f"npz:{data}", "--out", str(root / "out"))
    assert done.returncode == 0, done.stderr
    return data, root / "out"


def refused_line(result: Any) -> str:
    """The one-line error of a refused command (log lines before it aside)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.returncode == 2 and errors == lines[-1:], (result.returncode, result.stderr[-2000:])
    return errors[0]


def test_the_command_line_refuses_a_finished_run_with_a_falsy_or_optional_change(finished_run: tuple[Path, Path]
                                                                               ) -> None:
    data, out = finished_run
    for change, named in ((["--head-warmup-steps", "1"], "head_warmup_steps: 0 -> 1"),
                          (["--guard", "--guard-every", "2"], "guard: unset -> ")):
        line = refused_line(run_cli(*PRETRAIN, "--data", f"npz:{data}", "--out", str(out), *change))
        assert "finished stage" in line and named in line and "use another --out" in line
    reused = run_cli(*PRETRAIN, "--data", f"npz:{data}", "--out", str(out), "--workers", "1", "--checkpoint-every", "1")
    assert reused.returncode == 0 and "skipping it" in reused.stderr


CLI_CHANGES = [(["--lr", "1e-3"], "lr: 0.03 -> 0.001"), (["--lr-warmup-steps", "2"], "lr_warmup_steps: 0 -> 2"),
               (["--seed", "1"], "seed: 0 -> 1"), (["--train", "bn"], "train: 'all' -> 'bn'"),
               (["--precision", "bf16"], "precision"), (["--anchor-weight", "1"], "anchor.weight: 0.0 -> 1.0"),
               (["--budget", "auto"], "budget: 'fixed' -> 'auto'"), (["--set", "augment.remove=[grayscale]"],
                                                                       "augment.remove: [] -> ['grayscale']"),
               (["--stop-when-converged", "--probe-every", "2"], "stop: unset -> "),
               (["--set", "moco.queue_size=16"], "moco.queue_size: unset -> 16"),
               (["--set", "moco.head_bn=true"], "moco.head_bn: False -> True")]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "named"), CLI_CHANGES, ids=[c[0][-1].strip("-") for c in CLI_CHANGES])
def test_the_command_line_refuses_every_kind_of_change(finished_run: tuple[Path, Path], change: list[str],
                                                       named: str) -> None:
    data, out = finished_run
    line = refused_line(run_cli(*PRETRAIN, "--data", f"npz:{data}", "--out", str(out), *change))
    assert named in line


def test_the_command_line_refuses_to_resume_an_interrupted_run_with_changed_settings(
        finished_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, finished = finished_run
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "target" / "summary.json").unlink()  # as if killed after its last state was saved
    for change, named in ((["--lr-warmup-steps", "2"], "lr_warmup_steps: 0 -> 2"),
                          (["--stop-when-converged", "--probe-every", "2"], "stop: unset -> ")):
        line = refused_line(run_cli(*PRETRAIN, "--data", f"npz:{data}", "--out", str(out), "--resume", *change))
        assert "interrupted stage" in line and named in line
    resumed = run_cli(*PRETRAIN, "--data", f"npz:{data}", "--out", str(out), "--resume", "--workers", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "target" / "summary.json").read_text())["config"]["lr"] == 0.03
