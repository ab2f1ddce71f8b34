"""DINO (hpt.methods.dino): the loss against a hand computation, centering and the teacher's temperature warm-up,
the head of the reference, the EMA teacher (not trained, moved by the formula on its schedule), the still last
layer, training, the Method protocol, the config's errors, a stage through `hpt run`, the center across two
processes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpt.errors import HptError
from hpt.methods import METHODS, Method, StepOutput, TrainingSize, build_method
from hpt.methods.dino import (
    DINO,
    DinoConfig,
    dino_loss,
    freeze_steps,
    next_center,
    teacher_temperature,
)
from hpt.methods.momentum import pooled_features, scheduled_momentum
from hpt.models import build_resnet


def tiny_dino(seed: int = 0, freeze: int = 0, **kw: Any) -> DINO:
    torch.manual_seed(seed)
    settings = {"out_dim": 32, "hidden_dim": 64, "bottleneck_dim": 16, **kw}
    return DINO(build_resnet("resnet18", small_stem=True, width=8), DinoConfig(**settings), freeze)


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v - max(row)) for v in row]
    return [e / sum(exps) for e in exps]


def hand_dino(s: list[torch.Tensor], t: list[torch.Tensor], center: list[float], ts: float,
              tt: float) -> tuple[float, float, float]:
    """The reference's DINOLoss over two global views, one image and one term at a time: (loss, the targets' mean
    entropy, the fraction of (image, term) pairs whose student's top prototype is the teacher's)."""
    loss, entropy, agree, terms = 0.0, 0.0, 0, 0
    for teacher_view, student_view in ((0, 1), (1, 0)):
        for n in range(t[0].shape[0]):
            p = _softmax([(float(v) - c) / tt for v, c in zip(t[teacher_view][n], center)])
            q = _softmax([float(v) / ts for v in s[student_view][n]])
            loss += -sum(pk * math.log(qk) for pk, qk in zip(p, q)) / t[0].shape[0] / 2
            entropy += -sum(pk * math.log(pk) for pk in p if pk > 0)
            agree += p.index(max(p)) == q.index(max(q))
            terms += 1
    return loss, entropy / terms, agree / terms


@pytest.mark.parametrize(("bad", "field"), [
    ({"out_dim": 0}, "out_dim"), ({"hidden_dim": 0}, "hidden_dim"), ({"bottleneck_dim": 0}, "bottleneck_dim"),
    ({"nlayers": 0}, "nlayers"), ({"momentum": 1.0}, "momentum"), ({"momentum_schedule": "step"}, "momentum_schedule"),
    ({"teacher_temp": 0.0}, "teacher_temp"), ({"warmup_teacher_temp": -0.01}, "warmup_teacher_temp"),
    ({"student_temp": 0.0}, "student_temp"), ({"center_momentum": 1.0}, "center_momentum"),
    ({"warmup_teacher_temp_steps": -1}, "warmup_teacher_temp_steps"),
    ({"freeze_last_layer_steps": -1}, "freeze_last_layer_steps")])
def test_config_rejects_bad_values_naming_the_setting(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(HptError, match=rf"dino\.{field} must be"):
        DinoConfig(**bad)


def test_dino_loss_matches_the_hand_computation() -> None:
    gen = torch.Generator().manual_seed(2)
    t1, t2, n1, n2 = (torch.randn(3, 4, generator=gen) for _ in range(4))
    s1, s2 = t2 + 0.7 * n1, t1 + 0.7 * n2  # students near the other view's teacher: agreement between 0 and 1
    center = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    for ts, tt in ((0.1, 0.04), (0.5, 0.2)):
        loss, logged = dino_loss(s1, s2, t1, t2, center, ts, tt)
        expected, entropy, agreement = hand_dino([s1, s2], [t1, t2], center[0].tolist(), ts, tt)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert logged["dino_entropy"].item() == pytest.approx(entropy, rel=1e-4, abs=1e-6)
        assert logged["dino_agreement"].item() == pytest.approx(agreement)
    assert 0.0 < hand_dino([s1, s2], [t1, t2], center[0].tolist(), 0.5, 0.2)[2] < 1.0


def test_dino_loss_is_symmetric_and_only_the_student_gets_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    s1, s2, t1, t2 = (torch.randn(4, 5, generator=gen).requires_grad_(True) for _ in range(4))
    center = torch.zeros(1, 5)
    loss, _ = dino_loss(s1, s2, t1, t2, center, 0.1, 0.04)
    swapped, _ = dino_loss(s2, s1, t2, t1, center, 0.1, 0.04)
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)
    one_way, _ = dino_loss(s1, s2, t1, t1, center, 0.1, 0.04)  # s1 is compared with t2 only, s2 with t1
    assert one_way.item() != pytest.approx(loss.item())
    loss.backward()
    assert s1.grad is not None and s2.grad is not None and s1.grad.abs().sum() > 0
    assert t1.grad is None and t2.grad is None  # the teacher's outputs are targets
    # centering: a bias the center removes changes nothing
    bias = torch.randn(1, 5, generator=gen)
    shifted, _ = dino_loss(s1, s2, t1 + bias, t2 + bias, center + bias, 0.1, 0.04)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)


def test_teacher_temperature_warms_up_as_the_reference_linspace() -> None:
    reference = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))
    ours = [teacher_temperature(step, 0.04, 0.07, 30) for step in range(100)]
    assert ours == pytest.approx(reference.tolist())
    assert ours[0] == pytest.approx(0.04) and ours[29] == pytest.approx(0.07) and ours[15] > 0.055
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 1) == pytest.approx(0.04)
    model = tiny_dino(warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_steps=5)
    assert model.teacher_temp == pytest.approx(0.02)
    model.before_step(2, 10)
    assert model.teacher_temp == pytest.approx(0.04)
    model.before_step(7, 10)
    assert model.teacher_temp == pytest.approx(0.06)


def test_momentum_schedule_is_the_reference_cosine_from_0996_to_one() -> None:
    steps = 200  # utils.cosine_scheduler(0.996, 1, epochs, niter_per_ep) over `steps` iterations
    reference = 1 + 0.5 * (0.996 - 1) * (1 + np.cos(np.pi * np.arange(steps) / steps))
    assert [scheduled_momentum(0.996, "cosine", s, steps) for s in range(steps)] == pytest.approx(reference.tolist())
    assert scheduled_momentum(0.996, "cosine", 100, 200) == pytest.approx(0.998)
    assert scheduled_momentum(0.996, "cosine", 200, 200) == pytest.approx(1.0)
    model = tiny_dino()
    model.before_step(100, 200)
    assert model.momentum == pytest.approx(0.998)


def test_the_center_moves_by_its_ema_towards_the_teacher_mean() -> None:
    teacher = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert torch.allclose(next_center(torch.tensor([[0.5, 0.5]]), teacher, 0.9), torch.tensor([[0.65, 0.55]]))
    model = tiny_dino()
    assert torch.equal(model.center, torch.zeros(1, 32))
    gen = torch.Generator().manual_seed(7)
    v1, v2 = torch.randn(4, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():  # the teacher starts as the student, and its BatchNorm normalises by the batch
        expected = model.teacher_head(pooled_features(model.teacher_backbone, torch.cat([v1, v2])))
    model(v1, v2)
    assert torch.allclose(model.center, 0.1 * expected.mean(dim=0, keepdim=True), atol=1e-6)
    before = model.center.clone()
    model(v1, v2)
    assert not torch.allclose(model.center, before)
    assert "center" in model.state_dict()


def test_the_head_is_the_reference_dino_head() -> None:
    model = tiny_dino(hidden_dim=None, out_dim=100, bottleneck_dim=24)  # 64 features: 16 x 64 = 1024 hidden
    linears = [(m.in_features, m.out_features) for m in model.head.mlp if isinstance(m, nn.Linear)]
    assert model.hidden_dim == 1024 and linears == [(64, 1024), (1024, 1024), (1024, 24)]
    assert sum(isinstance(m, nn.GELU) for m in model.head.mlp) == 2
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.head.mlp)
    assert any(isinstance(m, nn.BatchNorm1d) for m in tiny_dino(use_bn_in_head=True).head.mlp)
    last = model.head.last_layer
    assert last.weight_v.shape == (100, 24) and not last.weight_g.requires_grad  # norm_last_layer: norms fixed at 1
    assert torch.allclose(last.weight().norm(dim=1), torch.ones(100), atol=1e-5)
    x = torch.randn(5, 64)
    z = model.head.bottleneck(x)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)  # the l2-normalised bottleneck
    with torch.no_grad():
        last.weight_v.mul_(3.0)  # weight norm: the scale of v does not matter, only g
    assert torch.allclose(model.head(x), z @ F.normalize(last.weight_v, dim=1).T, atol=1e-5)
    assert tiny_dino(norm_last_layer=False).head.last_layer.weight_g.requires_grad
    wide = DINO(build_resnet("resnet18", small_stem=True, width=16), DinoConfig())  # 128 features: the reference's
    assert wide.hidden_dim == 2048 and wide.head.last_layer.weight_v.shape == (4096, 256)


def test_the_teacher_is_not_trained_and_moves_by_the_formula() -> None:
    model = tiny_dino()
    trainable = {id(p) for p in model.trainable_parameters()}
    teacher = model.teacher_parameters()
    assert teacher and trainable.isdisjoint(id(p) for p in teacher)
    assert trainable | {id(p) for p in teacher} == {id(p) for p in model.parameters()}
    assert not any(p.requires_grad for p in teacher)
    for student, copy in zip(model.student_parameters(), teacher, strict=True):
        assert torch.equal(student, copy) and student is not copy
    with torch.no_grad():
        for param in model.student_parameters():
            param.add_(torch.randn_like(param))
    before = [p.clone() for p in teacher]
    model.before_step(30, 120)
    m = model.momentum
    assert m == pytest.approx(1 - 0.002 * (1 + math.cos(math.pi / 4)))
    x = torch.randn(4, 3, 16, 16)
    out = model(x, x + 0.01 * torch.randn_like(x))
    for student, copy, old in zip(model.student_parameters(), teacher, before, strict=True):
        assert torch.allclose(copy, m * old + (1 - m) * student, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in teacher)
    assert model.backbone.conv1.weight.grad is not None and model.head.last_layer.weight_v.grad is not None


def test_the_last_layer_stays_still_in_its_first_steps() -> None:
    assert freeze_steps(DinoConfig(), TrainingSize(steps=1000, global_batch=64, num_images=1000)) == 16  # 1 epoch
    assert freeze_steps(DinoConfig(), TrainingSize(steps=50, global_batch=64, num_images=1000)) == 5  # <= steps/10
    assert freeze_steps(DinoConfig(freeze_last_layer_steps=0), TrainingSize(1000, 64, 1000)) == 0
    model = tiny_dino(freeze=2)
    last = model.head.last_layer
    optimizer = torch.optim.SGD([p for p in model.trainable_parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9, weight_decay=1e-2)
    weight = last.weight().detach().clone()
    x = torch.randn(8, 3, 16, 16)
    for step in range(3):
        model.before_step(step, 10)
        out = model(x, x + 0.05 * torch.randn_like(x))
        optimizer.zero_grad()
        out.loss.backward()
        assert last.weight_v.grad is not None and model.head.mlp[0].weight.grad is not None
        assert model.head.mlp[0].weight.grad.abs().sum() > 0  # the rest of the student trains
        assert (last.weight_v.grad.abs().sum() == 0) == (step < 2)  # zero while still, not absent (DDP)
        optimizer.step()
        if step < 2:  # weight decay only rescales v: the normalised weight stays
            assert torch.allclose(last.weight(), weight, atol=1e-6)
    assert not torch.allclose(last.weight(), weight, atol=1e-4)


def test_steps_on_the_student_decrease_the_loss_to_a_still_teacher() -> None:
    """The student learns the teacher's targets: with the teacher and the center held still (momentum 1) on a
    fixed pair of views, its distance to them (the loss less the targets' entropy) falls. (With both moving on
    random data the loss itself need not fall: centering drives a teacher that sees no structure towards uniform
    targets. The small lr: the reference's head, whose bottleneck is normalised from a small output at its
    initialisation, takes large gradients in its first steps.)"""
    model = tiny_dino(out_dim=64, hidden_dim=None)
    model.config.center_momentum = 1.0
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=2e-4, momentum=0.9)
    gaps = []
    for step in range(12):
        model.before_step(step, 12)
        model.momentum = 1.0
        out = model(x, x.flip(3))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert math.isfinite(out.loss.item())
        gaps.append(out.loss.item() - out.logged["dino_entropy"].item())
    assert torch.equal(model.center, torch.zeros_like(model.center))
    assert gaps[-1] < gaps[0] and sum(gaps[-3:]) < 0.75 * sum(gaps[:3])


def test_it_is_a_registered_method_of_the_protocol(tmp_path: Path) -> None:
    assert METHODS["dino"].section == "dino"
    config = type("Settings", (), {"dino": DinoConfig(out_dim=32, hidden_dim=64, bottleneck_dim=16)})()
    model = build_method("dino", build_resnet("resnet18", small_stem=True, width=8), config,
                         TrainingSize(steps=4, global_batch=8, num_images=32))
    assert isinstance(model, DINO) and isinstance(model, Method)
    assert model.recorded() == {"queue_size": None} and "DINO" in model.description
    assert model.setup_batchnorm(True, 8, 1) == 1 and model.freeze_last_layer_steps == 0
    x, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    model.before_step(1, 4)
    out = model(x, y)
    assert isinstance(out, StepOutput) and out.loss.requires_grad
    assert out.logged.keys() == {"dino_entropy", "dino_agreement"}
    assert out.feature_inputs is not None and out.feature_inputs.shape[0] == 8  # both views: one batch
    assert out.features is not None and out.features.shape == (8, 64) and out.embeddings.shape == (4, 16)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = tiny_dino(seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert torch.equal(fresh.center, model.center)
    fresh.before_step(1, 4)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x, y).loss, fresh(x, y).loss)


def test_its_settings_are_a_stage_section_that_leaves_earlier_run_ids_alone() -> None:
    from hpt.config import from_dict
    from hpt.pretrain.config import StageConfig

    plain = from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4})
    assert plain.dino == DinoConfig() and "dino" not in plain.semantic()  # defaults: the same id as before
    changed = from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4, "method": "dino",
                                      "dino": {"out_dim": 1024, "freeze_last_layer_steps": 0}})
    assert changed.semantic()["dino"] == {"out_dim": 1024, "freeze_last_layer_steps": 0}
    with pytest.raises(HptError, match="dino.student_temp"):
        from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4, "dino": {"student_temp": 0}})


def test_a_stage_trains_with_dino_and_the_base_anchor(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                                      tmp_path: Path) -> None:
    # imported here, not at the top: the spawned workers of the last test import this module
    from ..helpers import call, write_hierarchy

    stage = {"name": "t", "data": f"npz:{tiny_npz}", "steps": 3, "method": "dino",
             "dino": {"out_dim": 64, "warmup_teacher_temp_steps": 2, "teacher_temp": 0.06},
             "anchor": {"weight": 1.0}}
    config = write_hierarchy(tmp_path / "h.yaml", [stage])
    code, _, err = call(capsys, "run", str(config), "--out", str(tmp_path / "o"))
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "t" / "summary.json").read_text())
    assert summary["steps_done"] == 3 and summary["queue_size"] is None and "DINO" in summary["queue_reason"]
    with open(tmp_path / "o" / "t" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {"dino_entropy", "dino_agreement"} <= rows[0].keys()
    anchor = [key for key in rows[0] if "anchor" in key]
    assert anchor and float(rows[0][anchor[0]]) == pytest.approx(0.0, abs=1e-6)  # the student is the Base at first
    assert all(0.0 <= float(row["dino_entropy"]) <= math.log(64) + 1e-4 for row in rows)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_dino()
        teacher = torch.load(Path(out_dir) / "teacher.pt")
        n = teacher.shape[0] // world
        model.update_center(teacher[rank * n : (rank + 1) * n])
        torch.save(model.center, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_center_is_the_mean_over_every_process(tmp_path: Path) -> None:
    teacher = torch.randn(6, 32, generator=torch.Generator().manual_seed(8))
    torch.save(teacher, tmp_path / "teacher.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    expected = next_center(torch.zeros(1, 32), teacher, 0.9)
    for rank in range(2):
        assert torch.allclose(torch.load(tmp_path / f"rank{rank}.pt"), expected, atol=1e-6)
    assert not torch.allclose(next_center(torch.zeros(1, 32), teacher[:3], 0.9), expected, atol=1e-4)
