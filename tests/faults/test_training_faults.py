"""Non-finite numbers in training stop the stage with one error; the last good state stays the one to resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hpt.pretrain.loop
from hpt.errors import HptError
from hpt.models import build_resnet
from hpt.pretrain.config import StageConfig
from hpt.pretrain.health import first_nonfinite
from hpt.pretrain.stage import run_stage
from hpt.pretrain.state import load_state

from ..helpers import TINY_STAGE, run_cli, write_hierarchy


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", small_stem=True, width=8)


def stage(data: Path, **kw: object) -> StageConfig:
    from hpt.config import from_dict

    return from_dict(StageConfig, {"name": "t", "data": f"npz:{data}", "steps": 6, **TINY_STAGE, **kw})


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_nan_loss_stops_the_cli_run_with_one_line_and_keeps_the_last_good_state(tiny_npz: Path,
                                                                                  tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 6,
                                                    "lr": 1e30, "checkpoint_every": 1}])
    out = tmp_path / "out"
    failed = run_cli("run", str(config), "--out", str(out))
    assert failed.returncode == 2, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in failed.stderr
    assert errors[0].startswith("error: stage 't' diverged at step 2: the loss is nan;")
    assert "lower it (e.g. lr 1e+29)" in errors[0] and "last good state (step 1)" in errors[0]

    state = load_state(out / "t" / "state")
    assert state is not None and state["step"] == 1 and all_finite(state)
    assert not (out / "t" / "summary.json").exists()  # not finished
    record = json.loads((out / "t" / "failed.json").read_text())
    assert record["status"] == "failed" and record["step"] == 2 and record["last_good_step"] == 1
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["status"]) for r in rows] == [("t", "failed")]

    again = run_cli("run", str(config), "--out", str(out))
    assert again.returncode == 2
    assert "stopped at step 2: the loss is nan" in again.stderr and "--resume" in again.stderr


def test_an_inf_batchnorm_statistic_stops_the_stage_and_resume_ends_like_an_unbroken_run(
        tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = run_stage(stage(tiny_npz), tiny_backbone(), tmp_path / "straight")

    seen = {"step": -1}
    original_step_seed = hpt.pretrain.loop.step_seed

    def step_seed(seed: int, step: int, rank: int) -> int:
        seen["step"] = step
        return original_step_seed(seed, step, rank)

    def poison(module: torch.nn.Module, args: object, output: object) -> None:  # step 4 overflows a statistic
        if seen["step"] == 3 and isinstance(module, torch.nn.BatchNorm2d) and module.training:
            module.running_var.fill_(float("inf"))

    monkeypatch.setattr(hpt.pretrain.loop, "step_seed", step_seed)
    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        with pytest.raises(HptError, match=r"stage 't' diverged at step 4: the BatchNorm running_var of .* holds "
                                           r"inf; .*last good state \(step 2\)"):
            run_stage(stage(tiny_npz), tiny_backbone(), tmp_path / "broken")
    finally:
        handle.remove()
    state = load_state(tmp_path / "broken" / "t" / "state")
    assert state is not None and state["step"] == 2 and all_finite(state)
    assert json.loads((tmp_path / "broken" / "t" / "failed.json").read_text())["status"] == "failed"
    assert not (tmp_path / "broken" / "t" / "summary.json").exists()

    resumed = run_stage(stage(tiny_npz), tiny_backbone(), tmp_path / "broken", resume=True)
    assert resumed.summary["resumed_from"] == 2
    assert resumed.summary["backbone_sha256"] == straight.summary["backbone_sha256"]
    assert not (tmp_path / "broken" / "t" / "failed.json").exists()


def test_first_nonfinite_names_the_first_broken_tensor_and_its_kind() -> None:
    ok, nan, inf = torch.ones(3), torch.tensor([1.0, float("nan")]), torch.tensor([float("-inf")])
    assert first_nonfinite([("a", ok), ("steps", torch.tensor([7]))]) is None
    assert first_nonfinite([("a", ok), ("b", nan), ("c", inf)]) == ("b", "nan")
    assert first_nonfinite([("c", inf), ("b", nan)]) == ("c", "inf")
