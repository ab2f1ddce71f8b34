"""The sweep experiment: HPT at each value of one stage setting, the value chosen on val, test read for it only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpt.errors import HptError
from hpt.experiments import expand, load_experiment, parse_experiment
from hpt.experiments.plan import Variant
from hpt.experiments.runner import stage_health
from hpt.models import build_resnet, save_backbone
from hpt.report import build_report
from hpt.report.sweep import sweep_table

from ..conftest import write_npz
from ..helpers import TINY_STAGE


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    write_npz(tmp_path / "target.npz", n_train=32, seed=2)
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), tmp_path / "base.safetensors")
    raw = {"name": "tiny", "target": "npz:target.npz", "base": {"checkpoint": "base.safetensors"},
           "defaults": TINY_STAGE, "budgets": {"hpt": 2, "bn_stats": 2, "hpt_lr": 0.05},
           "sweep": {"setting": "moco.temperature", "values": [0.1, 0.2, 0.5]}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_sweep_expands_into_the_base_and_hpt_at_each_value_of_a_nested_setting(sweep_file: Path) -> None:
    variants = expand("sweep", load_experiment(sweep_file))
    assert [(v.label, v.series, v.x) for v in variants] == [("Base", "", None), ("HPT", "HPT", 0.1),
                                                            ("HPT", "HPT", 0.2), ("HPT", "HPT", 0.5)]
    assert [s.train for s in variants[0].stages] == ["bn-stats"]
    hpt = variants[1:]
    assert [v.stages[-1].moco.temperature for v in hpt] == [0.1, 0.2, 0.5]
    assert all(v.stages[-1].moco.dim == 16 and v.stages[-1].lr == 0.05 for v in hpt)  # the rest stays as set
    assert all(v.setting == "moco.temperature" for v in hpt)
    assert len({v.stage_ids()[-1] for v in hpt}) == 3
    compare_hpt = next(v for v in expand("compare", load_experiment(sweep_file)) if v.label == "HPT")
    default = expand("sweep", load_experiment(sweep_file, ["sweep.values=[0.2]"]))[1]
    assert default.stage_ids() == compare_hpt.stage_ids()  # the default value is compare's HPT run, reused
    seeded = expand("sweep", load_experiment(sweep_file, ["seeds=[0,1]"]))
    assert [(v.x, v.stages[-1].seed) for v in seeded if v.series == "HPT"] == [
        (0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1), (0.5, 0), (0.5, 1)]


def test_a_swept_lr_wins_over_budgets_hpt_lr(sweep_file: Path) -> None:
    config = load_experiment(sweep_file, ["sweep={setting: lr, values: [0.01, 0.1]}"])
    assert [v.stages[-1].lr for v in expand("sweep", config)[1:]] == [0.01, 0.1]


def test_bad_sweeps_are_refused(sweep_file: Path) -> None:
    raw = yaml.safe_load(sweep_file.read_text())
    root = sweep_file.parent
    with pytest.raises(HptError, match="the sweep experiment needs 'sweep:'"):
        expand("sweep", parse_experiment({k: v for k, v in raw.items() if k != "sweep"}, root))
    with pytest.raises(HptError, match="sweep.values is empty"):
        parse_experiment({**raw, "sweep": {"setting": "lr", "values": []}}, root)
    with pytest.raises(HptError, match="sweep.setting 'steps' is not a stage setting a sweep may vary"):
        parse_experiment({**raw, "sweep": {"setting": "steps", "values": [1, 2]}}, root)
    with pytest.raises(HptError, match="repeats a value"):
        parse_experiment({**raw, "sweep": {"setting": "lr", "values": [0.1, 0.1]}}, root)
    with pytest.raises(HptError, match="temprature"):
        expand("sweep", parse_experiment({**raw, "sweep": {"setting": "moco.temprature", "values": [0.1]}}, root))


def _row(series: str, x: Any, val: float, test: float, **extra: Any) -> dict[str, Any]:
    return {"experiment": "sweep", "variant": "HPT" if series == "HPT" else "Base", "series": series, "x": x,
            "setting": "moco.temperature" if series == "HPT" else None, "protocol": "linear", "metric": "top1",
            "val": val, "test": test, "low": test - 0.01, "high": test + 0.01, "seeds": 1, "seed_std": 0.0,
            "test_images": 1000, "pretrain_steps": 10, "images_seen": 100, "pretrain_wall_s": 1.0,
            "eval_wall_s": 1.0, "stages": "s", "start": "x", "result_id": "r", "eval_dir": "stages/r/eval/target",
            "backbone_sha256": "s", "pretrain_seed": 0, **extra}


def test_the_sweep_report_chooses_the_value_on_val_and_reads_test_for_it_only(tmp_path: Path) -> None:
    rows = [_row("Base", None, 0.60, 0.62), _row("HPT", 0.1, 0.70, 0.90), _row("HPT", 0.2, 0.75, 0.80),
            _row("HPT", 0.5, 0.80, 0.85, collapse={"step": 40, "spread": 0.02})]
    table = sweep_table(rows)
    assert "| Base (no HPT) | 60.0 | 62.0 [61.0, 63.0] | reference |" in table
    assert "| 0.1 | 70.0 | - |  |" in table  # the best test score, not chosen and not shown
    assert "| 0.2 | 75.0 | 80.0 [79.0, 81.0] | chosen on val |" in table
    assert "| 0.5 | 80.0 | - | did not learn (embeddings collapsed at step 40) |" in table
    assert "- chosen: moco.temperature = 0.2 (the highest val score, 75.0)" in table
    assert "- HPT (moco.temperature = 0.2) - Base: +18.0 points, beyond noise" in table
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = build_report(tmp_path).read_text()
    assert "## One HPT setting swept, the value chosen on validation" in text and "chosen on val |" in text
    assert (tmp_path / "figures" / "sweep_linear.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().count("sweep,HPT,HPT,") == 3  # every value's row is kept


def test_rows_carry_the_last_training_stages_collapse_and_guard(sweep_file: Path) -> None:
    base, hpt = expand("sweep", load_experiment(sweep_file))[:2]
    guard = {"signal": "knn", "kept_step": 2, "kept_value": 0.4, "reason": "fell", "rolled_back": True,
             "history": [[1, 0.4], [2, 0.3]]}
    summary = {"collapse": {"step": 2, "spread": 0.01}, "guard": guard}
    assert stage_health(base, [{"steps_done": 2}]) == {"collapse": None, "guard": None}  # bn-stats: no gradient
    health = stage_health(hpt, [summary])
    assert health["collapse"] == {"step": 2, "spread": 0.01}
    assert health["guard"] == {k: v for k, v in guard.items() if k != "history"}
    snapshot = Variant(hpt.experiment, hpt.label, hpt.start, hpt.stages, snapshot=1)
    assert stage_health(snapshot, [summary]) == {"collapse": None, "guard": None}  # collapsed after the snapshot
    assert stage_health(hpt, [{"collapse": None}]) == {"collapse": None, "guard": None}
    late = {"collapse": {"step": 3, "spread": 0.01}, "guard": {**guard, "kept_step": 2}}
    assert stage_health(hpt, [late])["collapse"] is None  # the guard rolled back to a step before the collapse
    kept = {**late, "guard": {**late["guard"], "rolled_back": False}}
    assert stage_health(hpt, [kept])["collapse"] == {"step": 3, "spread": 0.01}
