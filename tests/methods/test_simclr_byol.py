from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpt.errors import HptError
from hpt.methods.base import Method, StepOutput
from hpt.methods.byol import BYOL, BYOLConfig, cosine_momentum
from hpt.methods.simclr import SimCLR, SimCLRConfig, nt_xent
from hpt.models import build_resnet
from hpt.models.resnet import SplitBatchNorm2d


def tiny_simclr(seed: int = 0, **kw: object) -> SimCLR:
    torch.manual_seed(seed)
    backbone = build_resnet("resnet18", small_stem=True, width=8)
    return SimCLR(backbone, SimCLRConfig(dim=16, **kw))  # type: ignore[arg-type]


def tiny_byol(seed: int = 0, **kw: object) -> BYOL:
    torch.manual_seed(seed)
    backbone = build_resnet("resnet18", small_stem=True, width=8)
    return BYOL(backbone, BYOLConfig(dim=16, **kw))  # type: ignore[arg-type]


def hand_nt_xent(z: torch.Tensor, n: int, t: float) -> tuple[float, float]:
    """The paper's formula, one anchor at a time: rows 0..n-1 are first views, n..2n-1 their second views."""
    total, hits = 0.0, 0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = {k: float(z[i] @ z[k]) for k in range(2 * n) if k != i}
        total += -math.log(math.exp(sims[pos] / t) / sum(math.exp(s / t) for s in sims.values()))
        hits += max(sims, key=lambda k: sims[k]) == pos
    return total / (2 * n), hits / (2 * n)


def test_configs_reject_bad_values() -> None:
    for bad in ({"temperature": 0.0}, {"dim": 0}, {"hidden_dim": 0}):
        with pytest.raises(HptError, match="simclr"):
            SimCLRConfig(**bad)  # type: ignore[arg-type]
    for bad in ({"momentum": 1.0}, {"momentum": -0.1}, {"dim": 0}, {"hidden_dim": -1},
                {"momentum_schedule": "linear"}):
        with pytest.raises(HptError, match="byol"):
            BYOLConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(HptError):
        tiny_byol().set_momentum(1.5)


def test_parameter_groups() -> None:
    simclr = tiny_simclr()
    assert simclr.projector[0].in_features == simclr.backbone.feature_dim == 64
    assert simclr.projector[0].out_features == 64 and simclr.projector[-1].out_features == 16
    ids = {id(p) for p in simclr.trainable_parameters()}
    assert ids == {id(p) for p in simclr.parameters()}  # nothing but backbone + projector
    assert {id(p) for p in simclr.backbone.parameters()} <= ids
    assert isinstance(simclr, Method) and isinstance(tiny_byol(), Method)

    byol = tiny_byol()
    assert byol.projector[0].out_features == 128 and byol.predictor[0].in_features == 16  # hidden = 2 x 64
    query = {id(p) for p in byol.trainable_parameters()}
    target = byol.target_parameters()
    assert target and query.isdisjoint(id(p) for p in target)
    assert query | {id(p) for p in target} == {id(p) for p in byol.parameters()}
    assert {id(p) for p in byol.predictor.parameters()} <= query
    assert all(p.requires_grad for p in byol.trainable_parameters())
    assert not any(p.requires_grad for p in target)
    assert byol.backbone is not byol.target_backbone
    for online, tgt in zip(byol.online_parameters(), target, strict=True):  # the target starts as a copy
        assert torch.equal(online, tgt)

    x = torch.randn(8, 3, 16, 16)
    out = byol(x, x + 0.01 * torch.randn_like(x))
    assert isinstance(out, StepOutput) and out.loss.dim() == 0
    out.loss.backward()
    assert byol.backbone.conv1.weight.grad is not None and byol.predictor[0].weight.grad is not None
    assert byol.target_backbone.conv1.weight.grad is None and byol.target_projector[0].weight.grad is None


def test_nt_xent_matches_the_formula_by_hand() -> None:
    gen = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(4, 5, generator=gen), dim=1)  # 2 images -> 4 embeddings
    for t in (0.2, 0.5):
        loss, accuracy = nt_xent(z[:2], z[2:], t)
        expected_loss, expected_acc = hand_nt_xent(z, 2, t)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
        assert accuracy.item() == pytest.approx(expected_acc)
    # views equal to each other: every positive is the most similar candidate
    w = F.normalize(torch.randn(3, 5, generator=gen), dim=1)
    assert nt_xent(w, w, 0.2)[1].item() == 1.0


