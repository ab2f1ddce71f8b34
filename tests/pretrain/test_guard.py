"""The forgetting and collapse guard: keep the best checkpoint by a validation signal, roll back on a drop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hpt.errors import HptError
from hpt.models import build_backbone, weights_sha256
from hpt.pretrain import guard as guard_module
from hpt.pretrain.guard import Guard, GuardConfig
from hpt.pretrain.signals import Reading, effective_rank
from hpt.pretrain.stage import run_stage

from .test_stage import stage, tiny_backbone

VAL = 400  # validation images of the scripted signal


def outcomes(accuracy: float) -> np.ndarray:
    """Per-image outcomes with exactly `accuracy` of VAL right, drawn independently for each accuracy, as two
    readings of different checkpoints are: a one-point difference is then within the paired noise."""
    order = np.random.default_rng(round(accuracy * 1000)).permutation(VAL)
    correct = np.zeros(VAL, dtype=bool)
    correct[order[: round(accuracy * VAL)]] = True
    return correct


class ScriptedSignal:
    """A signal that reads a scripted accuracy at each call, whatever the backbone (a synthetic run)."""

    name = "knn"
    measures_quality = True
    val_images = VAL

    def __init__(self, accuracies: list[float]) -> None:
        self.values: Iterator[float] = iter(accuracies)

    def read(self, backbone: torch.nn.Module) -> Reading:
        value = next(self.values)
        return Reading(value, outcomes(value))


def decide(accuracies: list[float], every: int, last: int, **config: object) -> list[object]:
    guard = Guard(GuardConfig(every=every, **config), ScriptedSignal(accuracies))  # type: ignore[arg-type]
    actions = []
    for i in range(len(accuracies)):
        step = i * every
        actions.append(guard.observe(step, guard.read(step, torch.nn.Identity()), last))
        if actions[-1].stop:
            break
    return [guard, *actions]


def test_guard_keeps_the_best_and_rolls_back_and_stops_on_a_drop_beyond_noise() -> None:
    guard, *actions = decide([0.60, 0.70, 0.80, 0.79, 0.60], every=10, last=100)
    assert [a.keep for a in actions] == [True, True, True, False, False]
    assert not any(a.stop for a in actions[:4])  # 0.79 after 0.80 is within noise: go on
    assert actions[-1].stop and actions[-1].rollback
    record = guard.record()
    assert record["kept_step"] == 20 and record["kept_value"] == 0.80 and record["rolled_back"]
    assert record["stopped_at"] == 40 and "fell to 0.6000 at step 40" in record["reason"]


def test_a_gain_within_noise_does_not_replace_the_start_unless_keep_best() -> None:
    guard, *actions = decide([0.70, 0.72, 0.73], every=10, last=20)
    assert [a.keep for a in actions] == [True, False, False]
    record = guard.record()
    assert record["kept_step"] == 0 and record["rolled_back"] and "no later reading above it" in record["reason"]
    guard, *actions = decide([0.70, 0.72, 0.73], every=10, last=20, keep="best")
    assert [a.keep for a in actions] == [True, True, True] and guard.record()["kept_step"] == 20


def test_guard_lowers_the_lr_on_a_drop_then_stops_after_the_allowed_lowerings() -> None:
    guard, *actions = decide([0.70, 0.60, 0.62, 0.50], every=10, last=100, on_drop="lower-lr", max_lowerings=2)
    assert actions[1].rollback and not actions[1].stop and actions[1].lr_scale == pytest.approx(0.1)
    assert actions[2].rollback and not actions[2].stop and actions[2].lr_scale == pytest.approx(0.01)
    assert actions[3].stop and actions[3].rollback and guard.record()["kept_step"] == 0


def test_budget_auto_stops_when_the_signal_stops_improving_beyond_noise() -> None:
    guard = Guard(GuardConfig(every=10, patience=2), ScriptedSignal([0.60, 0.70, 0.71, 0.72, 0.90]),  # type: ignore[arg-type]
                  auto_budget=True)
    stops = []
    for step in (0, 10, 20, 30):
        stops.append(guard.observe(step, guard.read(step, torch.nn.Identity()), 100).stop)
    assert stops == [False, False, False, True]  # 0.71 and 0.72 are within noise of 0.70
    record = guard.record()
    assert record["kept_step"] == 10 and record["rolled_back"] and "budget auto" in record["reason"]


def test_guard_state_round_trips_for_resume() -> None:
    guard, *_ = decide([0.60, 0.74], every=10, last=100)
    other = Guard(GuardConfig(every=10), ScriptedSignal([]))  # type: ignore[arg-type]
    other.load_state(guard.state())
    assert other.history == guard.history and other.kept.step == 10
    assert np.array_equal(other.kept.correct, outcomes(0.74))


def test_effective_rank_is_one_for_collapsed_features_and_the_dimension_for_isotropic_ones() -> None:
    torch.manual_seed(0)
    assert effective_rank(torch.ones(100, 16)) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.randn(4000, 16)) > 15.0


def test_guard_settings_are_validated(tiny_npz: Path) -> None:
    with pytest.raises(HptError, match="guard.lr_factor must be between 0 and 1"):
        GuardConfig(lr_factor=1.5)
    with pytest.raises(HptError, match="guard.every must be >= 1"):
        GuardConfig(every=0)
    assert stage(tiny_npz, budget="auto").guard == GuardConfig()  # auto brings a default guard


def test_stage_rolls_back_to_the_kept_checkpoint_on_a_synthetic_degrading_run(
        tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "LabelledSignal",
                        lambda *args: ScriptedSignal([0.50, 0.60, 0.70, 0.40, 0.99]))
    config = stage(tiny_npz, steps=8, guard={"every": 2}, keep_backbones=[4])
    backbone = tiny_backbone()
    result = run_stage(config, backbone, tmp_path)
    summary = result.summary
    guard = summary["guard"]
    assert guard["signal"] == "knn" and guard["kept_step"] == 4 and guard["rolled_back"]
    assert guard["history"] == [[0, 0.5], [2, 0.6], [4, 0.7], [6, 0.4]]
    assert summary["steps_done"] == 6 and summary["stopped_early"]["step"] == 6
    kept, _ = build_backbone(str(tmp_path / "s" / "backbone-step4.safetensors"))
    final, _ = build_backbone(str(tmp_path / "s" / "backbone.safetensors"))
    assert weights_sha256(final) == weights_sha256(kept) == summary["backbone_sha256"]
    saved = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert saved["guard"]["reason"].startswith("knn fell to 0.4000 at step 6")


def test_guard_with_a_real_signal_reads_the_start_and_keeps_a_step(tiny_npz: Path, tmp_path: Path) -> None:
    config = stage(tiny_npz, steps=4, guard={"every": 2, "labels": 16})
    result = run_stage(config, tiny_backbone(), tmp_path)
    guard = result.summary["guard"]
    assert [h[0] for h in guard["history"]] == [0, 2, 4] and guard["kept_step"] in (0, 2, 4)
    assert all(0.0 <= v <= 1.0 for _, v in guard["history"])
    assert (tmp_path / "s" / "guard-kept" / "last.pt").exists()


class DriftingSignal:
    """A scripted rank signal whose features move away from the start's: at each reading a scripted share of them is
    replaced by unrelated features (0: the start's representation, 1: an unrelated one)."""

    name = "rank"
    measures_quality = False
    val_images = VAL

    def __init__(self, values: list[float], drift: list[float]) -> None:
        generator = torch.Generator().manual_seed(0)
        self.start = torch.randn(VAL, 32, generator=generator)
        self.unrelated = torch.randn(VAL, 32, generator=generator)
        self.readings = iter(zip(values, drift))

    def read(self, backbone: torch.nn.Module) -> Reading:
        value, drift = next(self.readings)
        return Reading(value, None, (1 - drift) * self.start + drift * self.unrelated)


def test_agreement_below_the_floor_rolls_back_even_when_the_signal_still_rises() -> None:
    guard = Guard(GuardConfig(every=10), DriftingSignal([10.0, 11.0, 12.0, 13.0], [0.0, 0.1, 0.9, 0.9]),  # type: ignore[arg-type]
                  agreement_floor=0.5)
    actions = [guard.observe(s, guard.read(s, torch.nn.Identity()), 100) for s in (0, 10, 20)]
    assert [a.keep for a in actions] == [True, True, False]  # 11 is above 10 beyond the rank's 2% margin
    assert actions[-1].stop and actions[-1].rollback
    record = guard.record()
    assert record["kept_step"] == 10 and record["stopped_at"] == 20
    assert record["reason"].startswith("agreement with the start fell to") and "agreement_floor 0.5" in record["reason"]
    steps, values = zip(*record["agreement"])
    assert steps == (0, 10, 20) and values[0] == pytest.approx(1.0) and values[1] > 0.9 and values[2] < 0.5


def test_without_a_floor_the_same_drift_is_only_recorded() -> None:
    guard = Guard(GuardConfig(every=10), DriftingSignal([10.0, 11.0, 12.0], [0.0, 0.1, 0.9]))  # type: ignore[arg-type]
    actions = [guard.observe(s, guard.read(s, torch.nn.Identity()), 100) for s in (0, 10, 20)]
    assert not any(a.stop for a in actions) and guard.record()["kept_step"] == 20
    assert len(guard.agreement) == 3 and "agreement with the start" in actions[-1].message


def test_the_floors_auto_guard_the_rank_signal_only(tiny_npz: Path) -> None:
    from hpt.pretrain.guard import (
        DEFAULT_AGREEMENT_FLOOR,
        DEFAULT_RANK_FLOOR,
        build_guard,
    )

    cpu = torch.device("cpu")
    knn = build_guard(GuardConfig(), f"npz:{tiny_npz}", cpu, False)  # labelled: knn
    assert (knn.agreement_floor, knn.rank_floor) == (0.0, 0.0)
    rank = build_guard(GuardConfig(signal="rank"), f"npz:{tiny_npz}", cpu, False)
    assert (rank.agreement_floor, rank.rank_floor) == (DEFAULT_AGREEMENT_FLOOR, DEFAULT_RANK_FLOOR)
    chosen = build_guard(GuardConfig(agreement_floor=0.3, rank_floor=0.2), f"npz:{tiny_npz}", cpu, False)
    assert (chosen.agreement_floor, chosen.rank_floor) == (0.3, 0.2)
    for name in ("agreement_floor", "rank_floor"):
        with pytest.raises(HptError, match=f"{name} must be auto or a number in"):
            GuardConfig(**{name: 1.5})  # type: ignore[arg-type]


class FeatureSignal:
    """A scripted unlabelled signal: at each reading the features keep the first `dims` of 32 isotropic directions
    of the start's images (fewer directions: a lower effective rank, the same images)."""

    name = "rank"
    measures_quality = False
    val_images = VAL

    def __init__(self, dims: list[int]) -> None:
        self.start = torch.randn(VAL, 32, generator=torch.Generator().manual_seed(0))
        self.dims = iter(dims)

    def read(self, backbone: torch.nn.Module) -> Reading:
        features = self.start.clone()
        features[:, next(self.dims):] = 0
        return Reading(effective_rank(features), None, features)


def test_without_labels_the_latest_healthy_reading_is_kept_through_a_dip_of_the_rank() -> None:
    guard = Guard(GuardConfig(every=10), FeatureSignal([32, 24, 32, 30]), agreement_floor=0.0, rank_floor=0.5)  # type: ignore[arg-type]
    actions = [guard.observe(s, guard.read(s, torch.nn.Identity()), 30) for s in (0, 10, 20, 30)]
    assert all(a.keep for a in actions) and not any(a.rollback for a in actions)  # a dip to 0.75 is no collapse
    record = guard.record()
    assert record["kept_step"] == 30 and "the last reading above the guard's floors" in record["reason"]
    assert [r[0] for r in record["feature_rank"]] == [0, 10, 20, 30] and record["rank_floor"] == 0.5


def test_a_rank_below_the_floor_is_a_collapse_rolled_back_to_the_last_healthy_reading() -> None:
    guard = Guard(GuardConfig(every=10), FeatureSignal([32, 30, 8]), agreement_floor=0.0, rank_floor=0.5)  # type: ignore[arg-type]
    actions = [guard.observe(s, guard.read(s, torch.nn.Identity()), 100) for s in (0, 10, 20)]
    assert [a.keep for a in actions] == [True, True, False] and actions[-1].stop and actions[-1].rollback
    record = guard.record()
    assert record["kept_step"] == 10 and record["stopped_at"] == 20
    assert "effective rank of the features fell to" in record["reason"] and "rank_floor 0.5" in record["reason"]


def test_budget_auto_is_refused_with_the_rank_signal(tiny_npz: Path) -> None:
    from hpt.pretrain.guard import build_guard

    with pytest.raises(HptError, match="budget: auto .* measures health, not quality"):
        build_guard(GuardConfig(signal="rank"), f"npz:{tiny_npz}", torch.device("cpu"), True)


def test_the_start_features_and_the_agreement_survive_a_resume() -> None:
    guard = Guard(GuardConfig(every=10), DriftingSignal([10.0, 11.0], [0.0, 0.3]), agreement_floor=0.5)  # type: ignore[arg-type]
    for step in (0, 10):
        guard.observe(step, guard.read(step, torch.nn.Identity()), 100)
    resumed = Guard(GuardConfig(every=10), DriftingSignal([12.0], [0.9]), agreement_floor=0.5)  # type: ignore[arg-type]
    resumed.load_state(guard.state())
    assert torch.equal(resumed.start_features, guard.start_features) and resumed.agreement == guard.agreement
    action = resumed.observe(20, resumed.read(20, torch.nn.Identity()), 100)
    assert action.stop and action.rollback and resumed.record()["kept_step"] == 10


def test_a_real_rank_guard_records_the_agreement_with_the_start(tiny_npz: Path, tmp_path: Path) -> None:
    config = stage(tiny_npz, steps=4, guard={"every": 2, "signal": "rank", "images": 48, "agreement_floor": 0.01})
    guard = run_stage(config, tiny_backbone(), tmp_path).summary["guard"]
    assert guard["signal"] == "rank" and guard["agreement_floor"] == 0.01
    assert [a[0] for a in guard["agreement"]] == [0, 2, 4] and guard["agreement"][0][1] == pytest.approx(1.0)
    assert all(0.0 <= a[1] <= 1.0 + 1e-9 for a in guard["agreement"])


def test_what_auto_floors_mean_is_part_of_a_stage_settings(tiny_npz: Path) -> None:
    guard_settings = stage(tiny_npz, steps=4, guard={"every": 2}).semantic()["guard"]
    assert guard_settings["agreement_floor"] == "auto (0.85 with the rank signal, else 0)"
    assert guard_settings["rank_floor"] == "auto (0.5 with the rank signal, else 0)"
    chosen = stage(tiny_npz, steps=4, guard={"every": 2, "agreement_floor": 0.3}).semantic()["guard"]
    assert chosen["agreement_floor"] == 0.3
