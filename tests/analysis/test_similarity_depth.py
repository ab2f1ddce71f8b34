"""`hpt analyze similarity|depth` and `hpt export --truncate`: linear CKA, depth probes, truncated backbones."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hpt.analysis import DEPTHS, depth_probe, layer_similarity, linear_cka
from hpt.analysis.cka import layer_names, pooled_blocks
from hpt.errors import HptError
from hpt.eval import LinearConfig, linear_eval, load_eval_backbone, load_splits
from hpt.models import build_backbone, build_resnet, save_backbone
from hpt.models.truncate import export_truncated, load_truncated

from ..conftest import write_npz
from ..helpers import assert_one_line_error, call

TINY = {"arch": "resnet18", "small_stem": True, "width": 8}
BLOCKS = ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1",
          "pooled"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("analysis") / "d.npz", n_train=96, size=16)


def _saved(path: Path, seed: int, width: int = 8) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(build_resnet("resnet18", small_stem=True, width=width), path)
    return path


def _reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC with the centring matrix H, written independently of linear_cka: tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, lk = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, lk) / np.sqrt(hsic(k, k) * hsic(lk, lk))


# ------------------------------------------------------------------ the CKA function


@pytest.mark.parametrize("n,p", [(40, 12), (10, 30)])  # feature-space and Gram-space paths
def test_cka_invariant_to_orthogonal_transforms_and_isotropic_scaling(n: int, p: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, p))
    z = rng.normal(size=(n, 7)) + 0.5 * x[:, :7]
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    y = 3.7 * x @ q + 5.0  # rotate, scale, shift
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(y, z) == pytest.approx(linear_cka(x, z), abs=1e-10)
    assert linear_cka(z, 0.01 * z @ np.linalg.qr(rng.normal(size=(7, 7)))[0]) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, z) == pytest.approx(_reference_cka(x, z), abs=1e-10)
    assert linear_cka(x, z) == pytest.approx(linear_cka(z, x), abs=1e-12)
    assert 0.0 < linear_cka(x, z) < 1.0
    # not invariant to an anisotropic scaling: CKA is not CCA
    stretched = x * np.linspace(0.1, 10.0, p)
    assert linear_cka(x, stretched) < 0.99


def test_cka_input_errors_and_constant_features() -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(HptError, match="same examples"):
        linear_cka(rng.normal(size=(5, 3)), rng.normal(size=(6, 3)))
    assert np.isnan(linear_cka(np.ones((5, 3)), rng.normal(size=(5, 3))))
    assert linear_cka(torch.randn(8, 4), torch.randn(8, 4)) <= 1.0


# ------------------------------------------------------------------ layer similarity


def test_pooled_blocks_follow_the_forward_pass() -> None:
    torch.manual_seed(0)
    model = build_resnet(**TINY).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        blocks = pooled_blocks(model, x)
        assert list(blocks) == layer_names(model) == BLOCKS
        torch.testing.assert_close(blocks["pooled"], model(x))
        torch.testing.assert_close(blocks["layer2.1"], model.avgpool(model.stage_outputs(x)["layer2"]).flatten(1))


def test_a_model_with_itself_has_cka_one_at_every_layer(data: Path, tmp_path: Path) -> None:
    a = _saved(tmp_path / "a" / "backbone.safetensors", seed=0)
    b = tmp_path / "b" / "backbone.safetensors"
    b.parent.mkdir()
    shutil.copy(a, b)
    backbones = [load_eval_backbone(str(p)) for p in (a, b)]
    record = layer_similarity(backbones, f"npz:{data}", images=48, device="cpu", out_dir=tmp_path / "out")
    assert [row["layer"] for row in record["layers"]] == BLOCKS
    for row in record["layers"]:
        assert row["cka"][0] == pytest.approx(1.0, abs=1e-5), row
    assert [m["label"] for m in record["models"]] == ["a/backbone.safetensors", "b/backbone.safetensors"]
    assert record["images"] == 48 and "biased" in record["warnings"][0]  # 48 images for 64-channel layers
    on_disk = json.loads((tmp_path / "out" / "similarity.json").read_text())
    assert on_disk["layers"] == record["layers"]
    assert (tmp_path / "out" / "similarity.png").stat().st_size > 0


def test_differently_seeded_random_models_differ_in_deep_layers(data: Path, tmp_path: Path) -> None:
    backbones = [load_eval_backbone("random", **TINY, seed=s) for s in (0, 1, 0)]
    record = layer_similarity(backbones, f"npz:{data}", images=96, device="cpu", out_dir=tmp_path)
    assert [p["index"] for p in record["pairs"]] == [[0, 1], [0, 2], [1, 2]]
    by_layer = {row["layer"]: row["cka"] for row in record["layers"]}
    for layer in ("layer3.1", "layer4.0", "layer4.1", "pooled"):
        differ, same, differ2 = by_layer[layer]
        assert differ < 0.9 and differ2 < 0.9, (layer, by_layer[layer])
        assert same == pytest.approx(1.0, abs=1e-5)
    with (tmp_path / "similarity.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["layer", "channels"] and len(rows[0]) == 5 and len(rows) == 1 + len(BLOCKS)


def test_similarity_refuses_backbones_of_different_architectures(data: Path, tmp_path: Path) -> None:
    backbones = [load_eval_backbone("random", **TINY), load_eval_backbone("random", **{**TINY, "width": 16})]
    with pytest.raises(HptError, match="width=8.*width=16"):
        layer_similarity(backbones, f"npz:{data}", images=8, device="cpu")


# ------------------------------------------------------------------ depth probe


def test_depth_probe_one_row_per_depth_with_intervals(data: Path, tmp_path: Path) -> None:
    backbone = load_eval_backbone("random", **TINY, seed=0)
    splits = load_splits(f"npz:{data}")
    config = LinearConfig(steps=20, eval_every=10, device="cpu", cache_features=False)
    record = depth_probe(backbone, splits, config, out_dir=tmp_path)
    rows = record["rows"]
    assert [r["depth"] for r in rows] == list(DEPTHS)
    assert [r["dim"] for r in rows] == [8, 8, 16, 32, 64]
    for r in rows:
        low, high = r["interval"]
        assert low <= r["test"] <= high and 0.0 <= low <= high <= 1.0, r
    assert [r["vs_best"] for r in rows].count("best") == 1
    best = max(rows, key=lambda r: r["test"])
    assert record["best"]["depth"] == best["depth"]
    assert set(record["shallower_within_noise"]) <= set(DEPTHS[:DEPTHS.index(best["depth"])])
    # the layer4 row is `hpt eval linear` itself
    assert rows[-1]["test"] == linear_eval(backbone, splits, config)["test"]
    assert json.loads((tmp_path / "depth.json").read_text())["rows"][0]["depth"] == "stem"
    assert (tmp_path / "depth.png").stat().st_size > 0 and len((tmp_path / "depth.csv").read_text().splitlines()) == 6


# ------------------------------------------------------------------ truncated export


@pytest.mark.parametrize("after,fmt", [("layer1", "torchvision"), ("layer3", "safetensors")])
def test_truncated_export_key_set(tmp_path: Path, after: str, fmt: str) -> None:
    source = _saved(tmp_path / "full.safetensors", seed=3)
    full, _ = build_backbone(str(source))
    out = export_truncated(source, tmp_path / f"t.{fmt}", fmt, after)
    if fmt == "torchvision":
        state = torch.load(out, weights_only=True)
    else:
        with safe_open(str(out), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            assert f.metadata()["truncated_after"] == after
    k = int(after[-1])
    kept = ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, k + 1)))
    expected = {key for key in full.state_dict() if key.startswith(kept)}
    assert set(state) == expected
    assert f"layer{k}.1.bn2.running_mean" in state and not any(key.startswith(f"layer{k + 1}.") for key in state)
    assert all(torch.equal(state[key], full.state_dict()[key]) for key in state)
    # the clear path: load_truncated pools layerK; the other path (build_backbone) says it is truncated
    model = load_truncated(out).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model.avgpool(full.eval().stage_outputs(x)[after]).flatten(1)
        torch.testing.assert_close(model.forward_features(x), expected)
    assert model.feature_dim == 8 * 2 ** (k - 1) and model.truncated_after == after
    with pytest.raises(HptError, match=f"stops after {after}.*truncate"):
        build_backbone(str(out))


# ------------------------------------------------------------------ CLI


def test_cli_similarity_and_depth(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    a, b = _saved(tmp_path / "a.safetensors", 0), _saved(tmp_path / "b.safetensors", 1)
    code, out, err = call(capsys, "analyze", "similarity", str(a), str(b), "--data", f"npz:{data}", "--images", "32",
                          "--device", "cpu", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert "layer4.1" in out and "1~2" in out and (tmp_path / "s" / "similarity.csv").exists()
    code, out, err = call(capsys, "analyze", "depth", str(a), "--data", f"npz:{data}", "--steps", "5",
                          "--eval-every", "5", "--device", "cpu", "--out", str(tmp_path / "d"), "--json")
    assert code == 0, err
    assert [r["depth"] for r in json.loads(out)["rows"]] == list(DEPTHS)


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    a, wide = _saved(tmp_path / "a.safetensors", 0), _saved(tmp_path / "wide.safetensors", 0, width=16)
    b = _saved(tmp_path / "b.safetensors", 1)
    # two of different widths get the full matrix (tests/analysis/test_layers.py); three are refused
    code, _, err = call(capsys, "analyze", "similarity", str(a), str(wide), str(b), "--data", f"npz:{data}",
                        "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, "a.safetensors", "wide.safetensors", "width=8", "width=16", "exactly two")
    code, _, err = call(capsys, "analyze", "similarity", str(a), str(tmp_path / "nope.pth"), "--data",
                        f"npz:{data}", "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, "nope.pth")
    code, _, err = call(capsys, "analyze", "similarity", str(a), "--data", f"npz:{data}")
    assert_one_line_error(code, err, "at least two")
    code, _, err = call(capsys, "analyze", "depth", str(tmp_path / "nope.pth"), "--data", f"npz:{data}",
                        "--out", str(tmp_path / "d"))
    assert_one_line_error(code, err, "nope.pth")
    code, _, err = call(capsys, "export", str(a), "--truncate", "layer2", "--format", "moco", "--out",
                        str(tmp_path / "t.pth"))
    assert_one_line_error(code, err, "--truncate", "moco")
    code, out, err = call(capsys, "export", str(a), "--truncate", "layer2", "--out", str(tmp_path / "t.pth"))
    assert code == 0 and "truncated after layer2" in out, err
    code, _, err = call(capsys, "analyze", "depth", str(tmp_path / "t.pth"), "--data", f"npz:{data}")
    assert_one_line_error(code, err, "stops after layer2")
    assert not (tmp_path / "s").exists()  # nothing written for a refused command