def test_simclr_forward_is_nt_xent_of_its_embeddings() -> None:
    model = tiny_simclr(temperature=0.3).eval()
    gen = torch.Generator().manual_seed(4)
    v1, v2 = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        z = model.embed(torch.cat([v1, v2]))
        out = model(v1, v2)
    expected_loss, expected_acc = hand_nt_xent(z, 2, 0.3)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert out.logged["simclr_acc"].item() == pytest.approx(expected_acc)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def _losses(model: SimCLR | BYOL, lr: float, steps: int = 15) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 16, 16, generator=gen)
    optim = torch.optim.SGD(model.trainable_parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        out = model(x + 0.05 * torch.randn(x.shape, generator=gen), x + 0.05 * torch.randn(x.shape, generator=gen))
        assert torch.isfinite(out.loss)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(out.loss.item())
    return losses


def test_simclr_loss_decreases_on_a_fixed_batch() -> None:
    losses = _losses(tiny_simclr(), lr=0.05)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def test_byol_loss_decreases_on_a_fixed_batch() -> None:
    model = tiny_byol()
    losses = _losses(model, lr=0.05)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    # forward took EMA steps: the target moved, but is not the online network
    assert not torch.equal(model.target_backbone.conv1.weight, model.backbone.conv1.weight)


def test_byol_momentum_update_moves_the_target_by_one_minus_m() -> None:
    model = tiny_byol()
    model.set_momentum(0.9)
    with torch.no_grad():
        model.backbone.conv1.weight.add_(1.0)
        model.projector[3].bias.sub_(2.0)
    before = [p.clone() for p in model.target_parameters()]
    model.momentum_update()
    for online, tgt, old in zip(model.online_parameters(), model.target_parameters(), before, strict=True):
        assert torch.allclose(tgt, 0.9 * old + 0.1 * online, atol=1e-6)
    assert not torch.equal(model.target_backbone.conv1.weight, before[0])
    assert torch.allclose(model.target_projector[3].bias, before[-1] - 0.2, atol=1e-6)


def test_byol_momentum_schedule() -> None:
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    constant, cosine = tiny_byol(momentum=0.9), tiny_byol(momentum=0.9, momentum_schedule="cosine")
    assert constant.schedule_momentum(50, 100) == pytest.approx(0.9) and constant.momentum == pytest.approx(0.9)
    assert cosine.schedule_momentum(50, 100) == pytest.approx(0.95) and cosine.momentum == pytest.approx(0.95)


@pytest.mark.parametrize("build", [tiny_simclr, tiny_byol])
def test_set_bn_splits_reaches_every_split_batchnorm(build: object) -> None:
    model = build()  # type: ignore[operator]
    norms = [m for m in model.modules() if isinstance(m, SplitBatchNorm2d)]
    in_backbone = [m for m in model.backbone.modules() if isinstance(m, SplitBatchNorm2d)]
    assert len(in_backbone) == 20 and len(norms) == (40 if isinstance(model, BYOL) else 20)
    model.set_bn_splits(4)
    assert all(m.num_splits == 4 for m in norms)
    model.set_bn_splits(1)
    assert all(m.num_splits == 1 for m in norms)


@pytest.mark.parametrize("build", [tiny_simclr, tiny_byol])
def test_state_dict_round_trip(build: object, tmp_path: Path) -> None:
    model = build()  # type: ignore[operator]
    _losses(model, lr=0.05, steps=2)  # move away from the initialisation (weights, BN statistics, target)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = build(seed=1)  # type: ignore[operator]
    x, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    model.eval(), fresh.eval()
    with torch.no_grad():  # BYOL: both forwards start from the saved state and take the same EMA step
        reference = model(x, y)
        assert not torch.allclose(fresh(x, y).loss, reference.loss)
        fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
        loaded = fresh(x, y)
        assert torch.equal(model.backbone.forward_features(x), fresh.backbone.forward_features(x))
    assert torch.equal(loaded.loss, reference.loss) and loaded.logged.keys() == reference.logged.keys()
    assert all(torch.equal(loaded.logged[k], reference.logged[k]) for k in loaded.logged)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a1, a2 = torch.load(Path(out_dir) / "inputs.pt")
        n = a1.shape[0] // world
        a1 = a1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        a2 = a2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss, accuracy = nt_xent(F.normalize(a1, dim=1), F.normalize(a2, dim=1), 0.2)
        loss.backward()
        torch.save((loss.detach(), accuracy, a1.grad, a2.grad), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nt_xent_across_two_processes_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """Each rank's anchors meet the other rank's views as negatives, and the gathered views carry gradient:
    the mean of the ranks' losses and the DDP-averaged gradients equal the single-process ones."""
    gen = torch.Generator().manual_seed(5)
    a1, a2 = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    a2 = a2 + 2 * a1  # positives more similar than negatives, but not always (accuracy strictly between 0 and 1)
    torch.save((a1, a2), tmp_path / "inputs.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r1, r2 = a1.clone().requires_grad_(True), a2.clone().requires_grad_(True)
    loss, accuracy = nt_xent(F.normalize(r1, dim=1), F.normalize(r2, dim=1), 0.2)
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.allclose((ranks[0][0] + ranks[1][0]) / 2, loss.detach(), atol=1e-6)
    assert torch.allclose((ranks[0][1] + ranks[1][1]) / 2, accuracy)
    assert r1.grad is not None and r2.grad is not None
    assert torch.allclose(torch.cat([ranks[0][2], ranks[1][2]]) / 2, r1.grad, atol=1e-6)
    assert torch.allclose(torch.cat([ranks[0][3], ranks[1][3]]) / 2, r2.grad, atol=1e-6)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_stage_trains_with_simclr_and_byol_and_resumes_from_its_state(method: str, tiny_npz, tmp_path) -> None:  # noqa: ANN001
    from hpt.config import from_dict
    from hpt.models import build_resnet
    from hpt.pretrain.config import StageConfig
    from hpt.pretrain.stage import run_stage

    from ..helpers import TINY_STAGE

    settings = {"name": "s", "data": f"npz:{tiny_npz}", "steps": 3, **TINY_STAGE, "method": method}
    result = run_stage(from_dict(StageConfig, settings), build_resnet("resnet18", small_stem=True, width=8), tmp_path)
    assert result.summary["steps_done"] == 3 and result.summary["queue_size"] is None
    header = (tmp_path / "s" / "metrics.csv").read_text().splitlines()[0]
    assert ("simclr_acc" if method == "simclr" else "byol_cosine") in header
