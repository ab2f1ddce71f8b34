"""MoCo v3 (hpt.methods.mocov3): the loss against a hand computation, the heads of the reference, the momentum
encoder (not trained, moved by the EMA formula on its schedule), training on random data, the Method protocol,
the config's errors, a stage through `hpt run`, and the loss across two processes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hpt.errors import HptError
from hpt.methods import METHODS, Method, StepOutput, TrainingSize, build_method
from hpt.methods.mocov3 import MocoV3, MocoV3Config, contrastive_loss, mocov3_loss
from hpt.methods.momentum import scheduled_momentum
from hpt.models import build_resnet


def tiny_mocov3(seed: int = 0, **kw: Any) -> MocoV3:
    torch.manual_seed(seed)
    settings = {"dim": 16, "hidden_dim": 64, **kw}
    return MocoV3(build_resnet("resnet18", small_stem=True, width=8), MocoV3Config(**settings))


def hand_contrastive(q: torch.Tensor, k: torch.Tensor, t: float) -> tuple[float, float]:
    """The reference's contrastive_loss one query at a time: 2T * mean_i -log softmax_j(<q_i, k_j> / T)[i]."""
    qn = [[float(v) / math.sqrt(sum(float(u) ** 2 for u in row)) for v in row] for row in q]
    kn = [[float(v) / math.sqrt(sum(float(u) ** 2 for u in row)) for v in row] for row in k]
    total, hits = 0.0, 0
    for i, qi in enumerate(qn):
        logits = [sum(a * b for a, b in zip(qi, kj)) / t for kj in kn]
        total += -math.log(math.exp(logits[i]) / sum(math.exp(v) for v in logits))
        hits += max(range(len(logits)), key=lambda j: logits[j]) == i
    return 2 * t * total / len(qn), hits / len(qn)


