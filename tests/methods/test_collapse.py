"""Representation collapse: the spread measure, the one-time warning, and the stage's metrics and summary."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from hpt.config import from_dict
from hpt.methods.collapse import CollapseWatch, embedding_spread
from hpt.models import build_resnet
from hpt.pretrain.config import StageConfig
from hpt.pretrain.stage import run_stage

from ..helpers import TINY_STAGE


def test_spread_is_one_for_spread_out_embeddings_and_zero_for_one_point() -> None:
    torch.manual_seed(0)
    spread_out = torch.randn(4096, 128)
    assert embedding_spread(spread_out).item() == pytest.approx(1.0, abs=0.02)
    one_point = torch.randn(1, 128).repeat(512, 1) + 1e-6 * torch.randn(512, 128)
    assert embedding_spread(one_point).item() < 0.01
    narrow_cone = torch.randn(1, 128) + 0.05 * torch.randn(512, 128)  # nearly the same direction
    assert 0.01 < embedding_spread(narrow_cone).item() < 0.1


def test_the_watch_warns_once_after_the_warmup_and_says_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    watch = CollapseWatch("target", warmup_steps=100)
    with caplog.at_level(logging.WARNING, logger="hpt"):
        watch.check(50, 0.01)  # inside the warm-up: random weights start narrow
        watch.check(100, 0.5)
        watch.check(150, 0.02)
        watch.check(200, 0.01)
    assert watch.warning == {"step": 150, "spread": 0.02}
    assert len(caplog.records) == 1 and "collapsed" in caplog.text and "Lower the lr" in caplog.text


@pytest.mark.parametrize("method", ["mocov2", "simclr", "byol"])
def test_a_stage_logs_the_spread_of_every_method(method: str, tiny_npz: Path, tmp_path: Path) -> None:
    import csv

    config = from_dict(StageConfig, {"name": "s", "data": f"npz:{tiny_npz}", "steps": 4, **TINY_STAGE,
                                     "method": method})
    result = run_stage(config, build_resnet("resnet18", small_stem=True, width=8), tmp_path)
    with (tmp_path / "s" / "metrics.csv").open() as handle:
        rows = [(int(row["step"]), float(row["embedding_spread"])) for row in csv.DictReader(handle)]
    assert [step for step, _ in rows] == [1, 2, 3, 4]
    # distinct images give embeddings spread well away from one point (a random tiny ResNet: 0.36 to 0.85)
    assert all(0.2 < spread <= 1.5 for _, spread in rows), rows
    assert result.summary["collapse"] is None


@pytest.mark.parametrize("method", ["mocov2", "simclr", "byol"])
def test_a_stage_on_identical_views_reports_the_collapse(method: str, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Every image the same and no augmentation: every embedding is the same point, so the spread is 0 at every
    step, and the stage must warn at the first logged step after its warm-up (max(log_every, steps // 4) = 1)."""
    import csv

    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    data = tmp_path / "same.npz"
    np.savez(data, train_images=np.repeat(image[None], 64, axis=0), train_labels=np.arange(64) % 4)
    no_views = ["random_resized_crop", "color_jitter", "grayscale", "gaussian_blur", "horizontal_flip"]
    config = from_dict(StageConfig, {"name": "s", "data": f"npz:{data}", "steps": 4, **TINY_STAGE, "method": method,
                                     "augment": {**TINY_STAGE["augment"], "remove": no_views}})
    with caplog.at_level(logging.WARNING, logger="hpt"):
        result = run_stage(config, build_resnet("resnet18", small_stem=True, width=8), tmp_path)
    with (tmp_path / "s" / "metrics.csv").open() as handle:
        spreads = [float(row["embedding_spread"]) for row in csv.DictReader(handle)]
    assert len(spreads) == 4 and all(spread < 1e-3 for spread in spreads), spreads
    assert result.summary["collapse"] == {"step": 1, "spread": 0.0}
    assert sum("have collapsed" in record.getMessage() for record in caplog.records) == 1


def test_alignment_is_zero_for_identical_pairs_and_two_for_orthogonal_ones() -> None:
    from hpt.methods.collapse import alignment

    torch.manual_seed(0)
    z = torch.randn(64, 16)
    assert alignment(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, 3.0 * z).item() == pytest.approx(0.0, abs=1e-6)  # the scale of a row does not count
    eye = torch.eye(8)
    assert alignment(eye[:4], eye[4:]).item() == pytest.approx(2.0, abs=1e-6)
    assert alignment(z, -z).item() == pytest.approx(4.0, abs=1e-5)
    noisy = alignment(z, z + 0.3 * torch.randn(64, 16)).item()
    assert 0.01 < noisy < 0.5


def test_alignment_refuses_batches_of_different_shapes() -> None:
    from hpt.methods.collapse import alignment

    with pytest.raises(ValueError, match="same shape"):
        alignment(torch.randn(4, 8), torch.randn(5, 8))


def test_uniformity_is_zero_when_collapsed_and_clearly_negative_when_spread() -> None:
    from hpt.methods.collapse import uniformity

    torch.manual_seed(0)
    one_point = torch.randn(1, 32).repeat(256, 1)
    assert uniformity(one_point).item() == pytest.approx(0.0, abs=1e-5)
    spread_out = torch.randn(2048, 128)
    value = uniformity(spread_out).item()
    assert value == pytest.approx(-4.0, abs=0.1)  # ||zi - zj||^2 is about 2 for random directions in 128-d
    narrow_cone = torch.randn(1, 128) + 0.1 * torch.randn(256, 128)
    assert value < uniformity(narrow_cone).item() < 0.0
    eye = torch.eye(4)  # every pair at squared distance 2: log(exp(-2 * 2)) = -4 exactly
    assert uniformity(eye).item() == pytest.approx(-4.0, abs=1e-5)
    assert uniformity(eye, t=1.0).item() == pytest.approx(-2.0, abs=1e-5)
