"""Experiments with ViT and ConvNeXt bases: the Random/Target start is random weights of the base's named
architecture (refused, with the reason, where no name rebuilds it), HPT-BN becomes HPT-norm (train: norm) for a
backbone without BatchNorm, bn-stats is a logged no-op there, compare runs end to end on a ViT; and the stage ids
of ResNet experiments are exactly those of before."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hpt.errors import HptError
from hpt.experiments import (
    Variant,
    expand,
    load_experiment,
    parse_experiment,
    run_experiment,
)
from hpt.experiments.family import HPT_BN, HPT_NORM, norm_training, random_start
from hpt.models import (
    build_convnext,
    build_random,
    build_resnet,
    build_vit,
    save_backbone,
    weights_sha256,
)
from hpt.models.families import arch_of
from hpt.pretrain.config import StageConfig
from hpt.pretrain.hierarchy import BaseConfig
from hpt.pretrain.stage import run_stage
from hpt.report import build_report

from ..conftest import write_npz

# Spelled out here (not tests/helpers.TINY_STAGE) so that the pinned ids below depend on nothing else.
STAGE = {"batch_size": 16, "precision": "fp32", "device": "cpu", "log_every": 1, "checkpoint_every": 2,
         "workers": 0, "moco": {"dim": 16, "bn_splits": 2}, "augment": {"image_size": 16}}
BUDGETS = {"hpt": 2, "hpt_bn": 2, "target": 3, "source": 2, "bn_stats": 2}
RESNET = {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8}
#: compare's (label, stage ids, result id) for RESNET on npz:target.npz, as hpt named them before ViTs and ConvNeXts
#: (finished runs are found by these ids: they must never change).
PINNED = [("Random", [], "start-789610f51fbc"), ("Base", ["bn-stats-29e36fba5f99"], "bn-stats-29e36fba5f99"),
          ("Target", ["target-ea6899e4f988"], "target-ea6899e4f988"),
          ("HPT", ["target-d0296e3c451b"], "target-d0296e3c451b"),
          ("HPT-BN", ["target-bn-3510b564b6cb"], "target-bn-3510b564b6cb")]


def raw_experiment(base: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tiny", "target": "npz:target.npz", "source": "npz:source.npz", "out": "out", "base": base,
            "defaults": STAGE, "budgets": BUDGETS, "fractions": [0.5, 1.0],
            "eval": {"protocols": ["linear"], "linear": {"steps": 6, "eval_every": 3}, "device": "cpu"}}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working folder, with target.npz and source.npz (relative data specs: ids without tmp_path)."""
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "target.npz", n_train=48, seed=2)
    write_npz(tmp_path / "source.npz", n_train=48, seed=3)
    return tmp_path


def ids(variants: list[Variant]) -> list[tuple[str, list[str], str]]:
    return [(v.label, v.stage_ids(), v.result_id()) for v in variants]


def test_resnet_experiment_ids_are_unchanged(folder: Path) -> None:
    assert ids(expand("compare", parse_experiment(raw_experiment(RESNET)))) == PINNED
    base = folder / "base.safetensors"  # a ResNet file: its Random and Target rows start where RESNET's do
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), base)
    rows = {v.label: v for v in expand("compare", parse_experiment(raw_experiment({"checkpoint": str(base)})))}
    assert (rows["Random"].result_id(), rows["Target"].stage_ids()) == (PINNED[0][2], PINNED[2][1])
    assert [(s.name, s.train) for s in rows["HPT-BN"].stages] == [("target-bn", "bn")]
    datasize = expand("datasize", parse_experiment(raw_experiment({"checkpoint": str(base)})))
    assert sorted({v.series for v in datasize}) == ["Base", "HPT", "HPT-BN", "Target"]


def test_a_vit_or_convnext_base_gets_a_named_random_start_and_hpt_norm(folder: Path) -> None:
    for arch in ("vit_tiny_patch4_16", "convnext_atto_patch2"):
        path = folder / f"{arch}.safetensors"
        save_backbone(build_random(arch), path)
        config = parse_experiment(raw_experiment({"checkpoint": str(path)}))
        rows = {v.label: v for v in expand("compare", config)}
        assert list(rows) == ["Random", "Base", "Target", "HPT", "HPT-norm"]
        start = BaseConfig("random", arch, None, None, 0)
        assert rows["Random"].start == rows["Target"].start == start
        assert [(s.name, s.train, s.steps) for s in rows["HPT-norm"].stages] == [("target-norm", "norm", 2)]
        assert [s.train for s in rows["Base"].stages] == ["bn-stats"]
        assert {v.series for v in expand("datasize", config)} >= {"HPT-norm"}
        assert norm_training(BaseConfig("random", arch)) == HPT_NORM
    assert norm_training(BaseConfig("random", "resnet18")) == norm_training(BaseConfig()) == HPT_BN


