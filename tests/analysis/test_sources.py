"""Source ranking: distances with known answers, an identical source ranked first, the CLI table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpt.analysis.sources import frechet_distance, mmd2_rbf, rank_sources
from hpt.eval import load_eval_backbone

from ..conftest import write_npz


def test_frechet_distance_known_answers() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)  # same covariance: ||mu_a - mu_b||^2
    b = rng.normal(size=(4000, 3)) * 2.0  # covariances I and 4I: trace term 3 + 12 - 2*6 = 3
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.1)


def test_mmd_is_zero_for_the_same_sample_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 4))
    assert mmd2_rbf(a, a) == pytest.approx(0.0, abs=1e-12)
    assert mmd2_rbf(a, a + 3.0) > mmd2_rbf(a, a + 0.5) > 0


def test_an_identical_source_is_ranked_first(tmp_path: Path) -> None:
    target = write_npz(tmp_path / "target.npz", n_train=64, seed=0)
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(5)
    np.savez(other, train_images=(255 - rng.integers(0, 60, (64, 16, 16, 3))).astype(np.uint8))
    backbone = load_eval_backbone("random", arch="resnet18", small_stem=True, width=8)
    ranking = rank_sources(backbone, f"npz:{target}", [f"npz:{other}", f"npz:{target}"], images=64)
    assert ranking.scores[0].source == f"npz:{target}?split=train" or ranking.scores[0].source.startswith(
        f"npz:{target}")
    assert ranking.scores[0].frechet == pytest.approx(0.0, abs=1e-3)
    assert ranking.scores[0].frechet < ranking.scores[1].frechet
    assert "recommended source" in ranking.recommendation()


def test_rank_sources_cli_with_base_domain_and_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpt.models import build_resnet, save_backbone

    from ..helpers import call

    target = write_npz(tmp_path / "target.npz", n_train=48, seed=0)
    source = write_npz(tmp_path / "source.npz", n_train=48, seed=3)
    home = write_npz(tmp_path / "home.npz", n_train=48, seed=4, channels=3)
    base = tmp_path / "base.safetensors"
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), base)
    code, out, err = call(capsys, "rank-sources", "--base", str(base), "--target", f"npz:{target}",
                          f"npz:{source}", f"npz:{target}", "--base-data", f"npz:{home}", "--images", "48",
                          "--probe-steps", "1", "--batch-size", "16", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "recommended source" in out and "of the distance to noise images" in out
    record = json.loads((tmp_path / "r" / "ranking.json").read_text())
    assert len(record["scores"]) == 2 and all(s["probe"] is not None for s in record["scores"])
