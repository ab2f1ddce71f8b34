"""`hpt demo` machinery on a tiny stand-in for the shipped assets (the real run is measured in docs/results.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

from hpt.demo import assets_dir, run_demo
from hpt.models import build_resnet, save_backbone

from .conftest import write_npz
from .helpers import TINY_STAGE


def test_the_shipped_demo_files_are_installed_and_valid() -> None:
    from hpt.experiments import load_experiment

    folder = assets_dir()
    config = load_experiment(folder / "demo.yaml")
    assert Path(config.base.checkpoint).exists() and (folder / "fashion_demo.npz").exists()
    assert config.convergence_mode == "snapshots"


def test_demo_runs_compare_and_convergence_and_writes_the_report(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    write_npz(assets / "fashion_demo.npz", n_train=48, channels=1, size=16)
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), assets / "base_cifar10_w16.safetensors")
    raw = yaml.safe_load((assets_dir() / "demo.yaml").read_text())
    raw["defaults"] = {**TINY_STAGE, "augment": {"image_size": 16}}
    raw["budgets"] = {"hpt": 2, "hpt_bn": 2, "target": 3, "bn_stats": 2}
    raw["convergence_steps"] = [1]
    raw["eval"] = {"protocols": ["linear"], "linear": {"steps": 6, "eval_every": 3}, "device": "cpu"}
    (assets / "demo.yaml").write_text(yaml.safe_dump(raw))
    result = run_demo(tmp_path / "out", assets=assets)
    assert "| HPT |" in result.summary and "| HPT-BN |" in result.summary and "| Target |" in result.summary
    assert "Steps to parity: " in result.summary or "No steps-to-parity: " in result.summary  # tiny: may not learn
    text = result.report.read_text()
    assert "## Base vs Target vs HPT vs HPT-BN" in text and "## Convergence" in text
    assert (tmp_path / "out" / "figures" / "convergence_linear.png").exists()