@pytest.mark.parametrize(("bad", "field"), [
    ({"dim": 0}, "dim"), ({"hidden_dim": 0}, "hidden_dim"), ({"pred_hidden_dim": -1}, "pred_hidden_dim"),
    ({"proj_layers": 0}, "proj_layers"), ({"temperature": 0.0}, "temperature"), ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"), ({"momentum_schedule": "linear"}, "momentum_schedule")])
def test_config_rejects_bad_values_naming_the_setting(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(HptError, match=rf"mocov3\.{field} must be"):
        MocoV3Config(**bad)


def test_contrastive_loss_matches_the_hand_computation() -> None:
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    k = k + 0.5 * q  # positives mostly, but not always, the best match: accuracy strictly between 0 and 1
    for t in (0.2, 1.0):
        loss, accuracy = contrastive_loss(q, k, t)
        expected_loss, expected_acc = hand_contrastive(q, k, t)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
        assert accuracy.item() == pytest.approx(expected_acc)
    assert 0.0 < hand_contrastive(q, k, 0.2)[1] < 1.0
    # the keys' scale does not matter (both sides are normalised), and equal views are always found
    assert contrastive_loss(q, 3 * k, 0.2)[0].item() == pytest.approx(contrastive_loss(q, k, 0.2)[0].item())
    assert contrastive_loss(q, q, 0.2)[1].item() == 1.0


def test_the_loss_is_symmetric_and_stops_the_gradient_at_the_keys() -> None:
    gen = torch.Generator().manual_seed(4)
    q1, q2, k1, k2 = (torch.randn(5, 6, generator=gen).requires_grad_(True) for _ in range(4))
    loss, accuracy = mocov3_loss(q1, q2, k1, k2, 0.2)
    first, second = contrastive_loss(q1, k2, 0.2), contrastive_loss(q2, k1, 0.2)
    assert loss.item() == pytest.approx(first[0].item() + second[0].item(), rel=1e-6)
    assert accuracy.item() == pytest.approx((first[1].item() + second[1].item()) / 2)
    swapped, _ = mocov3_loss(q2, q1, k2, k1, 0.2)  # the views' roles exchanged: the same loss
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert q1.grad is not None and q2.grad is not None and q1.grad.abs().sum() > 0
    assert k1.grad is None and k2.grad is None  # stop-grad: keys are targets only


def test_momentum_schedule_rises_from_m_to_one_on_a_cosine() -> None:
    reference = [1.0 - 0.5 * (1.0 + math.cos(math.pi * e / 100)) * (1.0 - 0.99) for e in (0, 25, 50, 100)]
    assert [scheduled_momentum(0.99, "cosine", s, 100) for s in (0, 25, 50, 100)] == pytest.approx(reference)
    assert scheduled_momentum(0.99, "cosine", 0, 100) == pytest.approx(0.99)
    assert scheduled_momentum(0.99, "cosine", 50, 100) == pytest.approx(0.995)
    assert scheduled_momentum(0.99, "cosine", 100, 100) == pytest.approx(1.0)
    assert scheduled_momentum(0.99, "constant", 50, 100) == pytest.approx(0.99)
    model = tiny_mocov3()
    model.before_step(50, 100)
    assert model.momentum == pytest.approx(0.995)
    constant = tiny_mocov3(momentum_schedule="constant")
    constant.before_step(50, 100)
    assert constant.momentum == pytest.approx(0.99)


def _linears(mlp: nn.Sequential) -> list[tuple[int, int, bool]]:
    return [(m.in_features, m.out_features, m.bias is not None) for m in mlp if isinstance(m, nn.Linear)]


def test_heads_follow_the_reference_build_mlp() -> None:
    model = tiny_mocov3(hidden_dim=None)  # ResNet-18 of width 8: 64 features, heads 16 x 64 = 1024 wide
    assert model.backbone.feature_dim == 64 and model.hidden_dim == model.pred_hidden_dim == 1024
    assert _linears(model.projector) == [(64, 1024, False), (1024, 1024, False), (1024, 16, False)]
    assert _linears(model.predictor) == [(16, 1024, False), (1024, 16, False)]
    for head in (model.projector, model.predictor):  # BatchNorm + ReLU after hidden layers, BN without affine last
        norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
        assert all(n.affine for n in norms[:-1]) and not norms[-1].affine
        assert isinstance(head[-1], nn.BatchNorm1d) and sum(isinstance(m, nn.ReLU) for m in head) == len(norms) - 1
    resnet_recipe = tiny_mocov3(proj_layers=2, pred_last_bn=False, hidden_dim=32, pred_hidden_dim=24)
    assert _linears(resnet_recipe.projector) == [(64, 32, False), (32, 16, False)]
    assert _linears(resnet_recipe.predictor) == [(16, 24, False), (24, 16, False)]
    assert isinstance(resnet_recipe.predictor[-1], nn.Linear)
    wide = MocoV3(build_resnet("resnet18", small_stem=True, width=32), MocoV3Config())  # 256 features and more:
    assert wide.hidden_dim == 4096 and _linears(wide.projector)[-1] == (4096, 256, False)  # the reference's


def test_the_momentum_encoder_is_not_trained_and_moves_by_the_formula() -> None:
    model = tiny_mocov3()
    trainable = {id(p) for p in model.trainable_parameters()}
    momentum = model.momentum_parameters()
    assert momentum and trainable.isdisjoint(id(p) for p in momentum)
    assert trainable | {id(p) for p in momentum} == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.predictor.parameters()} <= trainable
    assert not any(p.requires_grad for p in momentum) and all(p.requires_grad for p in model.trainable_parameters())
    for online, copy in zip(model.online_parameters(), momentum, strict=True):  # it starts as a copy
        assert torch.equal(online, copy) and online is not copy

    with torch.no_grad():  # the base encoder moves away (as an optimizer step would)
        for param in model.online_parameters():
            param.add_(torch.randn_like(param))
    before = [p.clone() for p in momentum]
    model.before_step(25, 100)
    m = model.momentum
    assert m == pytest.approx(1.0 - 0.005 * (1 + math.cos(math.pi / 4)))
    x = torch.randn(8, 3, 16, 16)
    out = model(x, x + 0.01 * torch.randn_like(x))  # the step's EMA comes first, at this step's momentum
    for online, copy, old in zip(model.online_parameters(), momentum, before, strict=True):
        assert torch.allclose(copy, m * old + (1 - m) * online, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in momentum)
    assert model.backbone.conv1.weight.grad is not None and model.predictor[0].weight.grad is not None


def test_forward_is_the_loss_of_its_queries_and_keys() -> None:
    model = tiny_mocov3(temperature=0.3).eval()  # eval: BatchNorm by running statistics, the same in each call
    gen = torch.Generator().manual_seed(6)
    v1, v2 = torch.randn(4, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        q1 = model.predictor(model.projector(model.backbone.forward_features(v1)))
        q2 = model.predictor(model.projector(model.backbone.forward_features(v2)))
        k1, k2 = model.keys(v1), model.keys(v2)  # the momentum encoder equals the base encoder at the start
        out = model(v1, v2)
    expected, accuracy = mocov3_loss(q1, q2, k1, k2, 0.3)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logged["mocov3_acc"].item() == pytest.approx(accuracy.item())
    assert out.feature_inputs is v1 and out.features is not None
    assert torch.allclose(out.features, model.backbone.forward_features(v1))  # what the Base anchor compares
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(4), atol=1e-5)


def test_a_few_steps_on_random_data_decrease_the_loss() -> None:
    model = tiny_mocov3()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 16, 16, generator=gen)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    losses, accuracies = [], []
    for step in range(12):
        model.before_step(step, 12)
        out = model(x + 0.05 * torch.randn(x.shape, generator=gen), x + 0.05 * torch.randn(x.shape, generator=gen))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        accuracies.append(out.logged["mocov3_acc"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    assert sum(accuracies[-3:]) > sum(accuracies[:3])


def test_it_is_a_registered_method_of_the_protocol(tmp_path: Path) -> None:
    assert METHODS["mocov3"].section == "mocov3"
    config = type("Settings", (), {"mocov3": MocoV3Config(dim=16, hidden_dim=64)})()
    model = build_method("mocov3", build_resnet("resnet18", small_stem=True, width=8), config,
                         TrainingSize(steps=4, global_batch=8, num_images=32))
    assert isinstance(model, MocoV3) and isinstance(model, Method)
    assert model.recorded() == {"queue_size": None} and "MoCo v3" in model.description
    assert model.setup_batchnorm(True, 8, 1) == 1
    x, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    model.before_step(1, 4)
    out = model(x, y)
    assert isinstance(out, StepOutput) and out.loss.requires_grad and out.logged.keys() == {"mocov3_acc"}
    torch.save(model.state_dict(), tmp_path / "state.pt")  # the resume state: a new model of it gives the same
    fresh = tiny_mocov3(seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    fresh.before_step(1, 4)  # the same momentum for the EMA step of the next forward
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x, y).loss, fresh(x, y).loss)


def test_its_settings_are_a_stage_section_that_leaves_earlier_run_ids_alone() -> None:
    from hpt.config import from_dict
    from hpt.pretrain.config import StageConfig

    plain = from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4})
    assert plain.mocov3 == MocoV3Config() and "mocov3" not in plain.semantic()  # defaults: the same id as before
    changed = from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4, "method": "mocov3",
                                      "mocov3": {"temperature": 0.5}})
    assert changed.mocov3.temperature == 0.5 and changed.semantic()["mocov3"] == {"temperature": 0.5}
    with pytest.raises(HptError, match="mocov3.temperature"):
        from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4, "mocov3": {"temperature": -1}})


