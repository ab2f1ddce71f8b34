"""Evaluation data that cannot measure anything: a split holding one class (every prediction of it is right, so
accuracy reads 100%), and multi-label splits in which no class has both positive and negative images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hpt.errors import HptError
from hpt.eval.metrics import mean_auroc
from hpt.eval.splits import load_splits

from ..conftest import write_npz
from ..helpers import assert_one_line_error, call

RANDOM = ["--backbone", "random", "--arch", "resnet18", "--small-stem", "--width", "8", "--device", "cpu"]


def _edited(source: Path, target: Path, **changes: np.ndarray) -> Path:
    arrays = dict(np.load(source))
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(target, **arrays)
    return target


def _multilabel_npz(path: Path, n: int = 24, classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.zeros((n, classes), np.int64)
        labels[np.arange(n), np.arange(n) % classes] = 1  # every class present in some images, absent in others
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 16, 16, 3)).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_single_class_data_is_refused_by_every_protocol(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_npz(tmp_path / "one.npz", classes=1)
    for protocol, extra in (("knn", ["--k", "3"]), ("linear", ["--steps", "2"]),
                            ("finetune", ["--labels", "all", "--steps", "1"])):
        code, out, err = call(capsys, "eval", protocol, *RANDOM, "--data", f"npz:{path}", *extra)
        assert_one_line_error(code, err, "the train split of", "single class", "at least two classes")
        assert "100.00%" not in out


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_val_or_test_split_of_one_class_is_refused_and_named(capsys: pytest.CaptureFixture[str], tiny_npz: Path,
                                                                tmp_path: Path, split: str) -> None:
    labels = np.full(16, 2, np.int64)  # train has classes 0..3: only this split is degenerate
    path = _edited(tiny_npz, tmp_path / "d.npz", **{f"{split}_labels": labels})
    code, _, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{path}", "--k", "3")
    assert_one_line_error(code, err, f"the {split} split of", "single class (2)")


def test_carving_that_leaves_a_split_one_class_says_so(tiny_npz: Path, tmp_path: Path) -> None:
    labels = np.zeros(64, np.int64)
    labels[:2] = 1  # the two images of class 1 go to the carved val and test: train keeps class 0 only
    path = _edited(tiny_npz, tmp_path / "d.npz", train_labels=labels, val_images=None, val_labels=None,
                   test_images=None, test_labels=None)
    with pytest.raises(HptError, match=r"the train split of .* single class \(0\).*carved from train here"):
        load_splits(f"npz:{path}")


def test_two_classes_in_every_split_are_enough(tiny_npz: Path, tmp_path: Path) -> None:
    labels = {f"{s}_labels": np.arange(n) % 2 for s, n in (("train", 64), ("val", 16), ("test", 16))}
    splits = load_splits(f"npz:{_edited(tiny_npz, tmp_path / 'd.npz', **labels)}")
    assert [len(np.unique(getattr(splits, s).labels)) for s in ("train", "val", "test")] == [2, 2, 2]


def test_multilabel_class_one_valued_in_test_is_left_out_and_named(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    path = _multilabel_npz(tmp_path / "ml.npz")
    arrays = dict(np.load(path))
    arrays["test_labels"][:, 1] = 1  # class 1 is positive in every test image: its AUROC is undefined
    np.savez(path, **arrays)
    code, out, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{path}", "--k", "3", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["metric"] == "auroc" and record["excluded_classes"] == ["class 1"]
    # the score is the mean AUROC of the two classes kept, as sklearn computes it on the same scores
    rng = np.random.default_rng(1)
    scores = rng.random((24, 3))
    score = mean_auroc(scores, arrays["test_labels"])
    kept = [roc_auc_score(arrays["test_labels"][:, c], scores[:, c]) for c in (0, 2)]
    assert score.excluded == ("class 1",) and score.value == pytest.approx(np.mean(kept), abs=1e-12)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_multilabel_split_with_every_class_one_valued_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                 split: str) -> None:
    path = _multilabel_npz(tmp_path / "ml.npz")
    arrays = dict(np.load(path))
    arrays[f"{split}_labels"][:] = [1, 0, 1]  # classes 0 and 2 always present, class 1 never
    np.savez(path, **arrays)
    code, _, err = call(capsys, "eval", "knn", *RANDOM, "--data", f"npz:{path}", "--k", "3")
    assert_one_line_error(code, err, f"the {split} split of", "no class with both positive and negative images")
