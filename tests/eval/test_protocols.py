"""Evaluation protocols on tiny data: splits, features, linear (curve, best val), fine-tuning, kNN, sanity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hpt.errors import HptError
from hpt.eval import (
    FinetuneConfig,
    KnnConfig,
    LinearConfig,
    check_unchanged,
    finetune_eval,
    knn_eval,
    linear_eval,
    load_eval_backbone,
    load_splits,
)
from hpt.eval.common import milestones
from hpt.eval.curve import Curve
from hpt.eval.features import snapshot
from hpt.eval.finetune import finetune_run, labelled_subset
from hpt.eval.knn import knn_scores
from hpt.eval.linear import train_linear_head

from ..conftest import write_npz

TINY_BACKBONE = {"arch": "resnet18", "small_stem": True, "width": 8}


def _backbone(seed: int = 0):  # noqa: ANN202
    return load_eval_backbone("random", seed=seed, **TINY_BACKBONE)


def test_splits_from_the_data(tiny_npz: Path) -> None:
    splits = load_splits(f"npz:{tiny_npz}")
    assert splits.sizes() == {"train": 64, "val": 16, "test": 16}
    assert splits.num_classes == 4 and not splits.multilabel
    assert "split 'val'" in splits.origin["val"]


def test_missing_val_split_is_carved_from_train_with_a_fixed_seed(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", n_train=100)
    with np.load(path) as arrays:
        kept = {k: arrays[k] for k in arrays.files if not k.startswith("val_")}
    np.savez(path, **kept)
    first, again = load_splits(f"npz:{path}"), load_splits(f"npz:{path}")
    assert len(first.val) == 10 and len(first.train) == 90
    assert "carved" in first.origin["val"]
    np.testing.assert_array_equal(first.val.indices, again.val.indices)
    assert not set(first.val.indices) & set(first.train.indices)
    assert set(first.val.labels.tolist()) == {0, 1, 2, 3}  # stratified


def test_train_subset_from_the_spec_leaves_val_and_test_alone(tiny_npz: Path) -> None:
    splits = load_splits(f"npz:{tiny_npz}?count=8")
    assert splits.sizes() == {"train": 8, "val": 16, "test": 16}
    assert sorted(np.bincount(splits.train.labels).tolist()) == [2, 2, 2, 2]


def test_unlabelled_data_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", train_images=np.zeros((20, 8, 8), np.uint8))
    with pytest.raises(HptError, match="no labels"):
        load_splits(f"npz:{tmp_path / 'u.npz'}")


def test_class_count_differing_between_splits_is_refused(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    with np.load(path) as arrays:
        data = {k: arrays[k] for k in arrays.files}
    data["test_labels"] = data["test_labels"] + 3  # labels 3..6: more classes than train's 4
    np.savez(path, **data)
    with pytest.raises(HptError, match="differ between splits|same classes"):
        load_splits(f"npz:{path}")


def test_best_val_selection_picks_the_first_highest_val_step() -> None:
    curve = Curve(seed=0)
    for step, val, test in [(100, 0.5, 0.9), (200, 0.8, 0.6), (300, 0.8, 0.7), (400, 0.7, 0.95)]:
        curve.add(step, 0.1, val, test)
    best = curve.best()
    assert (best.step, best.test) == (200, 0.6)  # never the step with the best test score


def test_linear_head_on_separable_features_reaches_full_accuracy_and_selects_on_val(tiny_npz: Path) -> None:
    splits = load_splits(f"npz:{tiny_npz}")
    rng = np.random.default_rng(0)

    def feats(labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.eye(4, dtype=np.float32)[labels] * 3 + rng.normal(0, 0.1, (len(labels), 4))
                                .astype(np.float32))

    train_x, train_y = feats(splits.train.labels), torch.from_numpy(splits.train.labels)

    def batches(step: int, gen: np.random.Generator):  # noqa: ANN202
        idx = gen.choice(len(train_y), size=32, replace=False)
        return train_x[idx], train_y[idx]

    config = LinearConfig(steps=60, lr=1.0, eval_every=20)
    run = train_linear_head(batches, 4, splits, feats(splits.val.labels), feats(splits.test.labels), config, 0,
                            torch.device("cpu"))
    assert [p.step for p in run.curve.points] == [20, 40, 60]
    assert run.val == 1.0 and run.step == 20
    assert (run.test_scores.argmax(1) == splits.test.labels).all()


def test_linear_eval_writes_curve_results_and_keeps_the_backbone_unchanged(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = _backbone()
    before = snapshot(backbone.model)
    record = linear_eval(backbone, load_splits(f"npz:{tiny_npz}"), LinearConfig(steps=30, eval_every=10,
                         device="cpu"), tmp_path / "lin")
    check_unchanged(before, backbone.model)
    saved = json.loads((tmp_path / "lin" / "results.json").read_text())
    assert saved["protocol"] == "linear" and saved["metric"] == "top1"
    assert saved["splits"]["sizes"] == {"train": 64, "val": 16, "test": 16}
    assert saved["backbone"]["weights_sha256"] == backbone.weights_sha256
    assert saved["settings"]["milestones"] == [10, 20]
    low, high = saved["interval"]
    assert low <= saved["test"] <= high
    assert saved["test"] == record["test"]
    from hpt.eval.paired import unpack_outcomes

    (correct,) = saved["test_correct"]  # one seed: which test images it got right, for paired comparisons
    assert unpack_outcomes(correct, 16).mean() == saved["test"]
    rows = (tmp_path / "lin" / "curve.csv").read_text().splitlines()
    assert rows[0] == "seed,step,lr,val,test" and len(rows) == 4
    assert (tmp_path / "lin" / "curve.png").stat().st_size > 1000


def test_linear_eval_with_seeds_reports_mean_and_std(tiny_npz: Path) -> None:
    record = linear_eval(_backbone(), load_splits(f"npz:{tiny_npz}"),
                         LinearConfig(steps=20, eval_every=10, seeds=3, device="cpu"))
    values = [run["test"] for run in record["seeds"]["runs"]]
    assert record["seeds"]["count"] == 3 and [r["seed"] for r in record["seeds"]["runs"]] == [0, 1, 2]
    assert record["test"] == pytest.approx(np.mean(values))
    assert record["seeds"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_augmented_linear_variant_runs(tiny_npz: Path) -> None:
    from hpt.eval.paired import unpack_outcomes

    splits = load_splits(f"npz:{tiny_npz}")
    record = linear_eval(_backbone(), splits,
                         LinearConfig(steps=4, eval_every=2, batch_size=16, augmented=True, device="cpu"))
    assert record["settings"]["augmented"] is True
    # the reported score is the count of right test images at the step chosen on val, recounted here
    run = record["seeds"]["runs"][0]
    assert run["step"] in (2, 4) and record["test"] == run["test"]
    assert record["test"] == unpack_outcomes(record["test_correct"][0], 16).sum() / 16
    assert record["interval"][0] <= record["test"] <= record["interval"][1]


def _separable_npz(path: Path, shuffled_test: bool = False, multilabel: bool = False,
                   sizes: tuple[int, int, int] = (200, 40, 200)) -> Path:
    """Noisy images whose class (or each label, multi-label) lights one quadrant: a random backbone separates them.
    shuffled_test: the test labels are permuted, so nothing can beat chance on them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        if multilabel:
            labels = (rng.random((n, 3)) < 0.5).astype(np.int64)
            lit = labels.astype(bool)
        else:
            labels = np.arange(n) % 4
            lit = np.eye(4, dtype=bool)[labels]
        images = rng.normal(100, 40, (n, 16, 16, 3))
        for quadrant in range(lit.shape[1]):
            row, col = divmod(quadrant, 2)
            images[lit[:, quadrant], 8 * row:8 * row + 8, 8 * col:8 * col + 8] += 100
        if shuffled_test and split == "test":
            labels = labels[rng.permutation(n)]
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_linear_eval_is_perfect_on_separable_images_and_at_chance_on_shuffled_labels(tmp_path: Path) -> None:
    config = LinearConfig(steps=100, lr=1.0, eval_every=50, device="cpu")
    right = linear_eval(_backbone(), load_splits(f"npz:{_separable_npz(tmp_path / 'a.npz')}"), config)
    assert right["test"] == 1.0 and right["interval"] == [1.0, 1.0]
    shuffled = linear_eval(_backbone(), load_splits(f"npz:{_separable_npz(tmp_path / 'b.npz', True)}"), config)
    assert abs(shuffled["test"] - 0.25) < 0.1  # 4 classes: chance is 25% (+-3 points on 200 images)
    low, high = shuffled["interval"]
    assert low < 0.25 < high and high - low > 0.05


