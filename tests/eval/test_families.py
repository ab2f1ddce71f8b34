"""Evaluation of ViT and ConvNeXt backbones: every protocol (linear, kNN, fine-tuning) from a saved file, the CLI,
image sizes (a ViT at any multiple of its patch, one clear error otherwise; a ConvNeXt's least size), the
inference copy (folds BatchNorm for ResNets only) and rank-sources on pooled ViT features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hpt.analysis.sources import rank_sources
from hpt.errors import HptError
from hpt.eval import (
    FinetuneConfig,
    KnnConfig,
    LinearConfig,
    finetune_eval,
    knn_eval,
    linear_eval,
    load_eval_backbone,
    load_splits,
)
from hpt.eval.features import eval_transform, extract_features, snapshot
from hpt.eval.splits import SplitView
from hpt.models import (
    ConvNeXt,
    VisionTransformer,
    build_convnext,
    build_random,
    build_vit,
    save_backbone,
)
from hpt.models.families import arch_of, describe
from hpt.models.inference import inference_copy

from ..conftest import write_npz
from ..helpers import assert_one_line_error, call


def tiny_vit() -> VisionTransformer:
    """32-dim, 2 blocks, patch 4, built for 16 px."""
    return build_vit(None, embed_dim=32, depth=2, num_heads=2, patch_size=4, img_size=16)


def tiny_convnext() -> ConvNeXt:
    """convnext_atto with a patch-2 stem: runs at 32 px and more."""
    return build_convnext("convnext_atto", patch_size=2)


#: family -> (builder, the side of its tiny data)
FAMILIES = {"vit": (tiny_vit, 16), "convnext": (tiny_convnext, 32)}


@pytest.fixture(params=sorted(FAMILIES))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, nn.Module]:
    """(backbone file, data file, the model saved) for each family."""
    build, size = FAMILIES[request.param]
    torch.manual_seed(0)
    model = build()
    path = tmp_path / f"{request.param}.safetensors"
    save_backbone(model, path)
    data = write_npz(tmp_path / f"data{size}.npz", n_train=32, n_val=8, n_test=8, size=size)
    return path, data, model


def test_every_protocol_runs_on_a_saved_vit_and_convnext(saved: tuple[Path, Path, nn.Module],
                                                         tmp_path: Path) -> None:
    path, data, model = saved
    backbone = load_eval_backbone(str(path))
    assert type(backbone.model) is type(model) and backbone.format == "safetensors"
    splits = load_splits(f"npz:{data}")
    before = snapshot(backbone.model)
    records = {
        "linear": linear_eval(backbone, splits, LinearConfig(steps=4, eval_every=2, device="cpu"), tmp_path / "linear"),
        "knn": knn_eval(backbone, splits, KnnConfig(k=3, device="cpu"), tmp_path / "knn"),
        "finetune": finetune_eval(backbone, splits, FinetuneConfig(labels=8, steps=2, batch_size=8, eval_every=1,
                                                                   device="cpu"), tmp_path / "finetune"),
    }
    for name, record in records.items():
        assert 0.0 <= record["test"] <= 1.0, name
        assert record["backbone"]["arch"] == arch_of(model) and record["backbone"]["architecture"] == describe(model)
        assert "width" not in record["backbone"] and "small_stem" not in record["backbone"]
        assert json.loads((tmp_path / name / "results.json").read_text())["protocol"].startswith(name[:3])
    after = backbone.model.state_dict()  # fine-tuning trained a copy: the evaluated backbone is unchanged
    assert all(torch.equal(value, after[key]) for key, value in before.items())


def test_a_vit_runs_at_any_multiple_of_its_patch_and_refuses_others_with_one_error(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "d.npz", n_train=16, n_val=8, n_test=8, size=16)
    splits = load_splits(f"npz:{data}")
    model = tiny_vit().eval()
    view = SplitView(splits.train.dataset, np.arange(4))
    at = {size: extract_features(model, view, eval_transform(splits, size, model), torch.device("cpu"))
          for size in (16, 24)}
    assert at[16].shape == at[24].shape == (4, 32)  # 24 px: 6x6 patches, the 4x4 position embeddings resampled
    assert not np.allclose(at[16], at[24])
    with pytest.raises(HptError, match=r"18 px \(--image-size.*patch size 4; use 16 or 20 px") as err:
        eval_transform(splits, 18, model)
    assert "\n" not in str(err.value)
    odd = load_splits(f"npz:{write_npz(tmp_path / 'odd.npz', n_train=16, n_val=8, n_test=8, size=14)}")
    with pytest.raises(HptError, match=r"14 px \(the data's own size; set --image-size\).*use 12 or 16 px"):
        linear_eval(load_eval_backbone("random", arch="vit_tiny_patch4_16"), odd, LinearConfig(steps=1))


def test_a_convnext_below_its_least_image_size_is_a_clear_error(tmp_path: Path) -> None:
    splits = load_splits(f"npz:{write_npz(tmp_path / 'd.npz', n_train=16, n_val=8, n_test=8, size=16)}")
    backbone = load_eval_backbone("random", arch="convnext_atto_patch2")
    with pytest.raises(HptError, match="16 px is too small for convnext_atto_patch2.*at least 32 px"):
        knn_eval(backbone, splits, KnnConfig(device="cpu"))
    record = knn_eval(backbone, splits, KnnConfig(k=3, device="cpu", image_size=32))
    assert record["settings"]["image_size_used"] == 32


def test_the_eval_cli_takes_vit_files_and_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_npz(tmp_path / "d.npz", n_train=16, n_val=8, n_test=8, size=16)
    path = tmp_path / "vit.safetensors"
    save_backbone(tiny_vit(), path)
    code, out, err = call(capsys, "eval", "linear", "--backbone", str(path), "--data", f"npz:{data}", "--steps", "2",
                          "--eval-every", "1", "--device", "cpu", "--image-size", "24", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["settings"]["image_size_used"] == 24 and record["backbone"]["arch"] == "vit_custom_patch4_16"
    code, _, err = call(capsys, "eval", "knn", "--backbone", str(path), "--data", f"npz:{data}", "--device", "cpu",
                        "--image-size", "18")
    assert_one_line_error(code, err, "18 px", "patch size 4", "--image-size")
    code, out, err = call(capsys, "eval", "finetune", "--backbone", "random", "--arch", "convnext_atto_patch2",
                          "--data", f"npz:{data}", "--labels", "8", "--steps", "1", "--batch-size", "8",
                          "--device", "cpu", "--image-size", "32", "--json")
    assert code == 0, err
    assert json.loads(out)["backbone"]["arch"] == "convnext_atto_patch2"


def test_the_inference_copy_folds_batchnorm_of_resnets_only_and_changes_no_output() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    resnet = build_random("resnet18", small_stem=True, width=8).eval()
    fused = inference_copy(resnet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), resnet(x),
                               rtol=1e-4, atol=1e-4)
    for model in (tiny_vit().eval(), tiny_convnext().eval()):
        copy = inference_copy(model)
        assert copy is not model and [type(m) for m in copy.modules()] == [type(m) for m in model.modules()]
        torch.testing.assert_close(copy(x.contiguous(memory_format=torch.channels_last)), model(x))
        weight = copy.patch_embed.proj.weight if isinstance(copy, VisionTransformer) else copy.stem[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == isinstance(copy, ConvNeXt)


def test_rank_sources_on_pooled_vit_features(tmp_path: Path) -> None:
    target = write_npz(tmp_path / "target.npz", n_train=24, size=16, seed=1)
    near = write_npz(tmp_path / "near.npz", n_train=24, size=16, seed=2)
    far = tmp_path / "far.npz"
    stripes = np.zeros((24, 16, 16, 3), np.uint8)
    stripes[:, ::2] = np.random.default_rng(0).integers(128, 256, size=(24, 1, 16, 3))  # nothing like the target
    np.savez(far, train_images=stripes, train_labels=np.zeros(24, np.int64))
    path = tmp_path / "vit.safetensors"
    save_backbone(tiny_vit(), path)
    backbone = load_eval_backbone(str(path))
    ranking = rank_sources(backbone, f"npz:{target}", [f"npz:{far}", f"npz:{near}"], base_data=f"npz:{near}",
                           images=24)
    assert [Path(s.source.split(":", 1)[1]).name for s in ranking.scores] == ["near.npz", "far.npz"]
    assert all(np.isfinite(s.frechet) and np.isfinite(s.mmd2) for s in ranking.scores)
    assert ranking.base_domain is not None and np.isfinite(ranking.base_domain["ratio"])
    with pytest.raises(HptError, match="cannot compare features at 18 px: .*patch size 4"):
        rank_sources(backbone, f"npz:{target}", [f"npz:{near}"], images=8, image_size=18)
