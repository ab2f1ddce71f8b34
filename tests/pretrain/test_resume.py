"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..helpers import run_cli, write_hierarchy

KILL_AFTER_STEP_5 = ["--signal", "KILL", "--after-step", "5"]  # tests/faults/fault_runner.py: SIGKILL after step 5


def test_kill_and_resume_gives_the_same_weights(tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 6}])
    straight = run_cli("run", str(config), "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    killed = run_cli("run", str(config), "--out", str(tmp_path / "killed"), fault=KILL_AFTER_STEP_5)
    assert killed.returncode == -9  # SIGKILL after step 5; the last state was saved at step 4
    assert not (tmp_path / "killed" / "t" / "summary.json").exists()
    state_dir = tmp_path / "killed" / "t" / "state"
    assert [p.name for p in state_dir.iterdir()] == ["last.pt"]  # no half-written temp files

    again = run_cli("run", str(config), "--out", str(tmp_path / "killed"))
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = run_cli("run", str(config), "--out", str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "t" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "t" / "summary.json").read_text())
    assert b["resumed_from"] == 4 and b["steps_done"] == a["steps_done"] == 6
    assert a["backbone_sha256"] == b["backbone_sha256"]
    rows = (tmp_path / "killed" / "t" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_webdataset_shards_kill_and_resume_gives_the_same_weights(tmp_path: Path) -> None:
    from ..data.test_wds import write_shards

    pattern = write_shards(tmp_path / "shards", sizes=(20, 20, 24))
    stage = {"name": "t", "data": pattern, "steps": 6, "augment": {"image_size": 8, "remove": ["gaussian_blur"]}}
    config = write_hierarchy(tmp_path / "h.yaml", [stage])
    env = {"HPT_CACHE": str(tmp_path / "cache")}
    straight = run_cli("run", str(config), "--out", str(tmp_path / "straight"), env=env)
    assert straight.returncode == 0, straight.stderr
    killed = run_cli("run", str(config), "--out", str(tmp_path / "killed"), env=env, fault=KILL_AFTER_STEP_5)
    assert killed.returncode == -9
    resumed = run_cli("run", str(config), "--out", str(tmp_path / "killed"), "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "t" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "t" / "summary.json").read_text())
    assert b["resumed_from"] == 4 and a["backbone_sha256"] == b["backbone_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize(("after_step", "moment"), [(3, "optimizer"), (3, "forward"), (4, "between")])
def test_kill_at_any_point_of_a_step_resumes_bit_for_bit(tiny_npz: Path, tmp_path: Path, after_step: int,
                                                         moment: str) -> None:
    from hpt.pretrain.state import load_state

    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 6}])
    straight = run_cli("run", str(config), "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed = run_cli("run", str(config), "--out", str(tmp_path / "killed"),
                     fault=["--signal", "KILL", "--after-step", str(after_step), "--moment", moment])
    assert killed.returncode == -9
    state = load_state(tmp_path / "killed" / "t" / "state")
    assert state is not None and int(state["step"]) < 6
    resumed = run_cli("run", str(config), "--out", str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "t" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "t" / "summary.json").read_text())
    assert b["resumed_from"] == int(state["step"]) and a["backbone_sha256"] == b["backbone_sha256"]
