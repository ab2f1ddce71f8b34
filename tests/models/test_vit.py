"""hpt's ViT against the reference implementations (timm, torchvision, official DINOv2, MAE's layout).

The fixtures in tests/fixtures/reference/ are written by scripts/make_vit_fixtures.py in the reference
environment (timm, torchvision and the DINOv2 code; hpt is not imported there): each holds a tiny model's
state dict in its own key layout, and vit_reference_io.safetensors the inputs and the references' pooled outputs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from hpt.errors import HptError
from hpt.models.formats import read_state_dict
from hpt.models.vit import VIT_CONFIGS, VisionTransformer, VitConfig, build_vit
from hpt.models.vit_layouts import (
    build_vit_from_state,
    detect_vit_layout,
    export_timm_state,
    infer_vit_config,
    load_vit_state,
    to_timm_layout,
)
from hpt.models.vit_posembed import (
    pos_prefix_tokens,
    resample_patch_pos,
    resample_pos_embed,
)

REF = Path(__file__).resolve().parent.parent / "fixtures" / "reference"
ATOL = 1e-5
HEADS = 2  # the fixtures' head count (embed 32 // 64 would give 1)
# fixture file -> the layout hpt must detect
FIXTURES = {
    "vit_timm_token.safetensors": "timm",
    "vit_timm_reg_ls.safetensors": "timm",
    "vit_timm_avg.safetensors": "timm",
    "vit_torchvision.safetensors": "torchvision",
    "vit_dinov2.safetensors": "dinov2",
    "vit_dinov2_reg_chunked.safetensors": "dinov2",
    "vit_mae_pretrain.pth": "mae",
}
TIMM = ("vit_timm_token", "vit_timm_reg_ls", "vit_timm_avg")


@pytest.fixture(scope="module")
def io() -> dict[str, Tensor]:
    return load_file(str(REF / "vit_reference_io.safetensors"))


def _path(name: str) -> Path:
    path = REF / name
    if not path.exists():
        pytest.skip(f"{name} not written (scripts/make_vit_fixtures.py without --dinov2-repo)")
    return path


def _meta(stem: str) -> dict[str, Any]:
    with safe_open(str(_path(stem + ".safetensors")), framework="pt") as f:
        meta = f.metadata()
    return {"keys": json.loads(meta["keys"]), "config": json.loads(meta["config"])}


def _timm_config(cfg: dict[str, Any]) -> VitConfig:
    """The VitConfig equal to a timm VisionTransformer's constructor arguments."""
    return VitConfig(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                     patch_size=cfg["patch_size"], img_size=cfg["img_size"], mlp_ratio=cfg.get("mlp_ratio", 4.0),
                     qkv_bias=cfg.get("qkv_bias", True), reg_tokens=cfg.get("reg_tokens", 0),
                     init_values=cfg.get("init_values"), global_pool=cfg.get("global_pool", "token"),
                     num_classes=cfg["num_classes"] or None)


def _load(name: str, **kwargs: Any) -> tuple[VisionTransformer, str, list[str]]:
    obj, _ = read_state_dict(_path(name))
    model, layout, dropped = build_vit_from_state(obj, num_heads=HEADS, **kwargs)
    return model.eval(), layout, dropped


def _diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", list(FIXTURES))
def test_pooled_output_matches_reference(name: str, io: dict[str, Tensor]) -> None:
    model, layout, _ = _load(name)
    assert layout == FIXTURES[name]
    stem = name.split(".")[0]
    with torch.no_grad():
        assert _diff(model.forward_features(io["x32"]), io[f"{stem}.out32"]) < ATOL
        if stem == "vit_timm_avg":  # the layout functions drop head.*; the keys still load with torch's strict
            full = VisionTransformer(_timm_config(_meta(stem)["config"])).eval()
            full.load_state_dict(load_file(str(_path(name))), strict=True)
            assert _diff(full(io["x32"]), io[f"{stem}.logits32"]) < ATOL


@pytest.mark.parametrize("name", [n for n in FIXTURES if "torchvision" not in n])
def test_interpolated_forward_matches_reference(name: str, io: dict[str, Tensor]) -> None:
    """Built at 32 px, run at 48 px: timm's dynamic_img_size resampling, DINOv2's interpolate_pos_encoding."""
    model, _, _ = _load(name)
    assert model.pos_interp == ("dinov2" if "dinov2" in name else "timm")
    with torch.no_grad():
        assert _diff(model.forward_features(io["x48"]), io[f"{name.split('.')[0]}.out48"]) < ATOL


