"""ConvNeXt V1/V2: timm's keys and numerics (fixtures from scripts/make_convnext_fixtures.py), official layouts,
architecture inference, strict loading, argument checks, gradients and block order."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from hpt.errors import HptError
from hpt.models.convnext import (
    CONVNEXT_ARCHS,
    ConvNeXt,
    ConvNeXtBlock,
    ConvNeXtSpec,
    build_convnext,
    convnext_from_spec,
)
from hpt.models.convnext_layouts import (
    convnext_from_state_dict,
    convnext_to_timm_layout,
    detect_convnext_layout,
    infer_convnext_spec,
    load_convnext_state,
)

REF = Path(__file__).resolve().parent.parent / "fixtures" / "reference"
ATOL = 1e-5
TINY = {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}
# fixture -> (layout, keys set aside, hpt constructor arguments of the same architecture)
FIXTURES: dict[str, tuple[str, list[str], dict[str, object]]] = {
    "convnext_v1_timm": ("timm", ["head.fc.weight", "head.fc.bias"], dict(TINY, patch_size=2, num_classes=5)),
    "convnext_v2_timm": ("timm", [], dict(TINY, patch_size=1, v2=True, conv_mlp=True)),
    "convnext_v1_official": ("official-v1", ["head.weight", "head.bias"],
                             {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "num_classes": 5}),
    "convnext_v2_official": ("official-v2", ["head.weight", "head.bias"],
                             {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "v2": True, "num_classes": 5}),
}


@pytest.fixture(scope="module")
def outputs() -> dict[str, Tensor]:
    return load_file(str(REF / "convnext_reference_outputs.safetensors"))


def _raw(name: str) -> dict[str, Tensor]:
    state = load_file(str(REF / f"{name}.safetensors"))
    return state


def _file(name: str) -> object:
    """The fixture as its source would ship it: official files wrap the weights in {"model": ...}."""
    state = _raw(name)
    return {"model": state, "epoch": 300} if "official" in name else state


def _loaded(name: str) -> ConvNeXt:
    model, _, _ = convnext_from_state_dict(_file(name), where=name)
    return model.eval()


def _max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", list(FIXTURES))
def test_pooled_features_match_timm(name: str, outputs: dict[str, Tensor]) -> None:
    model = _loaded(name)
    with torch.no_grad():
        pooled = model(outputs["input"])
        features = model.forward_features(outputs["input"])
    expected = outputs[f"{name}.pooled"]
    assert float(expected.abs().max()) > 0.1  # the reference is not degenerate
    diff = _max_diff(pooled, expected)
    print(f"{name}: max |hpt - timm| pooled = {diff:.2e}")
    assert diff < ATOL
    assert torch.equal(pooled, features)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_stage_outputs_match_timm(name: str, outputs: dict[str, Tensor]) -> None:
    model = _loaded(name)
    with torch.no_grad():
        stages = model.stage_outputs(outputs["input"])
    assert list(stages) == ["stem", "stage0", "stage1", "stage2", "stage3"]
    assert all(t.dim() == 4 for t in stages.values())
    assert stages["stem"].shape[1] == model.spec.dims[0]
    for i in range(4):
        assert _max_diff(stages[f"stage{i}"], outputs[f"{name}.stage{i}"]) < ATOL


@pytest.mark.parametrize("name", [n for n, (_, _, kw) in FIXTURES.items() if kw.get("num_classes")])
def test_classifier_logits_match_timm(name: str, outputs: dict[str, Tensor]) -> None:
    state, _, dropped = convnext_to_timm_layout(_file(name), name)
    raw = _raw(name)
    model = convnext_from_spec(infer_convnext_spec(state), num_classes=5).eval()
    load_convnext_state(model, state)
    fc = {k.rsplit(".", 1)[-1]: raw[k] for k in dropped}
    assert model.head.fc is not None
    model.head.fc.load_state_dict(fc)
    with torch.no_grad():
        diff = _max_diff(model(outputs["input"]), outputs[f"{name}.logits"])
    print(f"{name}: max |hpt - timm| logits = {diff:.2e}")
    assert diff < ATOL


@pytest.mark.parametrize("name", list(FIXTURES))
def test_layout_detection_and_dropped_keys(name: str) -> None:
    layout, dropped, _ = FIXTURES[name]
    state, found, set_aside = convnext_to_timm_layout(_file(name))
    assert found == layout == detect_convnext_layout(_raw(name))
    assert sorted(set_aside) == sorted(dropped)
    assert not any(k.startswith("head.fc.") for k in state)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_keys_and_shapes_equal_timm(name: str) -> None:
    """A model built from explicit arguments has exactly the (converted) fixture's keys, in timm's order."""
    _, _, kwargs = FIXTURES[name]
    model = ConvNeXt(None, **kwargs)  # type: ignore[arg-type]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    state, _, _ = convnext_to_timm_layout(_file(name))
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    assert ours == theirs  # (safetensors files keep no order: test_named_archs_have_timms_keys checks timm's)
    if "timm" in name and kwargs.get("num_classes"):  # head.fc too, for the timm file that has one
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in _raw(name).items()}


def _digest(state: dict[str, Tensor]) -> str:
    lines = sorted(f"{k}:{list(v.shape)}" for k, v in state.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("arch", CONVNEXT_ARCHS)
def test_named_archs_have_timms_keys(arch: str) -> None:
    reference = json.loads((REF / "convnext_timm_keys.json").read_text())[arch]
    with torch.device("meta"):
        model = build_convnext(arch)
    state = model.state_dict()
    assert model.arch == arch
    assert len(state) == reference["count"]
    if "shapes" in reference:
        assert [(k, list(v.shape)) for k, v in state.items()] == list(reference["shapes"].items())  # timm's order
    assert _digest(state) == reference["sha256"]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_is_sensitive_to_layerscale_and_grn(name: str, outputs: dict[str, Tensor]) -> None:
    """Negative control: zeroing the V1 LayerScale / V2 GRN weight of one block moves the output well beyond ATOL."""
    model = _loaded(name)
    block = model.ordered_blocks()[-1]
    with torch.no_grad():
        if block.gamma is not None:
            block.gamma.zero_()
        else:
            assert block.mlp.grn is not None
            block.mlp.grn.weight.zero_()
        assert _max_diff(model(outputs["input"]), outputs[f"{name}.pooled"]) > 1e-2


def test_architecture_inference() -> None:
    state, _, _ = convnext_to_timm_layout(_raw("convnext_v1_timm"))
    assert infer_convnext_spec(state) == ConvNeXtSpec((1, 1, 2, 1), (8, 16, 24, 32), 2, False, True, False, 3)
    state, _, _ = convnext_to_timm_layout(_raw("convnext_v2_timm"))
    assert infer_convnext_spec(state) == ConvNeXtSpec((1, 1, 2, 1), (8, 16, 24, 32), 1, True, False, True, 3)
    state, _, _ = convnext_to_timm_layout(_file("convnext_v2_official"))
    assert infer_convnext_spec(state) == ConvNeXtSpec((1, 1, 1, 1), (8, 16, 24, 32), 4, True, False, False, 3)
    for arch in ("convnext_atto", "convnext_tiny", "convnextv2_nano", "convnextv2_base"):
        with torch.device("meta"):
            model = build_convnext(arch, patch_size=1, in_chans=1)
        spec = infer_convnext_spec(model.state_dict())
        assert spec == model.spec and spec.patch_size == 1 and spec.in_chans == 1
        with torch.device("meta"):
            assert convnext_from_spec(spec).arch == arch


def test_inference_refuses_what_timm_cannot_build() -> None:
    state = {k: v for k, v in ConvNeXt(None, **TINY, patch_size=2).state_dict().items()  # type: ignore[arg-type]
             if not k.startswith("stages.0.downsample.")}
    with pytest.raises(HptError, match="stage-0 downsample"):
        infer_convnext_spec(state)
    with pytest.raises(HptError, match="not a ConvNeXt checkpoint"):
        convnext_to_timm_layout({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)})
    truncated = {k: v for k, v in _raw("convnext_v1_timm").items() if not k.startswith("stages.3.")}
    with pytest.raises(HptError, match="stages"):
        infer_convnext_spec(truncated)


def test_strict_loading_names_missing_unexpected_and_shapes() -> None:
    state, _, _ = convnext_to_timm_layout(_raw("convnext_v1_timm"))
    model = convnext_from_spec(infer_convnext_spec(state))
    broken = dict(state)
    del broken["stages.2.blocks.1.mlp.fc2.bias"]
    broken["stages.2.blocks.1.mlp.extra"] = torch.zeros(3)
    broken["stages.1.blocks.0.gamma"] = torch.zeros(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HptError) as err:
        load_convnext_state(model, broken, where="broken.safetensors")
    message = str(err.value)
    assert "broken.safetensors" in message
    assert "1 missing keys: stages.2.blocks.1.mlp.fc2.bias" in message
    assert "1 unexpected keys: stages.2.blocks.1.mlp.extra" in message
    assert "stages.1.blocks.0.gamma (7,) in file vs (16,) in model" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was loaded


def test_strict_loading_names_another_architecture() -> None:
    state, _, _ = convnext_to_timm_layout(_raw("convnext_v2_timm"))
    model = ConvNeXt(None, **TINY, patch_size=1)  # type: ignore[arg-type]
    with pytest.raises(HptError, match="the checkpoint is a ConvNeXt-V2") as err:
        load_convnext_state(model, state)
    assert "stages.0.blocks.0.mlp.grn.weight" in str(err.value)
    assert "stages.0.blocks.0.gamma" in str(err.value)


def test_missing_final_norm_needs_permission() -> None:
    fcmae = {k: v for k, v in _raw("convnext_v2_official").items() if not k.startswith(("norm.", "head."))}
    with pytest.raises(HptError, match="allow_missing_head_norm"):
        convnext_from_state_dict(fcmae)
    model, layout, _ = convnext_from_state_dict(fcmae, allow_missing_head_norm=True)
    assert layout == "official-v2"
    assert torch.equal(model.head.norm.weight, torch.ones(32))


def test_wrappers_and_module_prefix() -> None:
    raw = _raw("convnext_v1_timm")
    plain, _, _ = convnext_to_timm_layout(raw)
    for wrapped in ({"state_dict": {"module." + k: v for k, v in raw.items()}}, {"model": raw, "optimizer": {}}):
        state, layout, dropped = convnext_to_timm_layout(wrapped)
        assert layout == "timm" and sorted(dropped) == ["head.fc.bias", "head.fc.weight"]
        assert state.keys() == plain.keys()
    with pytest.raises(HptError, match="holds no tensors"):
        convnext_to_timm_layout({"epoch": 3})
    with pytest.raises(HptError, match="holds no state dict"):
        convnext_to_timm_layout([torch.zeros(1)])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"arch": "convnext_huge"}, "choose one of"),
        ({"arch": None, "dims": (8, 16, 24, 32)}, "needs both depths= and dims="),
        ({"depths": (1, 2, 3)}, "depths must be 4 positive integers"),
        ({"dims": (8, 16, 24, 0)}, "dims must be 4 positive integers"),
        ({"dims": (8, 16, 24, 32.0)}, "dims must be 4 positive integers"),
        ({"patch_size": 0}, "patch_size must be an integer from 1 to 16"),
        ({"patch_size": True}, "patch_size"),
        ({"ls_init_value": -1.0}, "ls_init_value must be a positive number"),
        ({"ls_init_value": "default"}, "ls_init_value"),
        ({"v2": "yes"}, "v2 must be True, False or None"),
        ({"conv_mlp": 1}, "conv_mlp must be True, False or None"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"drop_path_rate": 1.0}, "drop_path_rate must be a number in"),
        ({"in_chans": 0}, "in_chans"),
    ],
)
def test_bad_arguments_raise_hpt_error(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(HptError, match=fragment):
        ConvNeXt(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["convnext_v1_timm", "convnext_v2_timm"])
def test_gradients_reach_every_parameter(name: str) -> None:
    model = _loaded(name).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model(x).square().sum().backward()
    for key, param in model.named_parameters():
        assert param.grad is not None, key
        assert torch.isfinite(param.grad).all(), key
        assert float(param.grad.abs().sum()) > 0, key


def test_drop_path_is_identity_in_eval_only() -> None:
    torch.manual_seed(0)
    model = ConvNeXt(None, **TINY, patch_size=1, drop_path_rate=0.5, ls_init_value=1.0)  # type: ignore[arg-type]
    plain = ConvNeXt(None, **TINY, patch_size=1, ls_init_value=1.0)  # type: ignore[arg-type]
    plain.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))
        torch.manual_seed(1)
        assert not torch.allclose(model.train()(x), plain.train()(x))
    rates = [getattr(b.drop_path, "prob", 0.0) for b in model.ordered_blocks()]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)


def test_block_order() -> None:
    model = build_convnext("convnext_atto")
    blocks, names = model.ordered_blocks(), model.block_names()
    assert len(blocks) == len(names) == sum(model.spec.depths) == 12
    assert all(isinstance(b, ConvNeXtBlock) for b in blocks)
    assert all(model.get_submodule(n) is b for n, b in zip(names, blocks))
    assert names[0] == "stages.0.blocks.0" and names[-1] == "stages.3.blocks.1" and names[4] == "stages.2.blocks.0"
    # running the stem, then each stage's downsample and its blocks in this order, is the forward pass
    tiny = _loaded("convnext_v1_timm")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = tiny.stem(x)
        for name, block in zip(tiny.block_names(), tiny.ordered_blocks()):
            stage = tiny.stages[int(name.split(".")[1])]
            if name.endswith("blocks.0"):
                h = stage.downsample(h)
            h = block(h)
        assert torch.allclose(tiny.head.norm(h.mean((2, 3))), tiny(x), atol=1e-6)


def test_init_is_timms() -> None:
    torch.manual_seed(0)
    model = ConvNeXt(None, depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), v2=True, ls_init_value=0.5)  # type: ignore[arg-type]
    state = model.state_dict()
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    assert all(float(w.abs().max()) <= 2.0 for w in weights)
    big = state["stages.3.blocks.0.mlp.fc1.weight"]
    assert 0.018 < float(big.std()) < 0.022
    for key, value in state.items():
        if key.endswith("bias"):
            assert not value.any(), key
        if ".norm" in key and key.endswith("weight") or key.startswith("stem.1.weight"):
            assert torch.equal(value, torch.ones_like(value)), key
        if ".grn." in key:
            assert not value.any(), key
        if key.endswith("gamma"):
            assert torch.equal(value, torch.full_like(value, 0.5)), key
    assert build_convnext("convnext_atto").ordered_blocks()[0].gamma is not None
    assert float(build_convnext("convnext_atto").ordered_blocks()[0].gamma.detach()[0]) == pytest.approx(1e-6)  # type: ignore[union-attr]
    assert build_convnext("convnextv2_atto").ordered_blocks()[0].gamma is None
    assert build_convnext("convnext_tiny", num_classes=7)(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert build_convnext("convnext_pico").feature_dim == 512
