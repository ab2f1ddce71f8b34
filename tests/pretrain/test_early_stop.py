"""The convergence stop: the rule on probe curves, and a stage that stops early and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpt.config import from_dict
from hpt.errors import HptError
from hpt.models import build_resnet
from hpt.pretrain.config import StageConfig
from hpt.pretrain.early_stop import StopConfig, should_stop
from hpt.pretrain.stage import run_stage

from ..helpers import TINY_STAGE


def curve(scores: list[float], every: int = 100) -> list[tuple[int, float]]:
    return [(every * (i + 1), s) for i, s in enumerate(scores)]


def test_a_flat_curve_stops_after_patience_probes() -> None:
    assert not should_stop(curve([0.70, 0.70, 0.70]), margin=0.002, patience=3).stop  # not enough probes yet
    decision = should_stop(curve([0.70, 0.70, 0.70, 0.701]), margin=0.002, patience=3)
    assert decision.stop and "step 100" in decision.reason


def test_a_rising_curve_does_not_stop() -> None:
    rising = curve([0.50, 0.55, 0.60, 0.65, 0.70, 0.75])
    assert not any(should_stop(rising[:n], margin=0.002, patience=3).stop for n in range(1, len(rising) + 1))


def test_a_late_gain_resets_the_patience_and_min_steps_is_honoured() -> None:
    assert not should_stop(curve([0.70, 0.70, 0.70, 0.75]), margin=0.002, patience=3).stop
    assert not should_stop(curve([0.70, 0.70, 0.70, 0.70]), margin=0.002, patience=3, min_steps=1000).stop
    assert should_stop(curve([0.70, 0.60, 0.65, 0.69]), margin=0.0, patience=3).stop  # a drop is no progress


def test_a_stage_that_never_beats_its_start_is_told_so() -> None:
    falling = [(0, 0.84), (25, 0.83), (50, 0.80), (75, 0.78)]
    decision = should_stop(falling, margin=0.01, patience=3)
    assert decision.stop and "over 0.8400 (step 0)" in decision.reason and "starting checkpoint" in decision.reason
    rising = [(0, 0.70), (25, 0.69), (50, 0.75), (75, 0.76)]
    assert not should_stop(rising, margin=0.01, patience=3).stop
    later = should_stop([(0, 0.70), (25, 0.80), (50, 0.80), (75, 0.80), (100, 0.80)], margin=0.01, patience=3)
    assert later.stop and "(step 25)" in later.reason and "starting checkpoint" not in later.reason


def test_bad_stop_settings_are_refused() -> None:
    with pytest.raises(HptError):
        StopConfig(every=0)
    with pytest.raises(HptError):
        StopConfig(margin=-1)


def test_a_stage_stops_early_and_records_when_and_why(tiny_npz: Path, tmp_path: Path) -> None:
    stop = {"every": 1, "patience": 1, "margin": 1.0, "labels": 8}  # no gain of 1.0 over step 0: stops at step 1
    config = from_dict(StageConfig, {"name": "s", "data": f"npz:{tiny_npz}", "steps": 6, **TINY_STAGE, "stop": stop})
    result = run_stage(config, build_resnet("resnet18", small_stem=True, width=8), tmp_path)
    early = result.summary["stopped_early"]
    assert result.summary["steps_done"] == 1 and early["step"] == 1 and early["steps_saved"] == 5
    assert [step for step, _ in early["probe_history"]] == [0, 1]  # the start is probed first
    assert "(step 0)" in early["reason"] and "not improved on its starting checkpoint" in early["reason"]
    assert (tmp_path / "s" / "summary.json").exists()


def test_pretrain_stop_when_converged_says_how_many_steps_it_saved(capsys: pytest.CaptureFixture[str],
                                                                     tiny_npz: Path, tmp_path: Path) -> None:
    from ..cli.test_errors import TINY
    from ..helpers import call

    code, out, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "5",
                          "--out", str(tmp_path / "o"), *TINY, "--stop-when-converged", "--probe-every", "1",
                          "--probe-patience", "1", "--probe-margin", "1.0")
    assert code == 0, err
    assert "stopped at step 1 (4 of the budget saved)" in out


def test_the_default_margin_is_one_standard_error_of_the_probe() -> None:
    import torch

    from hpt.pretrain.early_stop import OnlineProbe

    probe = OnlineProbe(StopConfig(), "npz:unused.npz", torch.device("cpu"))
    probe.history = [(100, 0.75)]

    class FakeSignal:
        val_images = 1000

    probe._signal = FakeSignal()  # type: ignore[assignment]
    assert probe.margin() == pytest.approx((0.75 * 0.25 / 1000) ** 0.5)
    assert OnlineProbe(StopConfig(margin=0.05), "npz:x.npz", torch.device("cpu")).margin() == 0.05