@pytest.mark.parametrize("name", list(FIXTURES))
def test_checkpoint_resampled_at_load_matches_reference(name: str, io: dict[str, Tensor]) -> None:
    """Loading for 48 px resamples pos_embed once (torchvision: its interpolate_embeddings numerics)."""
    model, _, _ = _load(name, img_size=48)
    assert model.grid_size == (48 // model.patch_size,) * 2
    with torch.no_grad():
        assert _diff(model.forward_features(io["x48"]), io[f"{name.split('.')[0]}.out48"]) < ATOL


def test_comparison_detects_a_small_change(io: dict[str, Tensor]) -> None:
    model, _, _ = _load("vit_dinov2_reg_chunked.safetensors")
    with torch.no_grad():
        model.blocks[1].ls2.gamma[0] += 1e-3
        assert _diff(model.forward_features(io["x32"]), io["vit_dinov2_reg_chunked.out32"]) > ATOL


@pytest.mark.parametrize("stem", TIMM)
def test_keys_and_shapes_equal_timm(stem: str) -> None:
    meta = _meta(stem)
    model = VisionTransformer(_timm_config(meta["config"]))
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == meta["keys"]  # same order too


@pytest.mark.parametrize("stem", TIMM)
def test_infer_config_and_export_round_trip(stem: str) -> None:
    state = load_file(str(_path(stem + ".safetensors")))
    expected = _timm_config(_meta(stem)["config"])
    layer_scale = 1.0 if expected.init_values else None  # read as present (1.0), not as its initial value
    assert infer_vit_config(state, num_heads=HEADS) == replace(expected, init_values=layer_scale)
    model, _, dropped = build_vit_from_state(state, num_heads=HEADS)
    assert dropped == [k for k in state if k.startswith("head.")]
    exported = export_timm_state(model)
    timm_keys = [k for k, _ in _meta(stem)["keys"] if not k.startswith("head.")]
    assert list(exported) == timm_keys  # what timm.create_model(..., num_classes=0) loads strictly
    assert all(torch.equal(exported[k], state[k]) for k in timm_keys)
    again = VisionTransformer(replace(model.config, num_classes=None))
    load_vit_state(again, exported)
    assert all(torch.equal(again.state_dict()[k], exported[k]) for k in exported)


def test_dinov2_conversion() -> None:
    raw = load_file(str(_path("vit_dinov2_reg_chunked.safetensors")))
    assert "blocks.1.1.norm1.weight" in raw and "register_tokens" in raw  # chunk 1 holds block 1
    state, layout, dropped = to_timm_layout(raw)
    assert (layout, dropped) == ("dinov2", ["mask_token"])
    assert "blocks.1.norm1.weight" in state and not any(k.count(".") > 3 and k.split(".")[2].isdigit() for k in state)
    assert torch.equal(state["cls_token"], raw["cls_token"] + raw["pos_embed"][:, :1])
    assert torch.equal(state["reg_token"], raw["register_tokens"])
    assert state["pos_embed"].shape == (1, 64, 32)
    cfg = infer_vit_config(state, num_heads=HEADS)
    assert (cfg.no_embed_class, cfg.reg_tokens, cfg.init_values, cfg.img_size) == (True, 2, 1.0, 32)
    plain, layout, dropped = to_timm_layout(load_file(str(_path("vit_dinov2.safetensors"))))
    assert (layout, dropped, plain["pos_embed"].shape[1]) == ("dinov2", ["mask_token"], 65)


def test_torchvision_conversion_and_legacy_mlp_names(io: dict[str, Tensor]) -> None:
    raw = load_file(str(_path("vit_torchvision.safetensors")))
    state, layout, dropped = to_timm_layout(raw)
    assert layout == "torchvision" and sorted(dropped) == ["heads.head.bias", "heads.head.weight"]
    in_proj = raw["encoder.layers.encoder_layer_1.self_attention.in_proj_weight"]
    assert torch.equal(state["blocks.1.attn.qkv.weight"], in_proj)
    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in raw.items()}
    assert any("linear_1" in k for k in legacy)
    model, _, _ = build_vit_from_state({"model": {"module." + k: v for k, v in legacy.items()}}, num_heads=HEADS)
    with torch.no_grad():
        assert _diff(model.eval()(io["x32"]), io["vit_torchvision.out32"]) < ATOL


