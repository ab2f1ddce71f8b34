"""Data as users bring it: arrays of Python objects, data moved or replaced between runs, and data sets without
val/test splits, whose evaluation images are carved from the images a stage pretrains on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import hpt.pretrain.loop
from hpt.config import deep_merge, from_dict
from hpt.data import npz_to_npy_dir, open_dataset, parse_data_spec
from hpt.errors import HptError
from hpt.eval.splits import load_splits
from hpt.models import build_resnet
from hpt.pretrain.config import StageConfig
from hpt.pretrain.stage import DATA_CONTENT, run_stage

from ..conftest import write_npz
from ..helpers import TINY_STAGE, run_cli


class TouchOnUnpickle:
    """Unpickling it creates a file: a loader that unpickles data files would leave that file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (self.marker,)


def with_object_array(source: Path, target: Path, key: str, marker: Path) -> Path:
    arrays = dict(np.load(source))
    values = np.empty(len(arrays[key]), dtype=object)
    values[:] = [TouchOnUnpickle(marker)] + list(arrays[key][1:])
    arrays[key] = values
    np.savez(target, **arrays)
    return target


@pytest.mark.parametrize("key", ["train_labels", "val_labels", "train_images"])
def test_an_array_of_python_objects_is_refused_naming_file_key_and_fix_never_unpickled(tiny_npz: Path, tmp_path: Path,
                                                                                       key: str) -> None:
    marker = tmp_path / "unpickled"
    data = with_object_array(tiny_npz, tmp_path / "objects.npz", key, marker)
    fix = f"{key}.astype(np.int64)" if key.endswith("labels") else f"{key}.astype(np.uint8)"
    for open_it in (lambda: open_dataset(f"npz:{data}"), lambda: npz_to_npy_dir(data, tmp_path / "npy"),
                    lambda: load_splits(f"npz:{data}")):
        with pytest.raises(HptError) as err:
            open_it()
        message = str(err.value)
        assert str(data) in message and key in message and "dtype=object" in message and fix in message
    assert not marker.exists()


def test_npy_labels_of_python_objects_are_refused_with_the_fix(tiny_npz: Path, tmp_path: Path) -> None:
    folder = npz_to_npy_dir(tiny_npz, tmp_path / "npy")
    marker = tmp_path / "unpickled"
    labels = np.empty(64, dtype=object)
    labels[:] = [TouchOnUnpickle(marker)] + [1] * 63
    np.save(folder / "train_labels.npy", labels, allow_pickle=True)
    with pytest.raises(HptError, match=r"train_labels holds Python objects .*train_labels.astype\(np.int64\)"):
        open_dataset(f"npy:{folder}")
    assert not marker.exists()


def test_the_command_line_reports_object_labels_in_one_line_with_exit_2(tiny_npz: Path, tmp_path: Path) -> None:
    data = with_object_array(tiny_npz, tmp_path / "objects.npz", "train_labels", tmp_path / "unpickled")
    result = run_cli("eval", "knn", "--backbone", "random", "--arch", "resnet18", "--small-stem", "--width", "8",
                     "--data", f"npz:{data}")
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "train_labels.astype(np.int64)" in lines[0], result.stderr
    assert not (tmp_path / "unpickled").exists()


# ---- data moved or replaced between runs

def tiny_stage(data: Path, **settings: Any) -> StageConfig:
    return from_dict(StageConfig, deep_merge({"name": "s", "data": f"npz:{data}", "steps": 2, **TINY_STAGE}, settings))


def target_in(folder: Path) -> Path:
    folder.mkdir()
    return folder / "target.npz"


def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", small_stem=True, width=8)


def test_moved_data_is_recognised_by_content_and_other_data_of_the_same_name_is_refused(tmp_path: Path) -> None:
    first = write_npz(target_in(tmp_path / "old"))
    out = tmp_path / "out"
    run_stage(tiny_stage(first), backbone(), out)
    assert DATA_CONTENT in json.loads((out / "s" / "summary.json").read_text())["config"]
    moved = target_in(tmp_path / "new")
    shutil.move(first, moved)
    assert run_stage(tiny_stage(moved), backbone(), out).skipped
    other = write_npz(target_in(tmp_path / "other"), seed=5)
    moved.unlink()
    with pytest.raises(HptError, match=r"data: npz:.*other/target.npz has the name of npz:.*old/target.npz, which no "
                                       r"longer exists, but other content"):
        run_stage(tiny_stage(other), backbone(), out)


def test_data_whose_content_changed_in_place_is_refused(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "target.npz")
    run_stage(tiny_stage(data), backbone(), tmp_path / "out")
    assert run_stage(tiny_stage(data), backbone(), tmp_path / "out").skipped
    write_npz(data, seed=3)
    with pytest.raises(HptError, match=r"data: the content of npz:.*target.npz changed since the stage ran"):
        run_stage(tiny_stage(data), backbone(), tmp_path / "out")


def test_a_run_recorded_without_its_data_content_is_still_matched_by_name(tmp_path: Path) -> None:
    first = write_npz(target_in(tmp_path / "old"))
    out = tmp_path / "out"
    run_stage(tiny_stage(first), backbone(), out)
    summary_path = out / "s" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["config"][DATA_CONTENT]  # as recorded by hpt before it recorded content
    summary_path.write_text(json.dumps(summary))
    other = write_npz(target_in(tmp_path / "new"), seed=5)
    first.unlink()
    assert run_stage(tiny_stage(other), backbone(), out).skipped


