"""hpt.pretrain, evaluate, load_backbone and export: their result objects, and an HptError that names the problem
for bad input (never a SystemExit). `import hpt` stays cheap: the functions are imported at first use."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hpt
from hpt import api
from hpt.api import EvalResult, ExportResult, PretrainResult
from hpt.errors import HptError
from hpt.models import save_backbone

from ..helpers import TINY_STAGE

SHIPPED_BASE = Path(hpt.__file__).parent / "assets" / "base_cifar10_w16.safetensors"
RANDOM = {"arch": "resnet18", "small_stem": True, "width": 8}


def test_import_hpt_is_cheap_and_the_functions_are_at_the_top() -> None:
    code = ("import sys, hpt; assert 'torch' not in sys.modules, 'import hpt imported torch'; "
            "from hpt import compare, evaluate, export, load_backbone, pretrain; import hpt.api as api; "
            "assert (evaluate, compare, export, load_backbone) == (api.evaluate, api.compare, api.export, "
            "api.load_backbone); assert callable(pretrain) and pretrain is hpt.pretrain; import hpt.pretrain.hierarchy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert inspect.signature(hpt.pretrain) == inspect.signature(api.pretrain)
    with pytest.raises(AttributeError, match="no attribute 'pretrian'"):
        hpt.pretrian  # noqa: B018


def test_pretrain_returns_the_run_and_its_stage(tiny_npz: Path, tmp_path: Path) -> None:
    settings = {k: v for k, v in TINY_STAGE.items() if k not in ("moco", "augment", "log_every")}
    result = hpt.pretrain("random", f"npz:{tiny_npz}", 2, out=tmp_path / "run", image_size=16,
                          overrides={"moco.dim": 16, "moco.bn_splits": 2}, **RANDOM, **settings)
    assert isinstance(result, PretrainResult) and result.out_dir == tmp_path / "run"
    assert result.backbone_path == tmp_path / "run" / "target" / "backbone.safetensors"
    assert result.backbone_path.is_file() and result.steps == {"target": 2}
    assert [s.name for s in result.stages] == ["target"] and "target: done" in result.summary()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.out_dir = tmp_path  # type: ignore[misc]
    again = hpt.pretrain("random", f"npz:{tiny_npz}", 2, out=tmp_path / "run", image_size=16,
                         overrides=["moco.dim=16", "moco.bn_splits=2"], **RANDOM, **settings)
    assert again.stages[0].skipped and again.steps == {"target": 2}  # finished earlier: reused
    assert not (tmp_path / "run" / ".hpt.lock").exists()  # the folder is let go


def test_pretrain_errors(tiny_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(HptError, match="no such file or named weights: .*missing.pth"):
        hpt.pretrain(str(tmp_path / "missing.pth"), f"npz:{tiny_npz}", 2, out=tmp_path / "o")
    with pytest.raises(HptError, match="KEY=VALUE items or a mapping"):
        hpt.pretrain("random", f"npz:{tiny_npz}", 2, out=tmp_path / "o", overrides="moco.dim=16")
    with pytest.raises(HptError, match="key.path=value"):
        hpt.pretrain("random", f"npz:{tiny_npz}", 2, out=tmp_path / "o", overrides=["moco.dim"])


def test_evaluate_returns_the_record_it_wrote(tiny_npz: Path, tmp_path: Path) -> None:
    result = hpt.evaluate("random", f"npz:{tiny_npz}", "knn", out=tmp_path / "e", k=3, device="cpu", **RANDOM)
    assert isinstance(result, EvalResult) and result.path == tmp_path / "e" / "results.json"
    record = json.loads(result.path.read_text())
    assert (result.protocol, result.metric, result.score) == ("knn", "top1", record["test"])
    assert [result.low, result.high] == record["interval"] and result.low <= result.score <= result.high
    assert str(result).startswith("knn: test top-1") and result.interval.low == result.low
    assert EvalResult.load(tmp_path / "e") == result
    linear = hpt.evaluate("random", f"npz:{tiny_npz}", steps=10, eval_every=5, device="cpu", **RANDOM)
    assert linear.protocol == "linear" and linear.path is None and linear.record["settings"]["steps"] == 10


def test_evaluate_takes_a_module_and_leaves_it_alone(tiny_npz: Path) -> None:
    model = hpt.load_backbone("random", **RANDOM)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = hpt.evaluate(model, f"npz:{tiny_npz}", "finetune", labels="all", steps=1, batch_size=16, device="cpu")
    assert result.protocol == "finetune-all"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(HptError, match="a module is evaluated as it is"):
        hpt.evaluate(model, f"npz:{tiny_npz}", "knn", arch="resnet50")


def test_evaluate_errors(tiny_npz: Path, tmp_path: Path) -> None:
    data = f"npz:{tiny_npz}"
    with pytest.raises(HptError, match="no such file or named weights: .*nothing.safetensors"):
        hpt.evaluate(str(tmp_path / "nothing.safetensors"), data, "knn")
    with pytest.raises(HptError, match="unknown protocol 'probe'; choose one of: linear, finetune, knn"):
        hpt.evaluate("random", data, "probe")
    with pytest.raises(HptError, match="steps, augmented: not settings of the knn protocol; it takes k, temperature"):
        hpt.evaluate("random", data, "knn", steps=10, augmented=True, k=3)
    with pytest.raises(HptError, match="k: not a setting of the linear protocol"):
        hpt.evaluate("random", data, k=3)
    with pytest.raises(HptError, match="finetune protocol needs labels"):
        hpt.evaluate("random", data, "finetune")
    with pytest.raises(HptError, match="number or 'all'"):
        hpt.evaluate("random", data, "finetune", labels="some", **RANDOM)
    with pytest.raises(HptError, match="no such file|does not exist|not found"):
        hpt.evaluate("random", f"npz:{tmp_path / 'none.npz'}", "knn", **RANDOM)


def test_load_backbone(tmp_path: Path) -> None:
    model = hpt.load_backbone(SHIPPED_BASE)
    assert isinstance(model, torch.nn.Module) and not model.training
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    first = hpt.load_backbone("random", **RANDOM)
    assert torch.equal(torch.rand(3), expected), "load_backbone moved the global random state"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 hpt.load_backbone("random", **RANDOM).state_dict().values()))
    with pytest.raises(HptError, match="no such file or named weights: .*absent.safetensors"):
        hpt.load_backbone(tmp_path / "absent.safetensors")
    with pytest.raises(HptError, match="resnet18.*--arch resnet18"):
        hpt.load_backbone(SHIPPED_BASE, arch="resnet50")


def test_export_writes_a_checked_file(tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_backbone(hpt.load_backbone("random", **RANDOM), path)
    result = hpt.export(path, tmp_path / "tv.pth")
    assert isinstance(result, ExportResult) and (result.path, result.format) == (tmp_path / "tv.pth", "torchvision")
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest() and result.truncate is None
    timm = hpt.export(path, tmp_path / "timm.pth", format="timm")
    assert set(torch.load(timm.path, weights_only=True)) == set(torch.load(result.path, weights_only=True))
    cut = hpt.export(path, tmp_path / "cut.safetensors", format="safetensors", truncate="layer2")
    assert cut.truncate == "layer2" and "truncated after layer2" in str(cut)
    with pytest.raises(HptError, match="unknown export format 'onnx'"):
        hpt.export(path, tmp_path / "x.onnx", format="onnx")
    with pytest.raises(HptError, match="no such file or named weights: .*gone.pth"):
        hpt.export(tmp_path / "gone.pth", tmp_path / "y.pth")
    with pytest.raises(HptError, match="'random' has none"):
        hpt.export("random", tmp_path / "z.pth")
    with pytest.raises(HptError, match="cannot truncate after 'layer4'"):
        hpt.export(path, tmp_path / "w.pth", truncate="layer4")
    assert not [p.name for p in tmp_path.iterdir() if p.name[0] in "xyzw"]  # nothing written on an error
