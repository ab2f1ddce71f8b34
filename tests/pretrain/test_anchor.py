"""Base-anchored continuation: the distillation term to the frozen start of a stage."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from hpt.data import open_any
from hpt.errors import HptError
from hpt.methods import MocoV2, MocoV2Config
from hpt.models import build_resnet
from hpt.models.resnet import set_bn_splits
from hpt.pretrain.anchor import AnchorConfig, BaseAnchor, FrozenBase, anchor_loss
from hpt.pretrain.stage import run_stage

from .test_stage import stage, tiny_backbone


def test_anchor_loss_is_zero_for_equal_directions_and_grows_with_the_angle() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    assert anchor_loss(x, x).item() == 0.0
    assert anchor_loss(3.0 * x, x).item() == pytest.approx(0.0, abs=1e-6)  # the length does not count
    assert anchor_loss(-x, x).item() == pytest.approx(4.0)  # opposite directions: the maximum
    orthogonal = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert anchor_loss(*orthogonal).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="differ in shape"):
        anchor_loss(x, x[:, :4])


def test_anchor_is_zero_while_the_student_equals_the_base_in_a_training_step() -> None:
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", small_stem=True, width=8)
    model = MocoV2(backbone, MocoV2Config(dim=16), queue_size=32)
    model.set_bn_splits(2)
    anchor = BaseAnchor(AnchorConfig(weight=1.0), model.backbone)
    model.train()
    images = torch.randn(16, 3, 16, 16)
    out = model(images, images.flip(-1))
    term = anchor(images, out.features)
    assert term.item() == 0.0  # same weights, same BatchNorm behaviour (batch statistics, same splits)
    (out.loss + term).backward()
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    out = model(images, images.flip(-1))
    assert anchor(images, out.features).item() > 1e-4  # the weights moved away from the Base


def test_the_frozen_base_never_changes_and_takes_no_gradient() -> None:
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", small_stem=True, width=8)
    frozen = FrozenBase(backbone)
    before = copy.deepcopy(frozen.state_dict())
    frozen.eval()  # asked for eval mode, it stays in training mode (batch statistics)
    assert all(m.training for m in frozen.modules())
    feats = frozen(torch.randn(8, 3, 16, 16) * 3 + 1)
    assert not feats.requires_grad and all(not p.requires_grad for p in frozen.parameters())
    after = frozen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked"))


def test_anchored_stage_logs_the_term_and_stays_closer_to_its_start(tiny_npz: Path, tmp_path: Path) -> None:
    base = FrozenBase(tiny_backbone())
    images = open_any(f"npz:{tiny_npz}").get_batch(np.arange(16))[0].float().div(255.0).sub(0.4).div(0.25)

    def drift(model: torch.nn.Module) -> float:  # the anchor term of the finished backbone on a fixed batch
        set_bn_splits(model, 1)  # as the Base's copy here
        model.train()
        with torch.no_grad():
            return anchor_loss(model.forward_features(images), base(images)).item()

    free, anchored = tiny_backbone(), tiny_backbone()
    run_stage(stage(tiny_npz, lr=0.5, steps=16), free, tmp_path / "free")
    result = run_stage(stage(tiny_npz, lr=0.5, steps=16, anchor={"weight": 20.0}), anchored, tmp_path / "anchored")
    with open(tmp_path / "anchored" / "s" / "metrics.csv") as handle:
        terms = [float(row["anchor"]) for row in csv.DictReader(handle)]
    assert terms[0] == 0.0 and max(terms) > 0  # step 1's term was taken before the first update
    assert result.summary["anchor_weight"] == 20.0 and result.summary["config"]["anchor"] == {"weight": 20.0}
    assert terms[-1] < max(terms)  # pulled back towards the Base
    assert drift(anchored) < 0.75 * drift(free)


def test_anchor_settings_are_validated_and_leave_old_stage_ids_alone(tiny_npz: Path) -> None:
    assert "anchor" not in stage(tiny_npz).semantic()
    with pytest.raises(HptError, match="anchor.weight must be a number >= 0"):
        stage(tiny_npz, anchor={"weight": -1.0})
    with pytest.raises(HptError, match="anchor and guard need a training stage"):
        stage(tiny_npz, train="bn-stats", anchor={"weight": 1.0})


def test_a_changed_anchor_weight_is_not_reused(tiny_npz: Path, tmp_path: Path) -> None:
    run_stage(stage(tiny_npz), tiny_backbone(), tmp_path)
    with pytest.raises(HptError, match=r"anchor.weight: 0.0 -> 1.0"):
        run_stage(stage(tiny_npz, anchor={"weight": 1.0}), tiny_backbone(), tmp_path)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_the_anchor_works_with_every_method(tiny_npz: Path, tmp_path: Path, method: str) -> None:
    run_stage(stage(tiny_npz, method=method, steps=3, anchor={"weight": 1.0}), tiny_backbone(), tmp_path)
    with open(tmp_path / "s" / "metrics.csv") as handle:
        terms = [float(row["anchor"]) for row in csv.DictReader(handle)]
    assert len(terms) == 3 and terms[0] == pytest.approx(0.0, abs=1e-6) and max(terms) > 0
