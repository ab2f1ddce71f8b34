"""Any backbone family through hpt's entry points: built by name, told apart in files, saved with what rebuilds it,
exported and loaded back strictly, and a named DINOv2 base continued with LoRA from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hpt.errors import HptError
from hpt.models import (
    ConvNeXt,
    ResNet,
    VisionTransformer,
    arch_of,
    build_backbone,
    build_random,
    build_vit,
    export_backbone,
    inspect_checkpoint,
    save_backbone,
)
from hpt.models.families import family_of_checkpoint
from hpt.models.formats import read_state_dict

from ..conftest import write_npz

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch4_32", "vit_small_patch14_518_reg4",
                                  "vit_small_patch14_518_dinov2", "vit_small_patch14_518_reg4_dinov2", "convnext_atto",
                                  "convnext_atto_patch2", "convnextv2_atto"])
def test_an_architecture_name_builds_a_backbone_whose_name_is_the_same(arch: str) -> None:
    with torch.device("meta"):
        model = build_random(arch)
    assert arch_of(model) == arch and model.feature_dim > 0


def test_unknown_names_and_resnet_options_on_other_families_are_refused_by_name() -> None:
    with pytest.raises(HptError, match="vit_tiny.*convnext_atto"):
        build_random("vit_huge_patch14")
    with pytest.raises(HptError, match="ResNet options"):
        build_random("vit_tiny_patch4_32", small_stem=True)


@pytest.mark.parametrize(("name", "family", "kind"), [
    ("vit_dinov2.safetensors", "vit", VisionTransformer), ("vit_torchvision.safetensors", "vit", VisionTransformer),
    ("vit_mae_pretrain.pth", "vit", VisionTransformer), ("convnext_v1_official.safetensors", "convnext", ConvNeXt),
    ("convnext_v2_timm.safetensors", "convnext", ConvNeXt)])
def test_reference_files_are_told_apart_and_loaded_strictly(name: str, family: str, kind: type) -> None:
    obj, _ = read_state_dict(REFERENCE / name)
    assert family_of_checkpoint(obj) == family
    model, info = build_backbone(str(REFERENCE / name))
    assert isinstance(model, kind) and info is not None and info.spec is None
    assert info.architecture.startswith(arch_of(model))
    assert inspect_checkpoint(str(REFERENCE / name)).load_check.loadable  # type: ignore[union-attr]


def test_resnet_checkpoints_still_go_the_resnet_way(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_backbone(build_random("resnet18", small_stem=True, width=8), path)
    model, info = build_backbone(str(path))
    assert isinstance(model, ResNet) and info is not None and info.spec is not None and info.spec.width == 8


def test_a_saved_vit_records_its_head_count_and_comes_back_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = build_vit(None, embed_dim=32, depth=2, num_heads=4, patch_size=4, img_size=16).eval()  # 32 // 64 -> 1 head
    path = tmp_path / "vit.safetensors"
    save_backbone(vit, path, {"stage": "s"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["family"] == "vit" and json.loads(meta["vit_config"])["num_heads"] == 4 and meta["stage"] == "s"
    back, _ = build_backbone(str(path))
    x = torch.randn(2, 3, 16, 16)
    assert isinstance(back, VisionTransformer) and back.config.num_heads == 4
    assert torch.equal(back.eval()(x), vit(x))


@pytest.mark.parametrize("name", ["vit_dinov2.safetensors", "convnext_v1_official.safetensors"])
def test_export_in_timm_keys_loads_back_strictly(name: str, tmp_path: Path) -> None:
    source = REFERENCE / name
    out = export_backbone(source, tmp_path / "timm.pth", "timm")
    state = torch.load(out, weights_only=True)
    model, _ = build_backbone(str(source), num_heads=2)
    own = model.state_dict()
    assert set(state) == {k for k in own if not k.startswith(("head.fc.", "head.weight", "head.bias"))}
    assert all(torch.equal(state[k], own[k]) for k in state)
    with pytest.raises(HptError, match="timm or safetensors"):
        export_backbone(source, tmp_path / "tv.pth", "torchvision")


def _dinov2_vits14_file(cache: Path) -> Path:
    """A DINOv2 ViT-S/14 file in the official hub layout (random weights) under the hub's file name."""
    torch.manual_seed(0)
    model = build_vit("vit_small", patch_size=14, img_size=518, init_values=1e-5)
    state = dict(model.state_dict())
    state["mask_token"] = torch.zeros(1, 384)
    cache.mkdir(parents=True)
    path = cache / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path


def test_a_named_dinov2_base_is_continued_with_lora_and_saved_merged_in_timm_keys(tmp_path: Path) -> None:
    """`hpt pretrain --base dinov2:vits14 --train lora`, the file found in the cache as a download leaves it."""
    cached = _dinov2_vits14_file(tmp_path / "torch" / "hub" / "checkpoints")
    data = write_npz(tmp_path / "tiny.npz", n_train=32, size=28)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "hpt", "pretrain", "--base", "dinov2:vits14", "--train", "lora",
                          "--data", f"npz:{data}", "--steps", "2", "--batch-size", "8", "--image-size", "28",
                          "--precision", "fp32", "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "target" / "summary.json").read_text())
    assert summary["status"] == "done" and "lora" in summary["trained"]
    saved = load_file(str(tmp_path / "out" / "target" / "backbone.safetensors"))
    base = torch.load(cached, weights_only=True)
    assert sorted(saved) == sorted(k for k in base if k != "mask_token")  # the base's keys: LoRA merged, none added
    changed = {k for k in saved if not torch.equal(saved[k], base[k])}
    assert changed and all(k.endswith((".qkv.weight", ".proj.weight", ".fc1.weight", ".fc2.weight")) for k in changed)


def test_a_dinov2_file_has_a_name_whose_random_weights_are_its_architecture(tmp_path: Path) -> None:
    """So that an experiment's Random and Target rows can start from random weights of a DINOv2 base."""
    from hpt.experiments.family import rebuild_problem

    model, _ = build_backbone(str(_dinov2_vits14_file(tmp_path / "cache")))
    assert arch_of(model) == "vit_small_patch14_518_dinov2"
    assert rebuild_problem(model, arch_of(model)) == ""
    assert rebuild_problem(model, "vit_small_patch14_518") != ""  # without LayerScale: another architecture
