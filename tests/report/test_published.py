"""Published supervised references: recognised from the evaluation data's file name only, and said to be another
protocol wherever they are shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpt.report import build_report
from hpt.report.evals import compare_evaluations
from hpt.report.published import (
    PUBLISHED,
    published_for_rows,
    recognise,
    reference_line,
)

from .test_choices import compare_rows, write_rows


@pytest.mark.parametrize(("spec", "name"), [
    ("npz:/data/pneumoniamnist_28.npz", "PneumoniaMNIST"),
    ("npz:pneumoniamnist.npz", "PneumoniaMNIST"),
    ("npz:/data/BreastMNIST_224.npz?fraction=0.1", "BreastMNIST"),
    ("npz:C:\\data\\retinamnist_64.npz", "RetinaMNIST"),
    ("npz:/data/cifar10.npz", "CIFAR-10"),
    ("folder:/data/cifar-10/", "CIFAR-10"),
])
def test_known_public_sets_are_recognised_by_their_file_name(spec: str, name: str) -> None:
    found = recognise(spec)
    assert found is not None and found.data == name


@pytest.mark.parametrize("spec", [
    "npz:/data/target.npz",
    "npz:/data/pneumoniamnist_28_cleaned.npz",  # a derived file: not the published set
    "npz:/data/my_pneumoniamnist.npz",
    "npz:/data/pneumoniamnist_28.npz?classes=0",  # a subset of the classes is another task
    "npz:/data/organmnist3d.npz",  # 3D sets are not in the table
    "npz:/data/pneumoniamnist/train.npz",  # the folder's name does not count for a file
    "folder:/data/pneumoniamnist",
    "npz:/data/mnist.npz",
    "",
])
def test_anything_else_gets_no_reference(spec: str) -> None:
    assert recognise(spec) is None


def test_the_medmnist_figures_are_the_papers() -> None:
    assert PUBLISHED["pneumoniamnist"].score("AUC") == 0.944 and PUBLISHED["pneumoniamnist"].score("ACC") == 0.854
    assert PUBLISHED["breastmnist"].score("AUC") == 0.901 and PUBLISHED["breastmnist"].score("ACC") == 0.863
    assert PUBLISHED["retinamnist"].score("AUC") == 0.717 and PUBLISHED["retinamnist"].score("ACC") == 0.524
    for reference in PUBLISHED.values():
        assert reference.model and reference.image_size > 0 and reference.citation
        assert all(0 < value < 1 for _, value in reference.scores)


def test_the_line_names_the_protocol_the_model_and_the_source_and_leads_with_hpts_metric() -> None:
    line = reference_line(PUBLISHED["pneumoniamnist"], "top1")
    assert line.startswith("Published supervised reference, not comparable protocol: ResNet-18 at 28 px on "
                           "PneumoniaMNIST")
    assert "ACC 85.4, AUC 94.4" in line and "MedMNIST v2" in line and "Scientific Data 2023" in line
    assert "AUC 94.4, ACC 85.4" in reference_line(PUBLISHED["pneumoniamnist"], "auroc")


def with_records(out: Path, rows: list[dict], data: str) -> list[dict]:
    """Write each row's evaluation record (only its data spec) where the report looks for it."""
    for row in rows:
        folder = out / row["eval_dir"] / row["protocol"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"data": data}))
    return rows


def test_the_report_shows_the_reference_under_the_table_of_a_known_target(tmp_path: Path) -> None:
    rows = with_records(tmp_path, compare_rows(), "npz:/data/pneumoniamnist_28.npz")
    assert published_for_rows(rows, tmp_path) is PUBLISHED["pneumoniamnist"]
    write_rows(tmp_path, "compare", rows)
    text = build_report(tmp_path).read_text()
    assert text.count("> Published supervised reference, not comparable protocol: ResNet-18 at 28 px on "
                      "PneumoniaMNIST") == 1
    assert "| Published" not in text  # a line of its own, never a variant's row


def test_no_reference_for_an_unknown_target_or_without_records(tmp_path: Path) -> None:
    rows = with_records(tmp_path, compare_rows(), "npz:/data/target.npz")
    write_rows(tmp_path, "compare", rows)
    assert "Published supervised reference" not in build_report(tmp_path).read_text()
    bare = tmp_path / "bare"
    write_rows(bare, "compare", compare_rows())  # rows whose evaluation records are not there
    assert "Published supervised reference" not in build_report(bare).read_text()


def test_hpt_eval_compare_places_evaluations_of_a_known_set_under_the_reference(tmp_path: Path) -> None:
    def record(folder: Path, test: float, data: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({
            "kind": "eval", "protocol": "linear", "metric": "top1", "test": test, "interval": [test - 0.05, test + 0.05],
            "seeds": {"count": 1, "mean": test, "std": 0.0, "runs": [{"seed": 0, "test": test, "val": test}]},
            "data": data, "splits": {"sizes": {"train": 100, "val": 50, "test": 200}}}))
        return folder

    known = [record(tmp_path / name / "a", 0.8, "npz:/d/breastmnist.npz") for name in ("x", "y")]
    table = compare_evaluations(known)
    assert table.splitlines()[-1] == ("> Published supervised reference, not comparable protocol: ResNet-18 at 28 px "
                                      "on BreastMNIST, trained end to end on every training label: ACC 86.3, AUC 90.1 "
                                      "(Yang et al., \"MedMNIST v2\", Scientific Data 2023, Table 3).")
    unknown = [record(tmp_path / name / "b", 0.8, "npz:/d/target.npz") for name in ("x", "y")]
    assert "Published" not in compare_evaluations(unknown)
