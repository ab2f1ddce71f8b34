"""The train modes norm, lora and last_blocks: after real optimizer steps of a method, every parameter and buffer
outside the mode's set is bit-identical, and every one inside it changed.

As tests/test_stage.py's bn-mode test does, BatchNorm running statistics are left out of the comparison on the
ResNet: they move in every training forward (train mode), whatever trains. The toy ViT and ConvNeXt have no
BatchNorm, so there every buffer and parameter is compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hpt import distributed
from hpt.config import from_dict
from hpt.errors import HptError
from hpt.models import build_resnet
from hpt.models.lora import LoRALayer, add_lora
from hpt.pretrain import loop
from hpt.pretrain.build import Training, build_training
from hpt.pretrain.config import StageConfig
from hpt.pretrain.loop import finish_backbone, optimizer_step
from hpt.pretrain.stage import run_stage
from hpt.pretrain.state import load_state
from hpt.pretrain.trainable import (
    describe_trainable,
    ordered_blocks,
    set_trainable,
    trainable_summary,
)

from ..helpers import TINY_STAGE
from .toys import BN_STATS, ToyConvNeXt, ToyViT, changed_keys, snapshot

Rule = Callable[[str], bool]  # which state-dict keys a mode may (and must) change


def stage_config(data: str = "npz:unused.npz", **settings: object) -> StageConfig:
    return from_dict(StageConfig, {"name": "s", "data": data, "steps": 4, **TINY_STAGE, **settings})


def train_toy(backbone: nn.Module, steps: int = 3, **settings: object) -> Training:
    """A few MoCo v2 steps on random views, through the stage's own build_training and finish_backbone (which add
    and merge LoRA adapters)."""
    config = stage_config(lr=0.5, **settings)
    info = distributed.DistInfo()
    training = build_training(config, backbone, num_images=64, per_rank=16, info=info)
    training.method.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        view1, view2 = (torch.randn(16, 3, 16, 16, generator=generator) for _ in range(2))
        optimizer_step(training, training.method(view1, view2).loss)
    finish_backbone(training, backbone, info)
    return training


def matching(pattern: str) -> Rule:
    return lambda key: re.search(pattern, key) is not None


VIT_NORM = matching(r"(^|\.)norm\d?\.(weight|bias)$")
VIT_LORA = matching(r"^blocks\.\d\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.weight$")
VIT_LAST = matching(r"^blocks\.1\.")
CONVNEXT_NORM = matching(r"^(stem\.1|stages\.\d\.downsample\.0|stages\.\d\.blocks\.\d\.norm|norm)\.(weight|bias)$")
CONVNEXT_FC = matching(r"^stages\.\d\.blocks\.\d\.mlp\.fc[12]\.weight$")
CONVNEXT_LAST = matching(r"^stages\.1\.blocks\.0\.")  # the last of the three blocks (stages 0: 2, stage 1: 1)


def either(*rules: Rule) -> Rule:
    return lambda key: any(rule(key) for rule in rules)


def toy(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls()


@pytest.mark.parametrize("cls, settings, rule", [
    (ToyViT, {"train": "norm"}, VIT_NORM),
    (ToyViT, {"train": "lora"}, VIT_LORA),
    (ToyViT, {"train": "lora", "last_blocks": 1}, either(VIT_LORA, VIT_LAST)),  # ExPLoRA
    (ToyViT, {"train": "norm", "last_blocks": 1}, either(VIT_NORM, VIT_LAST)),
    (ToyConvNeXt, {"train": "norm"}, CONVNEXT_NORM),
    (ToyConvNeXt, {"train": "lora", "lora": {"targets": ["fc1", "fc2"]}, "last_blocks": 1},
     either(CONVNEXT_FC, CONVNEXT_LAST)),
], ids=["vit-norm", "vit-lora", "vit-lora-last1", "vit-norm-last1", "convnext-norm", "convnext-lora-last1"])
def test_a_mode_changes_exactly_its_parameters(cls: type[nn.Module], settings: dict, rule: Rule) -> None:
    backbone = toy(cls)
    before = snapshot(backbone)
    train_toy(backbone, **settings)
    assert not any(isinstance(m, LoRALayer) for m in backbone.modules())  # merged: plain layers again
    expected = {key for key in before if rule(key)}
    assert expected and changed_keys(before, snapshot(backbone)) == expected  # nothing else, bit for bit


def test_bn_keeps_its_meaning_batchnorm_only_and_is_refused_without_batchnorm() -> None:
    backbone = toy(ToyViT)  # LayerNorms only: bn would train none of them
    before = snapshot(backbone)
    with pytest.raises(HptError, match="has none .*use train: norm"):
        train_toy(backbone, train="bn")
    assert changed_keys(before, snapshot(backbone)) == set()


def test_the_comparison_sees_a_change_outside_the_set() -> None:
    """The check above is not vacuous: train: all changes what norm must leave alone."""
    backbone = toy(ToyViT)
    before = snapshot(backbone)
    train_toy(backbone, train="all")
    assert any(not VIT_NORM(key) for key in changed_keys(before, snapshot(backbone)))


# --- the ResNet through a whole stage (data, method, save) ---

RESNET_BN = matching(r"(^|\.)(bn\d|downsample\.1)\.(weight|bias)$")
RESNET_CONV = matching(r"(^|\.)(conv\d|downsample\.0)\.weight$")
RESNET_LAST = matching(r"^layer4\.1\.")
LORA = {"rank": 4, "alpha": 8.0, "targets": ["conv1", "conv2", "downsample.0"]}


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", small_stem=True, width=8)


def without_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.endswith(BN_STATS)}


@pytest.mark.parametrize("settings, rule", [
    ({"train": "norm"}, RESNET_BN),
    ({"train": "lora", "lora": LORA}, RESNET_CONV),
    ({"train": "lora", "lora": LORA, "last_blocks": 1}, either(RESNET_CONV, RESNET_LAST)),
    ({"train": "bn", "last_blocks": 1}, either(RESNET_BN, RESNET_LAST)),
], ids=["norm", "lora", "lora-last1", "bn-last1"])
def test_a_resnet_stage_changes_exactly_its_parameters(settings: dict, rule: Rule, tiny_npz: Path,
                                                       tmp_path: Path) -> None:
    backbone = tiny_resnet()
    before = without_stats(snapshot(backbone))
    result = run_stage(stage_config(f"npz:{tiny_npz}", lr=0.5, **settings), backbone, tmp_path)
    expected = {key for key in before if rule(key)}
    assert expected and changed_keys(before, without_stats(snapshot(backbone))) == expected
    assert result.summary["trained"].startswith(settings["train"])


def test_a_lora_stage_saves_the_merged_backbone_under_the_original_keys(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = tiny_resnet()
    original = snapshot(backbone)
    run_stage(stage_config(f"npz:{tiny_npz}", lr=0.5, train="lora", lora=LORA), backbone, tmp_path)
    saved = load_file(str(tmp_path / "s" / "backbone.safetensors"))
    assert sorted(saved) == sorted(original)  # no lora_a / lora_b
    assert all(torch.equal(saved[key], value) for key, value in backbone.state_dict().items())
    # the resume state holds the unmerged layers: frozen base weights and the adapters
    model = load_state(tmp_path / "s" / "state")["model"]
    scaling = LORA["alpha"] / LORA["rank"]
    merged = 0
    for key in [k for k in model if k.startswith("backbone.") and k.endswith(".lora_a")]:
        name = key.removeprefix("backbone.").removesuffix(".lora_a")
        base, a, b = model[f"backbone.{name}.weight"], model[key], model[f"backbone.{name}.lora_b"]
        assert torch.equal(base, original[f"{name}.weight"])  # the base weight never trained
        assert torch.equal(saved[f"{name}.weight"], base + ((b @ a) * scaling).view_as(base))
        merged += 1
    assert merged == sum(RESNET_CONV(key) for key in original) == 20


def test_an_interrupted_lora_stage_resumes_bit_for_bit(tiny_npz: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume state holds the adapters: a run stopped after step 3 (state of step 2) ends as a straight one."""
    config = stage_config(f"npz:{tiny_npz}", lr=0.5, train="lora", lora=LORA, last_blocks=1)
    straight = run_stage(config, tiny_resnet(), tmp_path / "straight")
    real_step, calls = loop.optimizer_step, []

    def failing_step(training: Training, loss: torch.Tensor) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("stopped in step 3")
        real_step(training, loss)

    monkeypatch.setattr(loop, "optimizer_step", failing_step)
    with pytest.raises(RuntimeError, match="stopped in step 3"):
        run_stage(config, tiny_resnet(), tmp_path / "stopped")
    monkeypatch.setattr(loop, "optimizer_step", real_step)
    resumed = run_stage(config, tiny_resnet(), tmp_path / "stopped", resume=True)
    assert resumed.summary["resumed_from"] == 2
    assert resumed.summary["backbone_sha256"] == straight.summary["backbone_sha256"]


