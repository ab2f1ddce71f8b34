"""LoRA layers (hpt.models.lora): exact at initialisation, merged equal to unmerged, original keys after merging,
gradients only into the adapters, and refusals that name the layers there are."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpt.errors import HptError
from hpt.models import build_resnet
from hpt.models.lora import (
    LoRAConfig,
    LoRAConv2d,
    LoRALayer,
    LoRALinear,
    add_lora,
    merge_lora,
    merged_state_dict,
)
from hpt.pretrain.trainable import set_trainable

from .toys import ToyConvNeXt, ToyViT

VIT_TARGETS = [f"blocks.{i}.{name}" for i in range(2) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
RESNET_TARGETS = ("conv1", "conv2", "downsample.0")


def toy_vit() -> ToyViT:
    torch.manual_seed(0)
    return ToyViT().eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", small_stem=True, width=8).eval()


def randomise_b(module: nn.Module) -> None:
    """Give every lora_b non-zero values, as training would (B = 0 makes the update vanish)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in module.named_modules():
            if isinstance(layer, LoRALayer):
                layer.lora_b.copy_(0.1 * torch.randn(layer.lora_b.shape, generator=generator))


@pytest.mark.parametrize("build, targets, images", [
    (toy_vit, ("qkv", "proj", "fc1", "fc2"), (2, 3, 16, 16)),
    (resnet, RESNET_TARGETS, (2, 3, 16, 16)),
])
def test_the_output_is_identical_at_initialisation(build, targets, images) -> None:
    model = build()
    x = torch.randn(images)
    before = model(x)
    add_lora(model, rank=4, alpha=8, targets=targets)
    assert torch.equal(model(x), before)  # B = 0: not merely close


def test_wrapped_layers_keep_their_keys_and_add_only_the_adapters() -> None:
    model = toy_vit()
    original = list(model.state_dict())
    names = add_lora(model, rank=4, alpha=8)
    assert names == VIT_TARGETS  # the blocks' projections: 'attn.proj' leaves the patch embedding's conv alone
    assert isinstance(model.blocks[0].attn.qkv, LoRALinear) and not isinstance(model.patch_embed.proj, LoRAConv2d)
    keys = list(model.state_dict())
    assert [k for k in keys if not k.endswith(("lora_a", "lora_b"))] == original
    assert sorted(k for k in keys if k.endswith(("lora_a", "lora_b"))) == sorted(
        f"{name}.{p}" for name in names for p in ("lora_a", "lora_b"))


def test_a_dotted_target_picks_layers_by_their_last_components() -> None:
    model = toy_vit()
    assert add_lora(model, 2, 2, targets=("attn.proj",)) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]


def test_initialisation_follows_the_reference() -> None:
    model = toy_vit()
    add_lora(model, rank=4, alpha=8, generator=torch.Generator().manual_seed(3))
    layer = model.blocks[0].mlp.fc1
    assert layer.scaling == 2.0 and layer.lora_a.shape == (4, 16) and layer.lora_b.shape == (32, 4)
    assert torch.count_nonzero(layer.lora_b) == 0
    bound = 1 / math.sqrt(16)  # kaiming_uniform_(a=sqrt(5)) on (rank, fan_in)
    assert 0 < layer.lora_a.abs().max() <= bound
    again = toy_vit()
    add_lora(again, rank=4, alpha=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.blocks[0].mlp.fc1.lora_a, layer.lora_a)  # the generator decides


@pytest.mark.parametrize("build, targets, dtype", [
    (toy_vit, ("qkv", "proj", "fc1", "fc2"), torch.float32),
    (resnet, RESNET_TARGETS, torch.float32),
])
def test_merging_equals_the_unmerged_forward_and_restores_the_original_keys(build, targets, dtype) -> None:
    model = build().to(dtype)
    original = list(model.state_dict())
    add_lora(model, rank=4, alpha=8, targets=targets)
    randomise_b(model)
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    unmerged = model(x)
    expected = merged_state_dict(model)
    assert list(expected) == original
    merged_names = merge_lora(model)
    assert merged_names and not any(isinstance(m, LoRALayer) for m in model.modules())
    assert all(type(model.get_submodule(n)) in (nn.Linear, nn.Conv2d) for n in merged_names)
    assert list(model.state_dict()) == original
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    torch.testing.assert_close(model(x), unmerged, atol=1e-6, rtol=0)
    changed = [n for n in merged_names if not torch.equal(model.get_submodule(n).weight, build().to(dtype)
                                                          .get_submodule(n).weight)]
    assert changed == merged_names  # every merged weight took its update


def test_merged_state_dict_leaves_the_module_as_it_is() -> None:
    model = toy_vit()
    add_lora(model, 4, 8)
    randomise_b(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged_state_dict(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.blocks[1].mlp.fc2, LoRALinear)


def test_gradients_reach_only_the_adapters() -> None:
    model = toy_vit().train()
    wrapped = add_lora(model, 4, 8)
    assert all(not model.get_submodule(n).weight.requires_grad and not model.get_submodule(n).bias.requires_grad
               for n in wrapped)  # add_lora freezes what it wraps
    set_trainable(model, "lora")  # and the rest (norms, the other layers) for the lora mode
    randomise_b(model)
    model(torch.randn(2, 3, 16, 16)).square().sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {f"{n}.{p}" for n in wrapped for p in ("lora_a", "lora_b")}
    assert all(model.get_submodule(n).lora_a.grad.abs().sum() > 0 for n in wrapped)


def test_dropout_acts_on_the_adapter_path_in_training_only() -> None:
    model = toy_vit()
    add_lora(model, 4, 8, dropout=0.5)
    randomise_b(model)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))  # eval: no dropout
    model.train()
    torch.manual_seed(0)
    first = model(x)
    assert not torch.equal(first, model(x))


def test_nothing_matched_is_refused_naming_the_layers_there() -> None:
    with pytest.raises(HptError, match=r"qkv, attn.proj, fc1, fc2 match no .*conv1, conv2, downsample\.0"):
        add_lora(resnet(), 4, 8)
    convnext = ToyConvNeXt()
    with pytest.raises(HptError, match=r"conv_dw match no .*fc1, fc2"):  # a depthwise conv takes no LoRA
        add_lora(convnext, 4, 8, targets=("conv_dw",))
    assert add_lora(convnext, 4, 8, targets=("fc1", "fc2")) == [
        f"stages.{s}.blocks.{b}.mlp.{fc}" for s, b in ((0, 0), (0, 1), (1, 0)) for fc in ("fc1", "fc2")]


@pytest.mark.parametrize("settings, message", [
    ({"rank": 0}, "rank"), ({"alpha": 0.0}, "alpha"), ({"dropout": 1.0}, "dropout"), ({"targets": []}, "targets"),
    ({"targets": [""]}, "targets"),
])
def test_lora_settings_are_checked(settings, message) -> None:
    with pytest.raises(HptError, match=message):
        LoRAConfig(**settings)


def test_defaults_are_rank_8_alpha_8() -> None:
    config = LoRAConfig()
    assert (config.rank, config.alpha, config.dropout, config.targets) == (8, 8.0, 0.0, ["qkv", "attn.proj", "fc1", "fc2"])
