"""Bad input gets one clear line on stderr and exit code 2, no traceback; good input works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hpt.models import build_resnet, save_backbone

from ..conftest import write_npz
from ..helpers import assert_one_line_error, call, write_hierarchy

TINY = ["--arch", "resnet18", "--small-stem", "--width", "8", "--batch-size", "16", "--device", "cpu",
        "--workers", "0"]


def test_missing_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tmp_path}/nope.npz",
                        "--steps", "2", "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "nope.npz")


def test_missing_base_checkpoint(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    code, _, err = call(capsys, "pretrain", "--base", str(tmp_path / "missing.pth"), "--data", f"npz:{tiny_npz}",
                        "--steps", "2", "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "missing.pth")


def test_checkpoint_of_another_architecture(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                            tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), path)
    code, _, err = call(capsys, "pretrain", "--base", str(path), "--data", f"npz:{tiny_npz}", "--steps", "2",
                        "--arch", "resnet50", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "resnet18", "resnet50")


def test_steps_must_be_positive(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "0",
                        "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "steps must be > 0")


def test_data_smaller_than_one_batch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small = write_npz(tmp_path / "small.npz", n_train=8)
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{small}", "--steps", "2",
                        "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "8 images", "16")


def test_wrong_npz_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.savez(tmp_path / "odd.npz", x=np.zeros((4, 8, 8), np.uint8))
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tmp_path / 'odd.npz'}",
                        "--steps", "2", "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "train_images", "x")


def test_label_count_mismatch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((40, 8, 8), np.uint8), train_labels=np.zeros(39, np.int64))
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tmp_path / 'bad.npz'}",
                        "--steps", "2", "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "40", "39")


def test_misspelled_config_key(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "stpes": 2}])
    code, _, err = call(capsys, "run", str(config), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "stpes", "steps")


def test_misspelled_nested_key_and_bad_override(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                                tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 2}])
    code, _, err = call(capsys, "run", str(config), "stages.t.moco.temprature=0.1", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "temprature", "temperature")
    code, _, err = call(capsys, "run", str(tmp_path / "absent.yaml"))
    assert_one_line_error(code, err, "absent.yaml")


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = call(capsys, "--debug", "run", str(tmp_path / "absent.yaml"))
    assert code == 2 and "Traceback" in err


def test_failed_rerun_never_touches_a_finished_stage(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                                     tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 2}])
    code, out, err = call(capsys, "run", str(config), "--out", str(tmp_path / "o"))
    assert code == 0, err
    backbone = tmp_path / "o" / "t" / "backbone.safetensors"
    before = backbone.read_bytes()
    code, _, err = call(capsys, "run", str(config), "stages.t.steps=3", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "other settings", "steps: 2 -> 3")
    assert backbone.read_bytes() == before


def test_inspect_and_export(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "2",
                        "--out", str(tmp_path / "o"), *TINY)
    assert code == 0, err
    backbone = tmp_path / "o" / "target" / "backbone.safetensors"
    code, out, _ = call(capsys, "inspect", str(backbone))
    assert code == 0 and "resnet18" in out and "width=8" in out
    code, out, err = call(capsys, "export", str(backbone), "--format", "torchvision", "--out", str(tmp_path / "r.pth"))
    assert code == 0, err
    state = torch.load(tmp_path / "r.pth", weights_only=True)
    model = build_resnet("resnet18", small_stem=True, width=8, num_classes=10)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    code, out, _ = call(capsys, "pretrain", "--base", str(tmp_path / "r.pth"), "--data", f"npz:{tiny_npz}",
                        "--steps", "2", "--out", str(tmp_path / "o2"), "--batch-size", "16", "--device", "cpu")
    assert code == 0 and "done" in out


def _image_folder(root: Path, n: int = 20, size: int = 16) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


def test_corrupt_image_files_are_listed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs")
    (folder / "broken.png").write_bytes(b"not an image at all")
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"folder:{folder}", "--steps", "2",
                        "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "broken.png", "skip_corrupt")


def test_truncated_image_in_a_worker_gives_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs", n=16)
    data = (folder / "img03.png").read_bytes()
    (folder / "img03.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    argv = list(TINY)
    argv[argv.index("--workers") + 1] = "1"
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"folder:{folder}", "--steps", "2",
                        "--out", str(tmp_path / "o"), *argv)
    assert_one_line_error(code, err, "img03.png")
    assert "Original Traceback" not in err


def test_mixed_image_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs")
    from PIL import Image

    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "odd.png")
    code, _, err = call(capsys, "pretrain", "--base", "random", "--data", f"folder:{folder}", "--steps", "2",
                        "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "odd.png")


def test_error_raised_in_a_loader_worker_is_cut_to_its_message() -> None:
    from hpt.cli.app import _one_line
    from hpt.errors import HptError

    wrapped = HptError("Caught HptError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                       '  File "x.py", line 1, in f\n    raise HptError(...)\nhpt.errors.HptError: cannot decode a.png\n')
    assert _one_line(wrapped) == "cannot decode a.png"
    assert _one_line(HptError("plain message")) == "plain message"


def test_pretrain_head_warmup_runs_and_a_bad_value_is_one_line(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                                                tmp_path: Path) -> None:
    code, out, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "3",
                          "--out", str(tmp_path / "o"), *TINY, "--head-warmup-steps", "2")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "target" / "summary.json").read_text())
    assert summary["config"]["head_warmup_steps"] == 2
    code, out, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "3",
                          "--out", str(tmp_path / "w"), *TINY, "--lr-warmup-steps", "2")
    assert code == 0, err
    assert json.loads((tmp_path / "w" / "target" / "summary.json").read_text())["config"]["lr_warmup_steps"] == 2
    code, out, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "3",
                          "--out", str(tmp_path / "p"), *TINY, "--head-warmup-steps", "3")
    assert code != 0 and "head_warmup_steps must be >= 0 and below steps (3)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pretrain_set_reaches_nested_settings_and_a_misspelled_one_is_one_line(
        capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    code, out, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "2",
                          "--out", str(tmp_path / "o"), *TINY, "--set", "moco.temperature=0.1",
                          "--set", "moco.head_bn=true", "--set", "augment.crop_scale=[0.5,1.0]", "--set", "lr=0.05")
    assert code == 0, err
    config = json.loads((tmp_path / "o" / "target" / "summary.json").read_text())["config"]
    assert config["moco"]["temperature"] == 0.1 and config["moco"]["head_bn"] is True
    assert config["augment"]["crop_scale"] == [0.5, 1.0] and config["lr"] == 0.05
    code, out, err = call(capsys, "pretrain", "--base", "random", "--data", f"npz:{tiny_npz}", "--steps", "2",
                          "--out", str(tmp_path / "p"), *TINY, "--set", "moco.temprature=0.1")
    assert_one_line_error(code, err, "temprature", "temperature")
