"""Ctrl-C (SIGINT) during training saves the state of the step it finishes; a resume then ends bit for bit like an
uninterrupted run, wherever in the step the interrupt came."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpt.pretrain.state import load_state

from ..helpers import run_cli, write_hierarchy


def interrupt_and_resume(config: Path, out: Path, after_step: int, moment: str, signal: str = "INT"
                         ) -> tuple[dict, int]:
    """(the resumed run's summary, the step the interrupted run saved)."""
    interrupted = run_cli("run", str(config), "--out", str(out),
                          fault=["--signal", signal, "--after-step", str(after_step), "--moment", moment])
    assert interrupted.returncode == 2, interrupted.stderr
    state = load_state(out / "t" / "state")
    assert state is not None
    assert f"interrupted after step {state['step']}; its state is saved" in interrupted.stderr
    assert not (out / "t" / "summary.json").exists()
    resumed = run_cli("run", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    return json.loads((out / "t" / "summary.json").read_text()), int(state["step"])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from ..conftest import write_npz

    folder = tmp_path_factory.mktemp("interrupt")
    data = write_npz(folder / "tiny.npz")
    config = write_hierarchy(folder / "h.yaml", [{"name": "t", "data": f"npz:{data}", "steps": 6}])
    done = run_cli("run", str(config), "--out", str(folder / "straight"))
    assert done.returncode == 0, done.stderr
    return config, json.loads((folder / "straight" / "t" / "summary.json").read_text())


def test_sigint_right_after_an_optimizer_step_saves_that_step(straight_run: tuple[Path, dict],
                                                               tmp_path: Path) -> None:
    config, straight = straight_run
    resumed, saved = interrupt_and_resume(config, tmp_path / "out", 3, "optimizer")
    assert saved == 3 and resumed["resumed_from"] == 3  # not 2: step 3's update was already applied
    assert resumed["steps_done"] == 6
    assert resumed["backbone_sha256"] == straight["backbone_sha256"]


def test_sigterm_stops_at_a_step_boundary_like_ctrl_c(straight_run: tuple[Path, dict], tmp_path: Path) -> None:
    config, straight = straight_run
    resumed, saved = interrupt_and_resume(config, tmp_path / "out", 2, "between", signal="TERM")
    assert saved == 3 and resumed["resumed_from"] == 3
    assert resumed["backbone_sha256"] == straight["backbone_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize(("after_step", "moment", "saved"), [
    (2, "optimizer", 2), (5, "optimizer", 5),  # right after the optimizer step, before the loop counts it
    (3, "forward", 4),  # half-way through step 4's forward: BatchNorm statistics already moved
    (2, "between", 3),  # between two steps: the next one is run and saved
])
def test_sigint_at_any_point_of_a_step_resumes_bit_for_bit(straight_run: tuple[Path, dict], tmp_path: Path,
                                                           after_step: int, moment: str, saved: int) -> None:
    config, straight = straight_run
    resumed, saved_step = interrupt_and_resume(config, tmp_path / "out", after_step, moment)
    assert saved_step == saved and resumed["resumed_from"] == saved
    assert resumed["backbone_sha256"] == straight["backbone_sha256"]


def test_the_first_sigint_or_sigterm_is_deferred_and_a_second_one_stops_at_once() -> None:
    import os
    import signal

    from hpt.pretrain.interrupt import DeferredInterrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for first, second in ((signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)):
        interrupt = DeferredInterrupt().install()
        try:
            os.kill(os.getpid(), first)
            assert interrupt.requested  # noted, nothing raised: the step goes on
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), second)
        finally:
            interrupt.restore()
        assert {s: signal.getsignal(s) for s in before} == before