def test_the_sanity_check_catches_a_changed_weight_and_bn_statistic() -> None:
    backbone = _backbone()
    before = snapshot(backbone.model)
    check_unchanged(before, backbone.model)
    with torch.no_grad():
        backbone.model.layer2[0].conv1.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(HptError, match="layer2.0.conv1.weight"):
        check_unchanged(before, backbone.model)
    fresh = _backbone()
    before = snapshot(fresh.model)
    fresh.model.bn1.running_mean += 0.5
    with pytest.raises(HptError, match="bn1.running_mean"):
        check_unchanged(before, fresh.model)


def test_stratified_label_subset_contains_every_class(tiny_npz: Path) -> None:
    splits = load_splits(f"npz:{tiny_npz}")
    for n in (4, 5, 13):
        chosen = labelled_subset(splits, n, seed=3)
        assert len(chosen) == n and len(set(chosen.tolist())) == n
        assert set(splits.train.labels[chosen].tolist()) == {0, 1, 2, 3}
    with pytest.raises(HptError, match="fewer than the 4 classes"):
        labelled_subset(splits, 3, seed=0)
    with pytest.raises(HptError, match="more than the 64"):
        labelled_subset(splits, 65, seed=0)


def test_multilabel_subset_has_a_positive_of_every_class(tmp_path: Path) -> None:
    path = _multilabel_npz(tmp_path / "ml.npz")
    splits = load_splits(f"npz:{path}")
    chosen = labelled_subset(splits, 5, seed=0)
    assert (splits.train.labels[chosen].sum(0) >= 1).all()


