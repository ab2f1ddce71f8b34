"""Checkpoints as users bring them: keys renamed so they no longer fit a ResNet, plain pickles, pickles that need
code, truncated files, and a resume state replaced by a pickle that needs code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from hpt.errors import HptError
from hpt.models import build_resnet, inspect_checkpoint, load_backbone
from hpt.pretrain.state import load_state

from ..helpers import TINY_STAGE, assert_one_line_error, call, run_cli, write_hierarchy

TINY_ARCH = {"arch": "resnet18", "small_stem": True, "width": 8}


def touch(path: str) -> None:
    Path(path).touch()


class TouchOnLoad:
    """Unpickling it calls touch(marker): the file it creates proves that a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return touch, (str(self.marker),)


class PlainRecord:
    """A custom class: unpickling it needs this module's code."""

    def __init__(self) -> None:
        self.value = 1


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v for k, v in build_resnet(**TINY_ARCH).state_dict().items() if not k.startswith("fc.")}


def _renamed(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}


# ------------------------------------------------------------------ inspect: does the file load?


def test_inspect_says_a_file_with_renamed_keys_is_not_loadable(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "renamed.pth"
    torch.save(_renamed(_state(), "layer1.1.", "layer1.9."), path)  # same block count, names no ResNet has
    code, out, err = call(capsys, "inspect", str(path))
    assert_one_line_error(code, err, "renamed.pth", "not loadable into resnet18", "missing keys",
                          "layer1.1.conv1.weight", "unexpected keys", "layer1.9.conv1.weight")
    assert "loadable:    not loadable" in out
    check = inspect_checkpoint(path).load_check
    assert check is not None and not check.loadable and check.target == "resnet18 (small_stem=True, width=8)"
    assert "layer1.1.bn1.running_mean" in check.missing and "layer1.9.bn1.running_mean" in check.unexpected
    with pytest.raises(HptError, match="does not fit the model"):  # the rule inspect applies is load_backbone's
        load_backbone(build_resnet(**TINY_ARCH), path)


def test_inspect_json_of_a_renamed_stem_exits_2_with_the_record(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    path = tmp_path / "stem.pth"
    torch.save(_renamed(_state(), "bn1.", "stem_bn."), path)
    code, out, err = call(capsys, "inspect", str(path), "--json")
    assert_one_line_error(code, err, "not loadable", "bn1.weight", "stem_bn.weight")
    record = json.loads(out)["load_check"]
    assert record["loadable"] is False and "bn1.weight" in record["missing"]
    assert sorted(record["unexpected"]) == sorted(f"stem_bn.{k}" for k in
                                                  ("weight", "bias", "running_mean", "running_var",
                                                   "num_batches_tracked"))


def test_inspect_of_a_loadable_file_says_so_and_exits_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module.encoder_q." + k: v for k, v in _state().items()}}, path)
    code, out, err = call(capsys, "inspect", str(path))
    assert code == 0, err
    assert "loadable:    yes, into resnet18 (small_stem=True, width=8)" in out


@pytest.mark.parametrize("edit", ["none", "rename", "drop", "extra", "reshape"])
def test_inspect_agrees_with_loading(tmp_path: Path, edit: str) -> None:
    state = _state()
    if edit == "rename":
        state = _renamed(state, "layer3.0.downsample.", "layer3.0.shortcut.")
    elif edit == "drop":
        del state["layer4.1.bn2.running_var"]
    elif edit == "extra":
        state["layer2.0.extra.weight"] = torch.zeros(3)
    elif edit == "reshape":
        state["layer2.0.conv1.weight"] = torch.zeros(16, 8, 1, 1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    check = inspect_checkpoint(path).load_check
    assert check is not None
    try:
        load_backbone(build_resnet(**TINY_ARCH), path)
        loads = True
    except HptError:
        loads = False
    assert check.loadable == loads == (edit == "none")
    if edit == "reshape":
        assert check.shape_mismatches == ["layer2.0.conv1.weight (16, 8, 1, 1) in file vs (16, 8, 3, 3) in model"]


# ------------------------------------------------------------------ pickles and damaged files


def test_plain_pickle_custom_class_and_truncated_file_get_three_messages(capsys: pytest.CaptureFixture[str],
                                                                          tmp_path: Path) -> None:
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1, "b": 2}))
    custom = tmp_path / "custom.pkl"
    custom.write_bytes(pickle.dumps({"record": PlainRecord()}))
    truncated = tmp_path / "cut.pth"
    torch.save(_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    lines = []
    for path in (plain, custom, truncated):
        code, _, err = call(capsys, "inspect", str(path))
        assert_one_line_error(code, err, path.name)
        assert "weights_only" not in err and "Traceback" not in err
        lines.append(err.strip().replace(str(path), "FILE"))  # the message, without the (test-named) folder
    assert "plain Python pickle" in lines[0] and "not a PyTorch checkpoint" in lines[0]
    assert f"needs code to load ({PlainRecord.__module__}.PlainRecord)" in lines[1]
    assert "hpt never executes pickled code" in lines[1] and "torch.save(model.state_dict())" in lines[1]
    assert "corrupt, truncated" in lines[2] and "re-copy it" in lines[2]
    assert "pickle" not in lines[2] and "corrupt" not in lines[0] + lines[1]


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_that_runs_code_is_named_and_never_run(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"conv1.weight": TouchOnLoad(marker)}, protocol=2))
    else:
        torch.save({"conv1.weight": TouchOnLoad(marker)}, path)
    with pytest.raises(HptError) as info:
        inspect_checkpoint(path)
    assert f"{path} is a pickle that needs code to load ({__name__}.touch)" in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------ resume state


def test_a_resume_state_that_needs_code_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state_dir = tmp_path / "stage" / "state"
    state_dir.mkdir(parents=True)
    torch.save({"hpt_state": 1, "model": {}, "extra": TouchOnLoad(marker)}, state_dir / "last.pt")
    with pytest.raises(HptError) as info:
        load_state(state_dir)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message and not marker.exists()
    assert str(state_dir / "last.pt") in message and "needs code to load" in message
    assert f"delete the folder {state_dir} to start the stage again" in message
    (state_dir / "last.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(HptError, match=r"last\.pt is corrupt or truncated; delete the folder"):
        load_state(state_dir)


def test_resuming_from_a_poisoned_state_on_the_command_line(tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 3,
                                                    **TINY_STAGE, "checkpoint_every": 1}])
    killed = run_cli("run", str(config), "--out", str(tmp_path / "o"), fault=["--signal", "KILL", "--after-step", "1"])
    assert killed.returncode == -9, killed.stderr
    state = tmp_path / "o" / "t" / "state" / "last.pt"
    marker = tmp_path / "ran"
    torch.save({"hpt_state": 1, "extra": TouchOnLoad(marker)}, state)
    resumed = run_cli("run", str(config), "--out", str(tmp_path / "o"), "--resume")
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert resumed.returncode == 2 and len(errors) == 1, resumed.stderr
    assert str(state) in errors[0] and "delete the folder" in errors[0] and not marker.exists()
    assert "weights_only" not in resumed.stderr