def test_a_base_no_name_rebuilds_is_refused_where_a_random_start_is_needed(folder: Path) -> None:
    custom = folder / "custom.safetensors"
    save_backbone(build_vit(None, embed_dim=32, depth=2, num_heads=2, patch_size=4, img_size=16), custom)
    layerscale = folder / "layerscale.safetensors"  # DINOv2's LayerScale: vit_tiny_patch4_16 would have none
    save_backbone(build_vit("vit_tiny", patch_size=4, img_size=16, init_values=1e-5), layerscale)
    with pytest.raises(HptError, match="cannot build that of .*custom.safetensors.*unknown architecture "
                                       "'vit_custom_patch4_16'"):
        expand("compare", parse_experiment(raw_experiment({"checkpoint": str(custom)})))
    with pytest.raises(HptError, match=r"layer_scale True \(the base\) vs False \(vit_tiny_patch4_16\)"):
        random_start(BaseConfig(str(layerscale)))
    sequential = expand("sequential", parse_experiment(raw_experiment({"checkpoint": str(custom)})))
    assert [v.label for v in sequential] == ["B", "B+S", "B+T", "B+S+T"]  # no random start: runs as it is


def test_bn_stats_leaves_a_backbone_without_batchnorm_alone_and_says_so_once(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = build_convnext("convnext_atto", patch_size=1)
    sha = weights_sha256(model)
    config = StageConfig(name="bn-stats", data="npz:missing.npz", steps=2, train="bn-stats", **STAGE)
    with caplog.at_level(logging.INFO, logger="hpt"):
        result = run_stage(config, model, folder / "stats")  # no data is read: a missing file is no error
    notes = [r.message for r in caplog.records if "no BatchNorm" in r.message]
    assert notes == ["stage 'bn-stats': the backbone has no BatchNorm layers, so bn-stats leaves it as it is"]
    assert result.summary["steps_done"] == 0 and result.summary["backbone_sha256"] == sha == weights_sha256(model)


def test_compare_with_a_tiny_vit_base_runs_end_to_end(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)  # not the Random row's weights (seed 0)
    base = build_random("vit_tiny_patch4_16")
    save_backbone(base, folder / "base.safetensors")
    raw = {**raw_experiment({"checkpoint": "base.safetensors"}), "budgets": {**BUDGETS, "target": 2}}
    (folder / "experiment.yaml").write_text(yaml.safe_dump(raw))
    config = load_experiment(folder / "experiment.yaml")
    with caplog.at_level(logging.INFO, logger="hpt"):
        result = run_experiment("compare", config, folder / "out")
    rows = {row["variant"]: row for row in result.rows}
    assert list(rows) == ["Random", "Base", "Target", "HPT", "HPT-norm"]
    assert rows["HPT-norm"]["stages"] == "target-norm(norm, 2 steps)" and rows["HPT-norm"]["pretrain_steps"] == 2
    assert rows["Base"]["backbone_sha256"] == weights_sha256(base)  # bn-stats changed nothing
    assert rows["HPT-norm"]["backbone_sha256"] != weights_sha256(base)  # its LayerNorms trained
    assert len({row["backbone_sha256"] for row in result.rows}) == 5
    for row in result.rows:
        assert row["protocol"] == "linear" and 0 <= row["test"] <= 1
        record = json.loads((folder / "out" / row["eval_dir"] / "linear" / "results.json").read_text())
        assert record["backbone"]["arch"] == "vit_tiny_patch4_16"
    assert sum("no BatchNorm" in r.message for r in caplog.records) == 1
    report = build_report(folder / "out", "tiny").read_text()
    assert "HPT-norm" in report and "- HPT-norm - Base:" in report
    assert arch_of(base) == "vit_tiny_patch4_16"