def test_accumulated_finetuning_drops_the_lr_at_a_third_and_two_thirds_of_the_real_steps(tiny_npz: Path) -> None:
    splits = load_splits(f"npz:{tiny_npz}")
    config = FinetuneConfig(labels=32, steps=9, batch_size=32, micro_batch=8, eval_every=9, device="cpu")
    assert config.accumulation == 4
    lrs: list[float] = []
    run = finetune_run(_backbone(), splits, config, 0, torch.device("cpu"), lr_log=lrs)
    assert milestones(9) == [3, 6]
    assert lrs == pytest.approx([0.01] * 3 + [0.001] * 3 + [0.0001] * 3)
    assert run.step == 9


def test_finetune_eval_leaves_the_given_backbone_alone(tiny_npz: Path, tmp_path: Path) -> None:
    backbone = _backbone()
    before = snapshot(backbone.model)
    record = finetune_eval(backbone, load_splits(f"npz:{tiny_npz}"),
                           FinetuneConfig(labels=8, steps=2, batch_size=8, eval_every=1, device="cpu"), tmp_path)
    check_unchanged(before, backbone.model)
    assert record["protocol"] == "finetune-8" and record["settings"]["labels_used"] == 8
    assert (tmp_path / "curve.csv").exists() and (tmp_path / "results.json").exists()


def test_knn_votes_by_temperature_weighted_neighbours() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_scores(bank, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), k=2, temperature=0.1,
                        num_classes=2, multilabel=False)
    assert scores.argmax(1).tolist() == [0, 1]
    one = knn_scores(bank, labels, torch.tensor([[1.0, 0.0]]), k=1, temperature=0.5, num_classes=2,
                     multilabel=False)
    assert one[0].tolist() == pytest.approx([np.exp(1.0 / 0.5), 0.0])


