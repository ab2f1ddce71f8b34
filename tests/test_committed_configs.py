"""Every YAML file the repository ships validates, so a renamed setting cannot strand a committed config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hpt.experiments.config import load_experiment
from hpt.pretrain.hierarchy import load_hierarchy

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "configs/examples"
SHIPPED = sorted(ROOT.glob("configs/**/*.yaml")) + [ROOT / "src/hpt/assets/demo.yaml"]
HIERARCHIES = [p for p in SHIPPED if "stages" in yaml.safe_load(p.read_text())]  # `hpt run` files
EXPERIMENTS = [p for p in SHIPPED if p not in HIERARCHIES]  # `hpt experiment` files


@pytest.mark.parametrize("path", HIERARCHIES, ids=lambda p: p.name)
def test_committed_hierarchy_configs_validate(path: Path) -> None:
    config = load_hierarchy(path)
    assert config.stages


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_committed_experiment_configs_validate(path: Path) -> None:
    config = load_experiment(path)
    assert config.target and config.base.checkpoint


def test_base_long_continues_the_base_with_its_recipe() -> None:
    (base,) = load_hierarchy(EXAMPLES / "base_cifar10.yaml").stages
    longer = load_hierarchy(EXAMPLES / "base_cifar10_long.yaml")
    more, *further = longer.stages
    assert base.name == "base" and more.lr_warmup_steps > 0 and not more.continue_method
    assert further and all(s.continue_method for s in further)  # each continues the head, key encoder and queue
    assert len({s.seed for s in longer.stages}) == len(longer.stages)  # other batches and augmentations each time
    skip = ("name", "steps", "lr_warmup_steps", "seed", "continue_method")
    recipe = {k: v for k, v in base.semantic().items() if k not in skip}
    for continued in (more, *further):
        assert recipe == {k: v for k, v in continued.semantic().items() if k not in skip}
    # it starts from the output of `base`: where the command that the base config documents writes it
    command = "hpt run configs/examples/base_cifar10.yaml --out runs/base_cifar10"
    assert command in (EXAMPLES / "base_cifar10.yaml").read_text()
    start = yaml.safe_load((EXAMPLES / "base_cifar10_long.yaml").read_text())["base"]["checkpoint"]
    assert Path(os.path.normpath(EXAMPLES / start)) == ROOT / "runs/base_cifar10" / base.name / "backbone.safetensors"