def test_a_lora_stage_refuses_targets_the_backbone_lacks(tiny_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(HptError, match=r"match no Linear or Conv2d .*conv1, conv2, downsample\.0"):
        run_stage(stage_config(f"npz:{tiny_npz}", train="lora"), tiny_resnet(), tmp_path)


# --- blocks, summary and refusals ---

def test_blocks_are_found_in_order() -> None:
    resnet = tiny_resnet()
    assert ordered_blocks(resnet) == [*resnet.layer1, *resnet.layer2, *resnet.layer3, *resnet.layer4]
    vit, convnext = toy(ToyViT), toy(ToyConvNeXt)
    assert ordered_blocks(vit) == list(vit.blocks)
    assert ordered_blocks(convnext) == [*convnext.stages[0].blocks, *convnext.stages[1].blocks]
    with pytest.raises(HptError, match="finds no blocks"):
        ordered_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_set_trainable_refuses_what_it_cannot_do() -> None:
    resnet = tiny_resnet()
    with pytest.raises(HptError, match="more than the 8 blocks"):
        set_trainable(resnet, "norm", last_blocks=9)
    assert all(p.requires_grad for p in resnet.parameters())  # refused before anything changed
    with pytest.raises(HptError, match="needs LoRA adapters"):
        set_trainable(resnet, "lora")


def test_the_summary_says_what_trains() -> None:
    vit = toy(ToyViT)
    add_lora(vit, 4, 8)
    set_trainable(vit, "lora", last_blocks=1)
    trained, total, groups = trainable_summary(vit)
    assert total == sum(p.numel() for p in vit.parameters())
    assert trained == sum(p.numel() for p in vit.parameters() if p.requires_grad)
    assert len(groups["lora"]) == 16  # 8 wrapped layers (4 per block) x (A, B)
    assert groups["norm"] == ["blocks.1.norm1.weight", "blocks.1.norm1.bias", "blocks.1.norm2.weight",
                              "blocks.1.norm2.bias"]
    assert all(name.startswith("blocks.1.") for name in groups["other"]) and len(groups["other"]) == 8
    line = describe_trainable(vit, "lora", 1)
    assert line.startswith(f"lora + last 1 block: {100 * trained / total:.1f}% of the backbone's parameters")
    assert line.endswith("16 LoRA matrices, 4 norm tensors, 8 other tensors")


@pytest.mark.parametrize("settings, message", [
    ({"train": "all", "last_blocks": 1}, "train: all trains every block already: remove last_blocks"),
    ({"train": "bn-stats", "last_blocks": 1}, "it trains nothing: remove last_blocks"),
    ({"train": "norm", "last_blocks": -1}, "last_blocks must be an integer >= 0"),
    ({"train": "norm", "lora": {"rank": 4}}, "lora: section is read only with train: lora"),
    ({"train": "lora", "lora": {"rank": 0}}, "lora.rank must be"),
])
def test_stage_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(HptError, match=re.escape(message)):
        stage_config(**settings)


def test_new_settings_keep_earlier_run_ids_and_count_when_set() -> None:
    assert not {"lora", "last_blocks"} & set(stage_config().semantic())
    semantic = stage_config(train="lora", lora={"rank": 4}, last_blocks=2).semantic()
    assert semantic["lora"] == {"rank": 4} and semantic["last_blocks"] == 2
    stage_config(train="norm", anchor={"weight": 1.0})  # the new modes are training stages: an anchor is allowed