def test_knn_eval_single_and_multilabel(tiny_npz: Path, tmp_path: Path) -> None:
    record = knn_eval(_backbone(), load_splits(f"npz:{tiny_npz}"), KnnConfig(k=5, device="cpu"), tmp_path / "k")
    assert record["metric"] == "top1" and (tmp_path / "k" / "results.json").exists()
    config = KnnConfig(k=20, device="cpu")
    right = knn_eval(_backbone(), load_splits(f"npz:{_separable_npz(tmp_path / 'a.npz')}"), config)
    assert right["test"] == 1.0
    shuffled = knn_eval(_backbone(), load_splits(f"npz:{_separable_npz(tmp_path / 'b.npz', True)}"), config)
    assert abs(shuffled["test"] - 0.25) < 0.1  # chance on 4 classes
    multi = knn_eval(_backbone(), load_splits(f"npz:{_separable_npz(tmp_path / 'm.npz', multilabel=True)}"),
                     config)
    assert multi["metric"] == "auroc" and multi["test"] > 0.95  # each label's quadrant is lit: near-perfect ranking
    multi_shuffled = knn_eval(_backbone(), load_splits(
        f"npz:{_separable_npz(tmp_path / 'n.npz', shuffled_test=True, multilabel=True)}"), config)
    assert abs(multi_shuffled["test"] - 0.5) < 0.1  # AUROC of an unrelated ranking: 0.5


def test_multilabel_linear_uses_auroc_and_names_a_one_valued_class(tmp_path: Path) -> None:
    path = _multilabel_npz(tmp_path / "ml.npz", constant_test_class=2)
    record = linear_eval(_backbone(), load_splits(f"npz:{path}"), LinearConfig(steps=10, eval_every=5,
                         device="cpu"))
    assert record["metric"] == "auroc"
    assert record["excluded_classes"] == ["class 2"]


def _multilabel_npz(path: Path, constant_test_class: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        labels = (rng.random((n, 3)) < 0.4).astype(np.int64)
        labels[0] = 1
        labels[1] = 0
        if split == "test" and constant_test_class is not None:
            labels[:, constant_test_class] = 0
        images = rng.integers(0, 100, (n, 16, 16)) + 50 * labels[:, :1, None]
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_hierarchy_eval_section_scores_start_and_every_stage_and_reuses_them(tiny_npz: Path, tmp_path: Path) -> None:
    from hpt.pretrain.hierarchy import load_hierarchy, run_hierarchy

    from ..helpers import write_hierarchy

    config_path = write_hierarchy(tmp_path / "h.yaml", [{"name": "target", "data": f"npz:{tiny_npz}", "steps": 2}])
    import yaml

    raw = yaml.safe_load(config_path.read_text())
    raw["eval"] = {"protocols": ["linear", "knn"], "linear": {"steps": 10, "eval_every": 5}, "knn": {"k": 3},
                   "device": "cpu"}
    config_path.write_text(yaml.safe_dump(raw))
    config = load_hierarchy(config_path)
    assert config.eval is not None and str(config.eval.data) == f"npz:{tiny_npz}"
    assert config.eval.image_size == 16  # the stage's augment.image_size
    run_hierarchy(config, tmp_path / "out")
    lines = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    lines = [r for r in lines if "protocol" in r]
    assert [(r["stage"], r["protocol"]) for r in lines] == [("start", "linear"), ("start", "knn"),
                                                           ("target", "linear"), ("target", "knn")]
    assert lines[0]["backbone"]["weights_sha256"] != lines[2]["backbone"]["weights_sha256"]
    before = (tmp_path / "out" / "results.jsonl").read_text()
    run_hierarchy(load_hierarchy(config_path), tmp_path / "out")  # everything finished: nothing is re-run
    assert (tmp_path / "out" / "results.jsonl").read_text() == before


def test_eval_section_with_an_unknown_protocol_or_key_is_refused(tiny_npz: Path, tmp_path: Path) -> None:
    from hpt.pretrain.hierarchy import parse_hierarchy

    raw = {"stages": [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 1}]}
    with pytest.raises(HptError, match="knnn"):
        parse_hierarchy({**raw, "eval": {"protocols": ["knnn"]}})
    with pytest.raises(HptError, match="stepz"):
        parse_hierarchy({**raw, "eval": {"linear": {"stepz": 3}}})
