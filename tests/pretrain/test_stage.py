from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpt.errors import HptError
from hpt.models import build_resnet, weights_sha256
from hpt.pretrain.config import StageConfig
from hpt.pretrain.hierarchy import parse_hierarchy, run_hierarchy
from hpt.pretrain.stage import run_stage

from ..helpers import TINY_STAGE


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", small_stem=True, width=8)


def stage(data: Path, **kw: object) -> StageConfig:
    from hpt.config import from_dict

    return from_dict(StageConfig, {"name": "s", "data": f"npz:{data}", "steps": 4, **TINY_STAGE, **kw})


def split_state(model: torch.nn.Module) -> tuple[dict, dict, dict]:
    convs, bn_params, bn_stats = {}, {}, {}
    for name, module in model.named_modules():
        for key, value in module.state_dict().items():
            if "." in key:
                continue
            full = f"{name}.{key}"
            if isinstance(module, torch.nn.BatchNorm2d):
                (bn_params if key in ("weight", "bias") else bn_stats)[full] = value.clone()
            else:
                convs[full] = value.clone()
    return convs, bn_params, bn_stats


def test_bn_mode_freezes_every_conv_weight_and_trains_batchnorm(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    convs, bn_params, _ = split_state(backbone)
    run_stage(stage(tiny_npz, train="bn", lr=0.5), backbone, tmp_path)
    convs_after, bn_after, _ = split_state(backbone)
    assert convs and all(torch.equal(convs[k], convs_after[k]) for k in convs)  # bit-identical
    assert any(not torch.equal(bn_params[k], bn_after[k]) for k in bn_params)


def test_all_mode_changes_conv_weights(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    convs, _, _ = split_state(backbone)
    result = run_stage(stage(tiny_npz, train="all"), backbone, tmp_path)
    convs_after, _, _ = split_state(backbone)
    assert any(not torch.equal(convs[k], convs_after[k]) for k in convs)
    assert (tmp_path / "s" / "backbone.safetensors").exists() and (tmp_path / "s" / "metrics.csv").exists()
    rows = (tmp_path / "s" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 5
    assert result.summary["steps_done"] == 4 and result.summary["images_per_s"] > 0


def test_bn_stats_mode_changes_only_running_statistics(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    convs, bn_params, bn_stats = split_state(backbone)
    run_stage(stage(tiny_npz, train="bn-stats", steps=3), backbone, tmp_path)
    convs_after, bn_after, stats_after = split_state(backbone)
    assert all(torch.equal(convs[k], convs_after[k]) for k in convs)
    assert all(torch.equal(bn_params[k], bn_after[k]) for k in bn_params)
    changed = [k for k in bn_stats if k.endswith("running_mean") and not torch.equal(bn_stats[k], stats_after[k])]
    assert len(changed) == sum(k.endswith("running_mean") for k in bn_stats)


def test_none_mode_keeps_the_backbone(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    before = weights_sha256(backbone)
    result = run_stage(stage(tiny_npz, train="none"), backbone, tmp_path)
    assert weights_sha256(backbone) == before == result.summary["backbone_sha256"]


def test_finished_stage_is_skipped_and_changed_settings_are_refused(tiny_npz: Path, tmp_path: Path) -> None:
    first = run_stage(stage(tiny_npz), tiny_backbone(), tmp_path)
    mtime = first.backbone_path.stat().st_mtime_ns
    again_backbone = tiny_backbone()
    again = run_stage(stage(tiny_npz), again_backbone, tmp_path)
    assert again.skipped and first.backbone_path.stat().st_mtime_ns == mtime
    assert weights_sha256(again_backbone) == first.summary["backbone_sha256"]
    with pytest.raises(HptError, match="other settings.*steps: 4 -> 6"):
        run_stage(stage(tiny_npz, steps=6), tiny_backbone(), tmp_path)
    assert first.backbone_path.stat().st_mtime_ns == mtime  # the finished stage is untouched


def test_unfinished_run_needs_resume(tiny_npz: Path, tmp_path: Path) -> None:
    from hpt.pretrain.state import save_state

    (tmp_path / "s").mkdir()
    save_state(tmp_path / "s" / "state", {"step": 2, "semantic": {}})
    with pytest.raises(HptError, match="unfinished run.*step 2.*--resume"):
        run_stage(stage(tiny_npz), tiny_backbone(), tmp_path)


def test_hierarchy_chains_each_stage_from_the_previous_backbone(tiny_npz: Path, tiny_gray_npz: Path,
                                                                tmp_path: Path) -> None:
    raw = {
        "base": {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8},
        "defaults": TINY_STAGE,
        "stages": [
            {"name": "base", "data": f"npz:{tiny_npz}", "steps": 2},
            {"name": "source", "data": f"npz:{tiny_gray_npz}", "steps": 2, "train": "bn"},
            {"name": "target", "data": f"npz:{tiny_npz}?split=val", "steps": 2, "batch_size": 8},
        ],
    }
    result = run_hierarchy(parse_hierarchy(raw), tmp_path)
    summaries = [s.summary for s in result.stages]
    assert [s["stage"] for s in summaries] == ["base", "source", "target"]
    for previous, current in zip(summaries, summaries[1:]):
        assert current["config"]["init_sha256"] == previous["backbone_sha256"]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["base", "source", "target"]
    rerun = run_hierarchy(parse_hierarchy(raw), tmp_path)
    assert all(s.skipped for s in rerun.stages)


def test_keep_backbones_saves_intermediate_backbones_without_changing_the_result(tiny_npz: Path,
                                                                                   tmp_path: Path) -> None:
    from hpt.models import build_backbone

    plain = run_stage(stage(tiny_npz, steps=3), tiny_backbone(), tmp_path / "plain")
    kept = run_stage(stage(tiny_npz, steps=3, keep_backbones=[1, 3]), tiny_backbone(), tmp_path / "kept")
    assert kept.summary["backbone_sha256"] == plain.summary["backbone_sha256"]
    first, _ = build_backbone(str(tmp_path / "kept" / "s" / "backbone-step1.safetensors"))
    last, _ = build_backbone(str(tmp_path / "kept" / "s" / "backbone-step3.safetensors"))
    assert weights_sha256(last) == plain.summary["backbone_sha256"] != weights_sha256(first)
    assert not (tmp_path / "kept" / "s" / "backbone-step2.safetensors").exists()


def test_sync_batchnorm_converts_back_to_plain_batchnorm_with_the_same_state() -> None:
    from torch import nn

    from hpt.models import SplitBatchNorm2d
    from hpt.pretrain.batchnorm import restore_batchnorm

    model = tiny_backbone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    restore_batchnorm(model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert all(type(m) is SplitBatchNorm2d for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()(torch.randn(4, 3, 16, 16))  # runs without a process group


def test_batchnorm_sync_on_one_process_trains_without_key_shuffle(tiny_npz: Path, tmp_path: Path) -> None:
    shuffled = run_stage(stage(tiny_npz, steps=2), tiny_backbone(), tmp_path / "a")
    synced = run_stage(stage(tiny_npz, steps=2, batchnorm="sync"), tiny_backbone(), tmp_path / "b")
    assert synced.summary["bn_splits_per_process"] == 1 and shuffled.summary["bn_splits_per_process"] == 2
    assert synced.summary["backbone_sha256"] != shuffled.summary["backbone_sha256"]


def test_head_warmup_keeps_the_backbone_then_trains_it(tiny_npz: Path, tmp_path: Path) -> None:
    from hpt.models import load_backbone

    backbone = tiny_backbone()
    convs, bn_params, _ = split_state(backbone)
    run_stage(stage(tiny_npz, head_warmup_steps=3, keep_backbones=[3], lr=0.5), backbone, tmp_path)
    after_warmup = tiny_backbone()
    load_backbone(after_warmup, tmp_path / "s" / "backbone-step3.safetensors")
    convs_3, bn_params_3, _ = split_state(after_warmup)
    assert all(torch.equal(convs[k], convs_3[k]) for k in convs)  # bit-identical through the warm-up
    assert all(torch.equal(bn_params[k], bn_params_3[k]) for k in bn_params)
    convs_end, _, _ = split_state(backbone)
    assert any(not torch.equal(convs[k], convs_end[k]) for k in convs)  # step 4 trained it


def refusal_of_a_run_made_before(setting: str, config: StageConfig, tmp_path: Path) -> str | None:
    """Why a default run on the same data, recorded by an hpt that did not have `setting` yet (dotted; its record
    lacks it), would not be reused by `config`, or None when it would."""
    from dataclasses import fields

    from hpt.pretrain.stage import _check_same, recorded_settings

    defaults = {f.name: getattr(config, f.name) for f in fields(StageConfig) if f.name in ("name", "data", "steps")}
    record = recorded_settings(StageConfig(**defaults, **{k: v for k, v in vars(config).items()
                                                          if k in TINY_STAGE}), "start")
    *parents, last = setting.split(".")
    node = record
    for part in parents:
        node = node[part]
    node.pop(last, None)
    try:
        _check_same(record, recorded_settings(config, "start"), tmp_path, "finished")
    except HptError as err:
        return str(err)
    return None


def test_head_warmup_is_validated_and_runs_made_before_it_existed_are_reused_only_without_it(tiny_npz: Path,
                                                                                             tmp_path: Path) -> None:
    assert refusal_of_a_run_made_before("head_warmup_steps", stage(tiny_npz), tmp_path) is None
    assert "head_warmup_steps: 0 -> 2" in refusal_of_a_run_made_before(
        "head_warmup_steps", stage(tiny_npz, head_warmup_steps=2), tmp_path)
    with pytest.raises(HptError, match="head_warmup_steps must be >= 0 and below steps"):
        stage(tiny_npz, head_warmup_steps=4)


def test_a_batchnorm_projection_head_trains_and_is_told_apart_from_runs_without_it(tiny_npz: Path,
                                                                                     tmp_path: Path) -> None:
    from hpt.methods.mocov2 import MocoV2, SplitBatchNorm1d

    assert refusal_of_a_run_made_before("moco.head_bn", stage(tiny_npz), tmp_path) is None
    model = MocoV2(tiny_backbone(), stage(tiny_npz, moco={"head_bn": True}).moco, queue_size=16)
    assert isinstance(model.head[1], SplitBatchNorm1d) and isinstance(model.head_k[1], SplitBatchNorm1d)
    model.set_bn_splits(2)
    assert model.head[1].num_splits == 2
    out = model(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16))
    out.loss.backward()
    assert model.head[1].weight.grad is not None and model.head_k[1].weight.grad is None
    result = run_stage(stage(tiny_npz, moco={"head_bn": True}), tiny_backbone(), tmp_path)
    assert result.summary["steps_done"] == 4
    with pytest.raises(HptError, match=r"moco.head_bn: True -> False"):
        run_stage(stage(tiny_npz), tiny_backbone(), tmp_path)


def test_scheduled_lr_warms_up_linearly_then_decays_by_cosine() -> None:
    import math

    from hpt.pretrain.schedule import scheduled_lr

    assert [scheduled_lr(0.1, s, 10, 4) for s in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert scheduled_lr(0.1, 4, 10, 4) == pytest.approx(0.1)  # the cosine starts at the peak
    assert scheduled_lr(0.1, 7, 10, 4) == pytest.approx(0.05)  # half-way through the remaining 6 steps
    assert [scheduled_lr(0.1, s, 10) for s in range(10)] == pytest.approx(
        [0.05 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])  # no warm-up: the plain cosine


def test_lr_warmup_is_logged_validated_and_told_apart_from_runs_without_it(tiny_npz: Path, tmp_path: Path) -> None:
    import csv

    assert refusal_of_a_run_made_before("lr_warmup_steps", stage(tiny_npz), tmp_path) is None
    with pytest.raises(HptError, match="lr_warmup_steps must be >= 0 and below steps"):
        stage(tiny_npz, lr_warmup_steps=4)
    run_stage(stage(tiny_npz, lr_warmup_steps=2, lr=0.4), tiny_backbone(), tmp_path)
    with pytest.raises(HptError, match=r"lr_warmup_steps: 2 -> 0"):
        run_stage(stage(tiny_npz, lr=0.4), tiny_backbone(), tmp_path)
    with open(tmp_path / "s" / "metrics.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    peak = 0.4 * 16 / 256  # linear scaling to the tiny batch of 16
    assert lrs[:3] == pytest.approx([peak / 2, peak, peak]) and lrs[3] < peak


def _continued_run(data: Path, out: Path, **second: object):  # noqa: ANN202
    raw = {
        "base": {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8},
        "defaults": TINY_STAGE,
        "stages": [{"name": "first", "data": f"npz:{data}", "steps": 2},
                   {"name": "more", "data": f"npz:{data}", "steps": 2, "continue_method": True, **second}],
    }
    return run_hierarchy(parse_hierarchy(raw), out)


def test_continue_method_starts_from_the_previous_stages_head_and_keeps_the_backbone(tiny_npz: Path,
                                                                                     tmp_path: Path) -> None:
    from hpt.pretrain.state import load_state

    result = _continued_run(tiny_npz, tmp_path, lr=0.0)  # lr 0: the head stays what it was handed
    first = load_state(tmp_path / "first" / "state")["model"]
    more = load_state(tmp_path / "more" / "state")["model"]
    head = [k for k in first if k.startswith("head.")]  # the query head (the key head moves with its momentum)
    assert head and all(torch.equal(first[k], more[k]) for k in head)
    assert result.stages[1].summary["config"]["continue_method"] is True
    assert result.stages[1].summary["config"]["init_sha256"] == result.stages[0].summary["backbone_sha256"]
    assert "continue_method" not in result.stages[0].summary["config"]  # unset: old stage ids unchanged


def test_continue_method_refuses_what_it_cannot_continue(tiny_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(HptError, match="continue_method cannot load.*queue size differ"):
        _continued_run(tiny_npz, tmp_path / "queue", moco={"queue_size": 32})
    alone = stage(tiny_npz, continue_method=True)
    with pytest.raises(HptError, match="needs a previous stage"):
        run_stage(alone, tiny_backbone(), tmp_path / "alone")
    raw = {"base": {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8},
           "defaults": TINY_STAGE,
           "stages": [{"name": "stats", "data": f"npz:{tiny_npz}", "steps": 1, "train": "bn-stats"},
                      {"name": "more", "data": f"npz:{tiny_npz}", "steps": 2, "continue_method": True}]}
    with pytest.raises(HptError, match="holds none"):
        run_hierarchy(parse_hierarchy(raw), tmp_path / "stats")


def test_moved_data_is_the_same_data_but_another_existing_file_is_not(tiny_npz: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    first_home, second_home, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    first_home.mkdir(), second_home.mkdir()
    data = first_home / "target.npz"
    shutil.copy(tiny_npz, data)
    first = run_stage(stage(data), tiny_backbone(), out)
    shutil.copy(data, second_home / "target.npz")  # a copy elsewhere while the original still exists: not the same
    with pytest.raises(HptError, match="other settings.*data: "):
        run_stage(stage(second_home / "target.npz"), tiny_backbone(), out)
    data.unlink()  # now the data has moved
    with caplog.at_level("WARNING", logger="hpt"):
        again = run_stage(stage(second_home / "target.npz"), tiny_backbone(), out)
    assert again.skipped and again.summary["backbone_sha256"] == first.summary["backbone_sha256"]
    assert "no longer exists" in caplog.text
    shutil.copy(second_home / "target.npz", second_home / "other.npz")
    with pytest.raises(HptError, match="other settings.*data: "):  # another name is another data set
        run_stage(stage(second_home / "other.npz"), tiny_backbone(), out)