def test_mae_file_drops_decoder() -> None:
    obj, _ = read_state_dict(_path("vit_mae_pretrain.pth"))
    state, layout, dropped = to_timm_layout(obj)
    assert layout == "mae" and "mask_token" in dropped and "decoder_pred.weight" in dropped
    assert not any(k.startswith(("decoder", "mask")) for k in state)
    assert infer_vit_config(state).global_pool == "token"


def test_avg_pool_uses_fc_norm_and_no_norm() -> None:
    keys = build_vit(None, embed_dim=32, depth=1, patch_size=8, img_size=32, global_pool="avg").state_dict()
    assert "fc_norm.weight" in keys and "norm.weight" not in keys


def test_strict_load_names_missing_and_unexpected() -> None:
    state = load_file(str(_path("vit_timm_token.safetensors")))
    cfg = _timm_config(_meta("vit_timm_token")["config"])
    model = VisionTransformer(cfg)
    broken = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    broken["blocks.1.mlp.fc3.bias"] = state["blocks.1.mlp.fc2.bias"]
    named = r"missing keys: blocks\.1\.mlp\.fc2\.bias.*unexpected keys: blocks\.1\.mlp\.fc3\.bias"
    with pytest.raises(HptError, match=named):
        load_vit_state(model, broken)
    bigger = VisionTransformer(replace(cfg, img_size=48))
    with pytest.raises(HptError, match=r"pos_embed \(1, 65, 32\) in file vs \(1, 145, 32\).*resample_pos_embed"):
        load_vit_state(bigger, state)
    load_vit_state(bigger, resample_pos_embed(state, 12))


def test_resample_pos_embed() -> None:
    g = torch.Generator().manual_seed(0)
    state = {"cls_token": torch.zeros(1, 1, 8), "reg_token": torch.zeros(1, 2, 8),
             "pos_embed": torch.randn(1, 3 + 16, 8, generator=g)}
    assert pos_prefix_tokens(state) == 3
    assert resample_pos_embed(state, 4)["pos_embed"] is state["pos_embed"]  # same grid: untouched
    for method in ("timm", "dinov2", "torchvision"):
        out = resample_pos_embed(state, (6, 5), method=method)["pos_embed"]
        assert out.shape == (1, 3 + 30, 8) and torch.equal(out[:, :3], state["pos_embed"][:, :3])
    const = torch.full((1, 1 + 16, 4), 0.5)
    assert torch.allclose(resample_patch_pos(const, 7, num_prefix_tokens=1), torch.full((1, 50, 4), 0.5), atol=1e-6)
    no_cls = {"cls_token": torch.zeros(1, 1, 8), "reg_token": torch.zeros(1, 4, 8), "pos_embed": torch.randn(1, 25, 8)}
    assert pos_prefix_tokens(no_cls) == 0  # DINOv2-with-registers style: patches only
    with pytest.raises(HptError, match="not a square"):
        resample_patch_pos(torch.zeros(1, 1 + 15, 8), 4, num_prefix_tokens=1)
    with pytest.raises(HptError, match="unknown position-embedding interpolation"):
        resample_patch_pos(torch.zeros(1, 17, 8), 5, num_prefix_tokens=1, method="bilinear")


@pytest.mark.parametrize("kwargs, message", [
    ({"embed_dim": 30, "num_heads": 4}, "not divisible by num_heads"),
    ({"img_size": 30, "patch_size": 4}, "not a multiple of patch_size 4; use img_size 28"),
    ({"patch_size": 0}, "patch_size must be a positive integer"),
    ({"depth": 2.0}, "depth must be a positive integer"),
    ({"global_pool": "max"}, "unknown global_pool 'max'"),
    ({"reg_tokens": -1}, "reg_tokens must be an integer >= 0"),
    ({"init_values": 0}, "init_values"),
    ({"mlp_ratio": 0}, "mlp_ratio must be a positive number"),
    ({"num_classes": 0}, "num_classes must be a positive integer or None"),
    ({"pos_interp": "torchvision"}, "resample_pos_embed only"),
    ({"qkv_bias": "yes"}, "qkv_bias must be True or False"),
    ({"width": 3}, "unknown ViT option"),
])
def test_bad_arguments_raise_hpt_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(HptError, match=message):
        build_vit("vit_tiny", **kwargs)


