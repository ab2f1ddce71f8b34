"""DICOM and 4-channel 16-bit TIFF data through the command line: pretrain from random and from a 3-channel base
(its stem adapted), then the linear protocol on the saved backbone, which reloads with its channel count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from hpt.models import build_resnet, save_backbone

from ..helpers import call

pytest.importorskip("pydicom")
pytest.importorskip("tifffile")

TINY = ["--batch-size", "8", "--device", "cpu", "--workers", "0", "--image-size", "8", "--checkpoint-every", "2",
        "--set", "moco.dim=16", "--set", "moco.bn_splits=2", "--steps", "2"]
RANDOM = ["--base", "random", "--arch", "resnet18", "--small-stem", "--width", "8"]
LINEAR = ["--device", "cpu", "--steps", "10", "--eval-every", "5", "--batch-size", "16", "--json"]


@pytest.fixture(scope="module")
def rgb_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "rgb.safetensors"
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), path)
    return path


def _pretrain_and_eval(capsys: pytest.CaptureFixture[str], data: str, base: list[str], out: Path,
                       channels: int) -> dict:
    code, _, err = call(capsys, "pretrain", *base, "--data", data, "--out", str(out), *TINY)
    assert code == 0, err
    saved = out / "target" / "backbone.safetensors"
    with safe_open(str(saved), framework="pt") as f:
        assert f.metadata()["in_chans"] == str(channels)
        assert tuple(f.get_slice("conv1.weight").get_shape()) == (8, channels, 3, 3)
    code, stdout, err = call(capsys, "eval", "linear", "--backbone", str(saved), "--data", data, *LINEAR)
    assert code == 0, err
    return json.loads(stdout)


def test_dicom_folder_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path, rgb_base: Path) -> None:
    from .test_dicom import write_dicom_tree

    data = f"dicom:{write_dicom_tree(tmp_path / 'ct', {'a': 10, 'b': 10})}?window=40,400"
    for name, base in (("random", RANDOM), ("base", ["--base", str(rgb_base)])):
        record = _pretrain_and_eval(capsys, data, base, tmp_path / name, channels=3)  # gray: expanded to RGB
        assert record["protocol"] == "linear" and 0.0 <= record["test"] <= 1.0


def test_four_channel_tiff_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path, rgb_base: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from .test_tiff import write_tiff_tree

    data = f"folder:{write_tiff_tree(tmp_path / 'cells', {'a': 10, 'b': 10})}"
    with caplog.at_level("INFO", logger="hpt"):
        for name, base in (("random", RANDOM), ("base", ["--base", str(rgb_base)])):
            record = _pretrain_and_eval(capsys, data, base, tmp_path / name, channels=4)
            assert record["protocol"] == "linear" and 0.0 <= record["test"] <= 1.0
    assert "adapted from 3 to 4 input channels" in caplog.text
    # the same command again on the finished 4-channel stage: it is found finished and the backbone is left as it is
    saved = tmp_path / "base" / "target" / "backbone.safetensors"
    before = saved.read_bytes()
    code, _, err = call(capsys, "pretrain", "--base", str(rgb_base), "--data", data, "--out", str(tmp_path / "base"),
                        *TINY)
    assert code == 0, err
    assert saved.read_bytes() == before
    # the 3-channel base itself is evaluated on the 4-channel data through the same stem rule
    code, stdout, err = call(capsys, "eval", "linear", "--backbone", str(rgb_base), "--data", data, *LINEAR)
    assert code == 0, err
    assert json.loads(stdout)["protocol"] == "linear"
