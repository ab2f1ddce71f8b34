"""MoCo-v2 training and the linear protocol on a CUDA GPU: a few steps of a tiny ResNet in fp32 and bf16 (autocast),
with channels_last on and off; the saved backbone reloads on the CPU.

Marked `gpu` and skipped where no CUDA GPU is visible. HPT_GPU_TEST_DEVICE=cpu runs them on the CPU instead, so
that they are known to work before a GPU is at hand (bench/gpu_check.sh --tiny does that).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from hpt.config import from_dict
from hpt.eval import LinearConfig, linear_eval, load_eval_backbone, load_splits
from hpt.models import build_backbone, build_resnet
from hpt.pretrain.config import StageConfig
from hpt.pretrain.stage import run_stage

from ..helpers import TINY_STAGE

DEVICE = os.environ.get("HPT_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA GPU visible"),
]
TINY_BACKBONE = {"arch": "resnet18", "small_stem": True, "width": 8}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_moco_steps_train_with_a_finite_loss_and_the_backbone_reloads_on_cpu(
        tiny_npz: Path, tmp_path: Path, precision: str, channels_last: bool) -> None:
    config = from_dict(StageConfig, {"name": "s", "data": f"npz:{tiny_npz}", "steps": 3, **TINY_STAGE,
                                     "device": DEVICE, "precision": precision, "channels_last": channels_last})
    torch.manual_seed(0)
    backbone = build_resnet(**TINY_BACKBONE)
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = run_stage(config, backbone, tmp_path)

    with (tmp_path / "s" / "metrics.csv").open(newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["config"]["precision"] == precision
    assert next(backbone.parameters()).device.type == torch.device(DEVICE).type

    reloaded, _ = build_backbone(str(result.backbone_path))  # on the CPU, as downstream code loads it
    trained = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    assert set(reloaded.state_dict()) == set(trained)
    for key, value in reloaded.state_dict().items():
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(start[k], trained[k]) for k in start if "weight" in k)  # it trained
    with torch.no_grad():
        features = reloaded.eval()(torch.randn(2, 3, 16, 16))
    assert torch.isfinite(features).all()


def test_linear_protocol_runs_on_the_device(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = load_eval_backbone("random", **TINY_BACKBONE)
    record = linear_eval(backbone, load_splits(f"npz:{tiny_npz}"),
                         LinearConfig(steps=30, eval_every=10, device=DEVICE), tmp_path / "linear")
    assert next(backbone.model.parameters()).device.type == torch.device(DEVICE).type
    assert 0.0 <= record["test"] <= 1.0
    low, high = record["interval"]
    assert low <= record["test"] <= high
    assert (tmp_path / "linear" / "results.json").exists()