def test_bad_inputs_raise_hpt_error() -> None:
    with pytest.raises(HptError, match="unknown ViT 'vit_huge'"):
        build_vit("vit_huge")
    model = build_vit(None, embed_dim=32, depth=1, patch_size=8, img_size=32)
    with pytest.raises(HptError, match="not a multiple of the patch size 8"):
        model(torch.zeros(1, 3, 36, 32))
    with pytest.raises(HptError, match="no ViT found"):
        to_timm_layout({"conv1.weight": torch.zeros(1)})
    with pytest.raises(HptError, match="several ViT backbones"):
        state = model.state_dict()
        to_timm_layout({**{"student." + k: v for k, v in state.items()}, **{"ema." + k: v for k, v in state.items()}})
    with pytest.raises(HptError, match="SwiGLU"):
        to_timm_layout({"patch_embed.proj.weight": torch.zeros(1), "mask_token": torch.zeros(1, 4),
                        "blocks.0.mlp.w12.weight": torch.zeros(1)})
    with pytest.raises(HptError, match="not a ViT layout"):
        detect_vit_layout({"patch_embed.proj.weight": torch.zeros(1)})


@pytest.mark.parametrize("name, dims", list(VIT_CONFIGS.items()))
def test_named_configs(name: str, dims: tuple[int, int, int]) -> None:
    with torch.device("meta"):
        model = build_vit(name, patch_size=14, img_size=518, reg_tokens=4, init_values=1e-5)
    assert (model.feature_dim, len(model.blocks), model.config.num_heads) == dims
    assert model.pos_embed.shape == (1, 1 + 4 + 37 * 37, dims[0])


def test_small_patches_and_shapes() -> None:
    for patch, size in ((2, 28), (4, 32), (7, 28), (8, 32)):
        model = build_vit(None, embed_dim=16, depth=1, patch_size=patch, img_size=size, reg_tokens=1)
        x = torch.randn(2, 3, size, size)
        assert model(x).shape == (2, 16) and model.forward_tokens(x).shape == (2, 2 + (size // patch) ** 2, 16)
    head = build_vit(None, embed_dim=16, depth=1, patch_size=4, img_size=16, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    assert head(x).shape == (2, 5) and head.forward_features(x).shape == (2, 16) and head.head is not None


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    for pool in ("token", "avg"):
        model = build_vit(None, embed_dim=16, depth=2, patch_size=4, img_size=16, reg_tokens=2, init_values=0.1,
                          global_pool=pool, num_classes=3)
        model(torch.randn(2, 3, 16, 16)).square().sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (pool, name)


def test_blocks_in_order_and_stage_outputs() -> None:
    torch.manual_seed(0)
    model = build_vit(None, embed_dim=16, depth=3, patch_size=4, img_size=16, reg_tokens=1).eval()
    assert isinstance(model.blocks, nn.Sequential) and len(model.blocks) == 3
    params = dict(model.named_parameters())
    for i, block in enumerate(model.blocks):
        assert block.attn.qkv.weight is params[f"blocks.{i}.attn.qkv.weight"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        stages = model.stage_outputs(x)
        h = model.embed(x)
        for block in list(model.blocks):
            h = block(h)
        assert list(stages) == ["embed", "block0", "block1", "block2"]
        assert all(v.shape == (2, 16) for v in stages.values())
        assert torch.allclose(stages["block2"], h[:, 2:].mean(dim=1))
        assert torch.allclose(model.forward_features(x), model.norm(h)[:, 0])
    for p in model.parameters():  # "unfreeze the last block": its parameters are exactly blocks.2.*
        p.requires_grad_(False)
    for p in model.blocks[-1].parameters():
        p.requires_grad_(True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in params if n.startswith("blocks.2.")}


def test_timm_init_statistics() -> None:
    torch.manual_seed(0)
    model = build_vit("vit_small", patch_size=16, img_size=64, depth=2, reg_tokens=4, init_values=1e-5)
    model.requires_grad_(False)
    assert 0.015 < float(model.pos_embed.std()) < 0.025 and float(model.cls_token.abs().max()) < 1e-4
    assert model.reg_token is not None and float(model.reg_token.abs().max()) < 1e-4
    assert torch.equal(model.blocks[0].ls1.gamma, torch.full((384,), 1e-5))
    qkv = model.blocks[0].attn.qkv
    assert 0.018 < float(qkv.weight.std()) < 0.022 and not qkv.bias.any()
    assert torch.equal(model.norm.weight, torch.ones(384))