def test_an_experiment_reuses_a_stage_of_moved_data_only_when_its_content_is_the_same(tmp_path: Path) -> None:
    from dataclasses import replace

    from hpt.experiments.moved import existing_stage_ids
    from hpt.experiments.plan import Variant
    from hpt.pretrain.hierarchy import BaseConfig

    old = write_npz(target_in(tmp_path / "old"))
    stages = tmp_path / "stages"
    start = BaseConfig("random", "resnet18", True, 8, 0)
    before = Variant("compare", "HPT", start, [tiny_stage(old)])
    (old_id,) = before.stage_ids()
    run_stage(before.stages[0], backbone(), stages / old_id)
    new = target_in(tmp_path / "new")
    shutil.move(old, new)
    after = replace(before, stages=[tiny_stage(new)])
    assert existing_stage_ids(after, stages) == [old_id]
    write_npz(new, seed=5)
    assert existing_stage_ids(after, stages) == after.stage_ids() != [old_id]


# ---- evaluation's held-out images never reach pretraining

def indexed_npz(path: Path, n: int = 80, with_splits: bool = False) -> Path:
    """Labelled images whose first two pixels spell their row in the train split."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, 16, 16, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    arrays = {"train_images": images, "train_labels": np.arange(n) % 4}
    if with_splits:
        arrays.update(val_images=images[:8], val_labels=np.arange(8) % 4, test_images=images[:8],
                      test_labels=np.arange(8) % 4)
    np.savez(path, **arrays)
    return path


def rows_of(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist())


def heldout_rows(data: Path) -> set[int]:
    splits = load_splits(f"npz:{data}")
    assert splits.val.dataset is splits.test.dataset  # carved from train
    return set(splits.val.indices.tolist()) | set(splits.test.indices.tolist())


@pytest.fixture
def pretrained_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[int]]:
    """The train rows of the data set a stage's training loop opens ("data") and those its batches bring
    ("drawn", before augmentation)."""
    rows: dict[str, set[int]] = {"data": set(), "drawn": set()}
    seen = rows["drawn"]
    prepare = hpt.pretrain.loop.prepare_data

    def recording(*args: Any, **kwargs: Any):
        dataset, side, mean, std, loader = prepare(*args, **kwargs)
        rows["data"].update(rows_of(dataset.get_batch(range(len(dataset)))[0]))

        class Recorded:
            def __iter__(self):
                for images, labels in loader:
                    seen.update(rows_of(images))
                    yield images, labels

        return dataset, side, mean, std, Recorded()

    monkeypatch.setattr(hpt.pretrain.loop, "prepare_data", recording)
    return rows


def test_a_guarded_stage_never_pretrains_on_the_val_and_test_images_carved_from_its_data(
        tmp_path: Path, pretrained_rows: dict[str, set[int]]) -> None:
    data = indexed_npz(tmp_path / "train_only.npz")
    held = heldout_rows(data)
    assert len(held) == 16 + 6  # 20% of 80 as test, then 10% of the other 64 as val
    config = tiny_stage(data, steps=12, guard={"every": 6, "images": 32, "labels": 32})
    assert parse_data_spec(config.data).exclude_heldout
    run_stage(config, backbone(), tmp_path / "out")
    assert pretrained_rows["data"] == set(range(80)) - held  # every other image is used
    assert pretrained_rows["drawn"] and pretrained_rows["drawn"] <= pretrained_rows["data"]


def test_without_a_guard_the_same_data_is_pretrained_whole(tmp_path: Path,
                                                           pretrained_rows: dict[str, set[int]]) -> None:
    data = indexed_npz(tmp_path / "train_only.npz")
    config = tiny_stage(data, steps=12)
    assert not parse_data_spec(config.data).exclude_heldout  # nothing evaluates inside this stage
    run_stage(config, backbone(), tmp_path / "out")
    # so the test above would see the held-out rows if they were used
    assert pretrained_rows["data"] == set(range(80)) and pretrained_rows["drawn"] & heldout_rows(data)


def test_data_with_its_own_val_and_test_splits_is_pretrained_whole_and_keeps_its_spec(tmp_path: Path) -> None:
    data = indexed_npz(tmp_path / "splits.npz", with_splits=True)
    assert str(tiny_stage(data, guard={"every": 1}).data) == f"npz:{data}"
    assert len(open_dataset(f"npz:{data}?exclude_heldout=true")) == 80


def test_every_pretraining_stage_of_an_experiment_leaves_out_what_evaluation_holds_out(tmp_path: Path) -> None:
    from hpt.experiments.config import parse_experiment
    from hpt.experiments.plan import expand

    data = indexed_npz(tmp_path / "train_only.npz")
    config = parse_experiment({"target": f"npz:{data}", "source": f"npz:{data}", "fractions": [0.5, 1.0],
                               "base": {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8}})
    held = heldout_rows(data)
    specs = {stage.data for kind in ("compare", "sequential", "datasize", "convergence")
             for variant in expand(kind, config) for stage in variant.stages}
    assert specs and all(parse_data_spec(spec).exclude_heldout for spec in specs)
    for spec in specs:
        dataset = open_dataset(spec)
        assert not rows_of(dataset.get_batch(range(len(dataset)))[0]) & held
    assert len(open_dataset(f"npz:{data}?exclude_heldout=true")) == 80 - len(held)


def test_exclude_heldout_is_refused_where_evaluation_carves_nothing(tmp_path: Path) -> None:
    data = indexed_npz(tmp_path / "train_only.npz")
    with pytest.raises(HptError, match="exclude_heldout applies to split=train"):
        parse_data_spec(f"npz:{data}?split=val&exclude_heldout=true")
    with pytest.raises(HptError, match="exclude_heldout applies to split=train"):
        parse_data_spec(f"wds:{tmp_path}/shard-{{0..1}}.tar?exclude_heldout=true")
    spec = parse_data_spec(f"npz:{data}?exclude_heldout=yes&fraction=0.5")
    assert spec.exclude_heldout and parse_data_spec(spec.describe()) == spec