def test_a_stage_trains_with_mocov3_and_the_base_anchor(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                                        tmp_path: Path) -> None:
    # imported here, not at the top: the spawned workers of the last test import this module
    from ..helpers import call, write_hierarchy

    stage = {"name": "t", "data": f"npz:{tiny_npz}", "steps": 3, "method": "mocov3",
             "mocov3": {"dim": 16, "proj_layers": 2}, "anchor": {"weight": 1.0}}
    config = write_hierarchy(tmp_path / "h.yaml", [stage])
    code, _, err = call(capsys, "run", str(config), "--out", str(tmp_path / "o"))
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "t" / "summary.json").read_text())
    assert summary["steps_done"] == 3 and summary["queue_size"] is None and "MoCo v3" in summary["queue_reason"]
    with open(tmp_path / "o" / "t" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and "mocov3_acc" in rows[0]
    anchor = [key for key in rows[0] if "anchor" in key]
    assert anchor and float(rows[0][anchor[0]]) == pytest.approx(0.0, abs=1e-6)  # the student is the Base at first
    assert all(math.isfinite(float(row["loss"])) for row in rows)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q, k = torch.load(Path(out_dir) / "inputs.pt")
        n = q.shape[0] // world
        mine = q[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss, accuracy = contrastive_loss(mine, k[rank * n : (rank + 1) * n], 0.2)
        loss.backward()
        torch.save((loss.detach(), accuracy, mine.grad), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_keys_are_gathered_across_processes(tmp_path: Path) -> None:
    """Each rank's queries meet every rank's keys, their positives at rank * N: the mean of the ranks' losses
    is the loss of one process on the global batch, and DDP's mean gradient its gradient."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(6, 8, generator=gen)
    k = torch.randn(6, 8, generator=gen) + 2 * q
    torch.save((q, k), tmp_path / "inputs.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    whole = q.clone().requires_grad_(True)
    loss, accuracy = contrastive_loss(whole, k, 0.2)
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.allclose((ranks[0][0] + ranks[1][0]) / 2, loss.detach(), atol=1e-6)
    assert torch.allclose((ranks[0][1] + ranks[1][1]) / 2, accuracy)
    assert whole.grad is not None
    assert torch.allclose(torch.cat([ranks[0][2], ranks[1][2]]) / 2, whole.grad, atol=1e-6)
    # a rank that ignored the other's keys would get another loss
    alone = contrastive_loss(q[:3], k[:3], 0.2)[0]
    assert not torch.allclose(alone, ranks[0][0], atol=1e-4)
