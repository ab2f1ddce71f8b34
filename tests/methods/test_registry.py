"""The methods a stage trains with: each registered one gives the training loop what it asks for
(hpt.methods.base.Method), and the loop never names one."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from hpt.config import from_dict
from hpt.errors import HptError
from hpt.methods import METHODS, Method, StepOutput, TrainingSize, build_method
from hpt.models import build_resnet
from hpt.pretrain.config import StageConfig

from ..helpers import TINY_STAGE

PRETRAIN = Path(__file__).resolve().parents[2] / "src" / "hpt" / "pretrain"
METHOD_NAMES = re.compile(r"mocov2|simclr|byol|BYOL|MoCo|SimCLR|mocov3|dino|DINO")


def stage(method: str) -> StageConfig:
    return from_dict(StageConfig, {"name": "s", "data": "npz:x.npz", "steps": 4, **TINY_STAGE, "method": method})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_gives_the_loop_what_it_asks_for(name: str) -> None:
    section = METHODS[name].section
    fields = {f.name: f for f in dataclasses.fields(StageConfig)}
    assert section in fields  # its settings: a section of the stage's YAML
    torch.manual_seed(0)
    method = build_method(name, build_resnet("resnet18", small_stem=True, width=8), stage(name),
                          TrainingSize(steps=4, global_batch=16, num_images=64))
    assert isinstance(method, Method) and isinstance(method, torch.nn.Module)
    assert method.recorded().keys() == {"queue_size"} and method.description
    assert method.setup_batchnorm(True, 16, 1) >= 1
    ids = {id(p) for p in method.trainable_parameters()}
    assert {id(p) for p in method.backbone.parameters()} <= ids
    method.before_step(0, 4)
    out = method(torch.randn(16, 3, 16, 16), torch.randn(16, 3, 16, 16))
    assert isinstance(out, StepOutput) and out.loss.dim() == 0 and out.loss.requires_grad
    assert out.logged and all(value.dim() == 0 and not value.requires_grad for value in out.logged.values())
    assert out.features is not None and out.feature_inputs is not None


def test_an_unknown_method_is_refused_with_the_choices() -> None:
    with pytest.raises(HptError, match="method must be one of mocov2, simclr, byol, mocov3, dino; got 'swav'"):
        stage("swav")


def test_the_pretraining_loop_never_names_a_method() -> None:
    """Only the stage's settings (config.py) name the methods' sections; the loop asks the method itself."""
    named = [f"{path.name}:{number}: {line.strip()}" for path in sorted(PRETRAIN.glob("*.py")) if path.name != "config.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if METHOD_NAMES.search(line)]
    assert not named, "\n".join(named)
