"""`hpt eval ...`: results on stdout (--json), and one clear line with exit code 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpt.eval.paired import unpack_outcomes
from hpt.models import build_resnet, save_backbone

from ..conftest import write_npz
from ..eval.test_protocols import _separable_npz
from ..helpers import assert_one_line_error, call

RANDOM = ["--backbone", "random", "--arch", "resnet18", "--small-stem", "--width", "8", "--device", "cpu"]


def test_linear_json_record(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    code, out, err = call(capsys, "eval", "linear", *RANDOM, "--data", f"npz:{tiny_npz}", "--steps", "20",
                          "--eval-every", "10", "--out", str(tmp_path / "e"), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["protocol"] == "linear" and record["settings"]["steps"] == 20
    assert json.loads((tmp_path / "e" / "results.json").read_text())["test"] == record["test"]
    # the score is the test value of the curve at the step with the best val score, and the share of right images
    rows = (tmp_path / "e" / "curve.csv").read_text().splitlines()[1:]
    points = [(int(step), float(val), float(test)) for _, step, _, val, test in (r.split(",") for r in rows)]
    best = max(points, key=lambda point: (point[1], -point[0]))
    assert [step for step, _, _ in points] == [10, 20] and record["test"] == pytest.approx(best[2])
    assert record["test"] == unpack_outcomes(record["test_correct"][0], 16).mean()


def test_knn_prints_a_headline_with_its_interval(capsys: pytest.CaptureFixture[str], tiny_npz: Path) -> None:
    code, out, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{tiny_npz}", "--k", "3")
    assert code == 0, err
    assert "knn: test top-1" in out and "95% CI" in out and "16 test images" in out
    separable = _separable_npz(tiny_npz.parent / "separable.npz")  # each class lights its own quadrant
    code, out, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{separable}")
    assert code == 0, err
    assert "knn: test top-1 100.00% [95% CI 100.00-100.00] on 200 test images" in out
    assert "Published" not in err  # not a known public set


def test_a_known_public_set_prints_its_published_reference(capsys: pytest.CaptureFixture[str], tiny_npz: Path) -> None:
    known = tiny_npz.parent / "pneumoniamnist_28.npz"
    known.write_bytes(tiny_npz.read_bytes())
    code, out, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{known}", "--k", "3")
    assert code == 0, err
    assert "knn: test top-1" in out and "Published" not in out  # stdout keeps the one result line
    assert ("Published supervised reference, not comparable protocol: ResNet-18 at 28 px on PneumoniaMNIST, "
            "trained end to end on every training label: ACC 85.4, AUC 94.4") in err


def test_finetune_with_all_labels(capsys: pytest.CaptureFixture[str], tiny_npz: Path) -> None:
    code, out, err = call(capsys, "eval", "finetune", *RANDOM, "--data", f"npz:{tiny_npz}", "--labels", "all",
                          "--steps", "1", "--batch-size", "16", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["protocol"] == "finetune-all" and record["settings"]["labels_used"] == 64
    assert record["test"] == unpack_outcomes(record["test_correct"][0], 16).mean()
    assert record["interval"][0] <= record["test"] <= record["interval"][1]


def test_backbone_that_cannot_be_loaded(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    code, _, err = call(capsys, "eval", "linear", "--backbone", str(bad), "--data", f"npz:{tiny_npz}")
    assert_one_line_error(code, err, "bad.pth")


def test_backbone_of_another_architecture(capsys: pytest.CaptureFixture[str], tiny_npz: Path, tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), path)
    code, _, err = call(capsys, "eval", "knn", "--backbone", str(path), "--arch", "resnet34", "--data",
                        f"npz:{tiny_npz}")
    assert_one_line_error(code, err, "resnet18", "resnet34")


def test_data_without_labels(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", train_images=np.zeros((20, 8, 8), np.uint8))
    code, _, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{tmp_path / 'u.npz'}")
    assert_one_line_error(code, err, "no labels")


def test_labels_differing_between_splits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    with np.load(path) as arrays:
        data = {k: arrays[k] for k in arrays.files}
    data["val_labels"] = np.full_like(data["val_labels"], 7)
    np.savez(path, **data)
    code, _, err = call(capsys, "eval", "linear", *RANDOM, "--data", f"npz:{path}")
    assert_one_line_error(code, err, "val", "never occur in train")


def test_more_labels_than_training_images(capsys: pytest.CaptureFixture[str], tiny_npz: Path) -> None:
    code, _, err = call(capsys, "eval", "finetune", *RANDOM, "--data", f"npz:{tiny_npz}", "--labels", "1000")
    assert_one_line_error(code, err, "1000", "64")


def test_fewer_labels_than_classes(capsys: pytest.CaptureFixture[str], tiny_npz: Path) -> None:
    code, _, err = call(capsys, "eval", "finetune", *RANDOM, "--data", f"npz:{tiny_npz}", "--labels", "2")
    assert_one_line_error(code, err, "fewer than the 4 classes")


def test_labels_not_a_number(capsys: pytest.CaptureFixture[str], tiny_npz: Path) -> None:
    code, _, err = call(capsys, "eval", "finetune", *RANDOM, "--data", f"npz:{tiny_npz}", "--labels", "many")
    assert code == 2 and "--labels" in err
