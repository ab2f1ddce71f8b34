"""Layer rows of every backbone family, the cross-architecture CKA matrix and depth probes beyond ResNets."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hpt.analysis import (
    cka_matrix,
    cross_similarity,
    depth_probe,
    layer_similarity,
    linear_cka,
    similarity,
)
from hpt.analysis.depth import depth_table, truncate_hint
from hpt.analysis.layers import (
    depth_names,
    layer_names,
    pooled_blocks,
    pooled_stages,
    vit_depth_blocks,
)
from hpt.errors import HptError
from hpt.eval import LinearConfig, linear_eval, load_eval_backbone, load_splits
from hpt.models import build_convnext, build_resnet, build_vit, save_backbone

from ..conftest import write_npz
from ..helpers import assert_one_line_error, call

VIT_ROWS = ["embed", "block0", "block1", "pooled"]


def _vit(depth: int = 2, **options: object) -> nn.Module:
    return build_vit(None, embed_dim=32, depth=depth, num_heads=2, patch_size=4, img_size=16, **options)


def _convnext() -> nn.Module:
    return build_convnext(None, depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), patch_size=1)


def _resnet(arch: str = "resnet18") -> nn.Module:
    return build_resnet(arch, small_stem=True, width=8)


def _save(model: nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(model, path)
    return path


def _seeded(build: object, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build()  # type: ignore[operator]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("layers") / "d.npz", n_train=96, size=16)


# ------------------------------------------------------------------ rows of each family


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_vit_rows_are_patch_token_means_in_forward_order(reg_tokens: int) -> None:
    torch.manual_seed(0)
    model = _vit(reg_tokens=reg_tokens).eval()
    x = torch.randn(3, 3, 16, 16)
    prefix = 1 + reg_tokens
    with torch.no_grad():
        rows = pooled_blocks(model, x)
        assert list(rows) == layer_names(model) == VIT_ROWS
        assert all(t.shape == (3, 32) for t in rows.values())
        torch.testing.assert_close(rows["pooled"], model.forward_features(x))
        tokens = model.embed(x)
        torch.testing.assert_close(rows["embed"], tokens[:, prefix:].mean(dim=1))
        tokens = model.blocks[0](tokens)
        torch.testing.assert_close(rows["block0"], tokens[:, prefix:].mean(dim=1))
        for name, value in model.stage_outputs(x).items():
            torch.testing.assert_close(rows[name], value)
        # the class token is excluded: changing it leaves the embedding row as it was, but not the blocks'
        model.cls_token.fill_(5.0)
        moved = pooled_blocks(model, x)
        torch.testing.assert_close(moved["embed"], rows["embed"])
        assert not torch.allclose(moved["block1"], rows["block1"])


def test_convnext_rows_are_pooled_blocks_in_forward_order() -> None:
    torch.manual_seed(0)
    model = _convnext().eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        rows = pooled_blocks(model, x)
        assert list(rows) == layer_names(model) == ["stem", *model.block_names(), "pooled"]
        assert [t.shape[1] for t in rows.values()] == [8, 8, 16, 16, 24, 32, 32]
        torch.testing.assert_close(rows["pooled"], model.forward_features(x))
        maps = model.stage_outputs(x)
        torch.testing.assert_close(rows["stem"], maps["stem"].mean(dim=(2, 3)))
        torch.testing.assert_close(rows["stages.1.blocks.1"], maps["stage1"].mean(dim=(2, 3)))
        # the first block of a stage sees the downsampled map: its row differs from the stage before
        assert rows["stages.1.blocks.0"].shape[1] == 16


def test_depth_rows_per_family() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    assert vit_depth_blocks(12) == [2, 5, 8, 11] and vit_depth_blocks(2) == [0, 1] and vit_depth_blocks(1) == [0]
    assert depth_names(_resnet()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert depth_names(_vit(depth=8)) == ["embed", "block1", "block3", "block5", "block7", "pooled"]
    assert depth_names(_convnext()) == ["stem", "stage0", "stage1", "stage2", "stage3", "pooled"]
    with torch.no_grad():
        vit = _vit(depth=8).eval()
        stages = pooled_stages(vit, x)
        blocks = pooled_blocks(vit, x)
        assert list(stages) == depth_names(vit)
        for name, value in stages.items():  # already pooled: (N, D), the same as the similarity rows
            assert value.shape == (2, 32)
            torch.testing.assert_close(value, blocks[name])
        convnext = _convnext().eval()
        stages = pooled_stages(convnext, x)
        assert list(stages) == depth_names(convnext)
        torch.testing.assert_close(stages["stage3"], pooled_blocks(convnext, x)["stages.3.blocks.0"])
        torch.testing.assert_close(stages["pooled"], convnext.forward_features(x))


# ------------------------------------------------------------------ the matrix estimator


def test_cka_matrix_is_linear_cka_entry_by_entry_and_transposes() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 6))
    xs = [base, rng.normal(size=(30, 40)), base @ rng.normal(size=(6, 9))]
    ys = [rng.normal(size=(30, 5)) + base[:, :5], 2.0 * base + 1.0]
    matrix = cka_matrix(xs, ys)
    assert matrix.shape == (3, 2)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert matrix[i, j] == pytest.approx(linear_cka(x, y), abs=1e-10)
    np.testing.assert_allclose(cka_matrix(ys, xs), matrix.T, atol=1e-12)
    assert matrix[0, 1] == pytest.approx(1.0, abs=1e-10)  # the same representation, scaled and shifted
    assert np.isnan(cka_matrix([np.ones((30, 3))], ys)).all()
    with pytest.raises(HptError, match="same examples"):
        cka_matrix(xs, [rng.normal(size=(29, 5))])


# ------------------------------------------------------------------ similarity of one family


@pytest.mark.parametrize("build", [_vit, _convnext], ids=["vit", "convnext"])
def test_a_backbone_with_itself_has_cka_one_at_every_row(build: object, data: Path, tmp_path: Path) -> None:
    a = _save(_seeded(build, 0), tmp_path / "a" / "backbone.safetensors")
    b = tmp_path / "b" / "backbone.safetensors"
    b.parent.mkdir()
    shutil.copy(a, b)
    backbones = [load_eval_backbone(str(p)) for p in (a, b)]
    record = similarity(backbones, f"npz:{data}", images=40, device="cpu", out_dir=tmp_path / "out")
    assert record["mode"] == "layers"
    assert [row["layer"] for row in record["layers"]] == layer_names(backbones[0].model)
    for row in record["layers"]:
        assert row["cka"][0] == pytest.approx(1.0, abs=1e-5), row


def test_all_pairs_of_one_architecture_has_the_table_on_its_diagonal(data: Path, tmp_path: Path) -> None:
    a, b = (load_eval_backbone(str(_save(_seeded(_vit, s), tmp_path / f"{s}.safetensors"))) for s in (0, 1))
    table = layer_similarity([a, b], f"npz:{data}", images=48, device="cpu")
    matrix = similarity([a, b], f"npz:{data}", all_pairs=True, images=48, device="cpu")
    assert matrix["mode"] == "matrix" and len(matrix["cka"]) == len(table["layers"]) == 4
    diagonal = [matrix["cka"][i][i] for i in range(4)]
    assert diagonal == pytest.approx([row["cka"][0] for row in table["layers"]], abs=1e-6)
    full = np.array(matrix["cka"], dtype=float)
    assert max(diagonal) < 1.0 - 1e-4 and np.abs(full - full.T).max() > 1e-4  # two different models


# ------------------------------------------------------------------ across architectures


def test_vit_against_resnet_matrix_shape_symmetry_and_files(data: Path, tmp_path: Path) -> None:
    vit = load_eval_backbone(str(_save(_seeded(_vit, 0), tmp_path / "vit.safetensors")))
    resnet = load_eval_backbone(str(_save(_seeded(_resnet, 1), tmp_path / "resnet.safetensors")))
    ab = similarity([vit, resnet], f"npz:{data}", images=64, device="cpu", out_dir=tmp_path / "ab")
    ba = cross_similarity(resnet, vit, f"npz:{data}", images=64, device="cpu")
    resnet_rows = layer_names(resnet.model)
    assert ab["mode"] == "matrix" and ab["rows"]["layers"] == VIT_ROWS and ab["columns"]["layers"] == resnet_rows
    matrix = np.array(ab["cka"], dtype=float)
    assert matrix.shape == (4, 10)
    np.testing.assert_allclose(np.array(ba["cka"], dtype=float), matrix.T, atol=1e-9)
    assert ((matrix > 0.0) & (matrix <= 1.0 + 1e-9)).all()
    assert [m["layer"] for m in ab["best_match"]] == VIT_ROWS
    for m, line in zip(ab["best_match"], matrix):
        assert m["match"] == resnet_rows[int(np.argmax(line))] and m["cka"] == pytest.approx(line.max())
    assert ab["summary"].startswith("best match in resnet.safetensors for each layer of vit.safetensors: embed->")
    with (tmp_path / "ab" / "similarity.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["vit.safetensors \\ resnet.safetensors", *resnet_rows]
    assert [r[0] for r in table[1:]] == VIT_ROWS and all(len(r) == 11 for r in table)
    assert float(table[2][3]) == pytest.approx(matrix[1, 2], abs=1e-6)
    on_disk = json.loads((tmp_path / "ab" / "similarity.json").read_text())
    assert on_disk["cka"] == ab["cka"] and on_disk["files"]["png"] == "similarity.png"
    assert (tmp_path / "ab" / "similarity.png").stat().st_size > 0


def test_identical_first_layers_score_one_across_architectures(data: Path) -> None:
    small, deep = _seeded(_resnet, 0), _seeded(lambda: _resnet("resnet34"), 1)
    shared = {k: v for k, v in small.state_dict().items() if k.startswith(("conv1.", "bn1.", "layer1.0."))}
    deep.load_state_dict(shared, strict=False)
    backbones = [load_eval_backbone("random", arch=arch, small_stem=True, width=8) for arch in ("resnet18", "resnet34")]
    backbones[0].model.load_state_dict(small.state_dict())
    backbones[1].model.load_state_dict(deep.state_dict())
    record = similarity(backbones, f"npz:{data}", images=64, device="cpu", labels=["r18", "r34"])
    rows, columns = record["rows"]["layers"], record["columns"]["layers"]
    assert record["mode"] == "matrix" and len(columns) == 2 + 3 + 4 + 6 + 3
    cell = {(r, c): record["cka"][i][j] for i, r in enumerate(rows) for j, c in enumerate(columns)}
    assert cell["stem", "stem"] == pytest.approx(1.0, abs=1e-6)
    assert cell["layer1.0", "layer1.0"] == pytest.approx(1.0, abs=1e-6)
    assert cell["layer4.1", "layer4.2"] < 0.99
    assert record["best_match"][0] == {"layer": "stem", "match": "stem", "cka": pytest.approx(1.0, abs=1e-6)}


def test_more_than_two_of_different_architectures_are_refused(data: Path) -> None:
    backbones = [load_eval_backbone("random", arch="resnet18", small_stem=True, width=8),
                 load_eval_backbone("random", arch="resnet18", small_stem=True, width=8, seed=1),
                 load_eval_backbone("random", arch="resnet18", small_stem=True, width=16)]
    with pytest.raises(HptError, match="exactly two.*width=16"):
        similarity(backbones, f"npz:{data}", images=8, device="cpu", labels=["a", "b", "c"])
    with pytest.raises(HptError, match="--all-pairs.*exactly two"):
        similarity(backbones[:2] + backbones[:1], f"npz:{data}", all_pairs=True, labels=["a", "b", "c"])


# ------------------------------------------------------------------ depth probes beyond ResNets


def test_depth_probe_on_a_tiny_vit(data: Path, tmp_path: Path) -> None:
    backbone = load_eval_backbone(str(_save(_seeded(_vit, 0), tmp_path / "vit.safetensors")))
    splits = load_splits(f"npz:{data}")
    config = LinearConfig(steps=20, eval_every=10, device="cpu", cache_features=False)
    record = depth_probe(backbone, splits, config, out_dir=tmp_path / "d")
    rows = record["rows"]
    assert [r["depth"] for r in rows] == VIT_ROWS and [r["dim"] for r in rows] == [32] * 4
    assert [r["vs_best"] for r in rows].count("best") == 1
    assert rows[-1]["test"] == linear_eval(backbone, splits, config)["test"]  # 'pooled' is hpt eval linear
    assert record["truncate_hint"] is None and "--truncate" not in depth_table(record)
    assert len((tmp_path / "d" / "depth.csv").read_text().splitlines()) == 5


def test_truncate_hint_is_for_resnet_files_only(tmp_path: Path) -> None:
    resnet = load_eval_backbone(str(_save(_resnet(), tmp_path / "r.safetensors")))
    assert truncate_hint(resnet, "layer2") == f"hpt export {resnet.source} --truncate layer2 --out <file>"
    assert truncate_hint(resnet, "layer4") is None and truncate_hint(resnet, "stem") is None
    assert truncate_hint(load_eval_backbone("random", arch="resnet18", small_stem=True, width=8), "layer2") is None
    convnext = load_eval_backbone(str(_save(_convnext(), tmp_path / "c.safetensors")))
    assert truncate_hint(convnext, "stage1") is None


# ------------------------------------------------------------------ CLI


def test_cli_cross_architecture_matrix(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    vit = _save(_seeded(_vit, 0), tmp_path / "vit.safetensors")
    convnext = _save(_seeded(_convnext, 1), tmp_path / "convnext.safetensors")
    code, out, err = call(capsys, "analyze", "similarity", str(vit), str(convnext), "--data", f"npz:{data}",
                          "--images", "32", "--device", "cpu", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert "best match in convnext.safetensors for each layer of vit.safetensors: embed->" in out
    assert "columns: 0=stem, 1=stages.0.blocks.0" in out and "ViT 32-dim" in out
    record = json.loads((tmp_path / "s" / "similarity.json").read_text())
    assert record["mode"] == "matrix" and np.array(record["cka"], dtype=float).shape == (4, 7)
    code, out, err = call(capsys, "analyze", "similarity", str(vit), str(vit), "--all-pairs", "--data",
                          f"npz:{data}", "--images", "32", "--device", "cpu", "--name", "x", "--name", "y",
                          "--out", str(tmp_path / "p"), "--json")
    assert code == 0, err
    matrix = np.array(json.loads(out)["cka"], dtype=float)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-9)


def test_cli_refuses_three_backbones_of_different_architectures(capsys: pytest.CaptureFixture[str], data: Path,
                                                                tmp_path: Path) -> None:
    paths = [_save(build(), tmp_path / f"{name}.safetensors")
             for name, build in (("vit", _vit), ("resnet", _resnet), ("convnext", _convnext))]
    code, _, err = call(capsys, "analyze", "similarity", *map(str, paths), "--data", f"npz:{data}",
                        "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, "exactly two", "vit.safetensors is ViT", "resnet.safetensors is resnet18",
                          "convnext.safetensors is ConvNeXt")
    code, _, err = call(capsys, "analyze", "similarity", str(paths[0]), str(paths[0]), str(paths[0]), "--all-pairs",
                        "--data", f"npz:{data}", "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, "--all-pairs", "got 3")
    assert not (tmp_path / "s").exists()
    code, out, err = call(capsys, "analyze", "depth", str(paths[2]), "--data", f"npz:{data}", "--steps", "5",
                          "--eval-every", "5", "--device", "cpu", "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert "stage3" in out and "pooled" in out and "--truncate" not in out
