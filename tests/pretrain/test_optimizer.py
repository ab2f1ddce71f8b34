"""The stage's optimizer: SGD (the paper's) or AdamW (what ViTs and ConvNeXts are trained with)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpt.errors import HptError
from hpt.models import build_vit
from hpt.pretrain.stage import run_stage
from hpt.pretrain.state import load_state

from .test_stage import stage, tiny_backbone


def _optimizer_state(stage_dir: Path) -> dict:
    state = load_state(stage_dir / "state")
    assert state is not None
    return state["optimizer"]["state"]


@pytest.mark.parametrize(("optimizer", "slot"), [("sgd", "momentum_buffer"), ("adamw", "exp_avg_sq")])
def test_the_chosen_optimizer_trains_the_stage(optimizer: str, slot: str, tiny_npz: Path, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    run_stage(stage(tiny_npz, optimizer=optimizer, weight_decay=0.05, lr=1e-3), backbone, tmp_path)
    assert any(not torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    slots = {name for per_param in _optimizer_state(tmp_path / "s").values() for name in per_param}
    assert slot in slots


def test_adamw_continues_a_vit(tiny_npz: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = build_vit(None, embed_dim=32, depth=2, num_heads=2, patch_size=4, img_size=16)
    result = run_stage(stage(tiny_npz, optimizer="adamw", method="mocov3", lr=1e-4,
                             adamw_betas=[0.9, 0.95]), vit, tmp_path)
    assert result.summary["status"] == "done"
    assert all(torch.isfinite(v).all() for v in vit.state_dict().values())


def test_an_unknown_optimizer_is_refused_naming_the_choices(tiny_npz: Path) -> None:
    with pytest.raises(HptError, match="optimizer must be one of sgd, adamw"):
        stage(tiny_npz, optimizer="lars")
