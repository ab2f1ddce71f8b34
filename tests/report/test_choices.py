"""Reports choose on validation scores only, and claim nothing against a variant that did not learn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpt.report import build_report
from hpt.report.parity import parity_sentence, steps_to_parity
from hpt.report.tables import experiment_table, merge_seeds, pairwise_notes, versus_best


def row(variant: str, test: float, val: float | None = None, x: Any = None, series: str | None = None,
        steps: int = 10, **extra: Any) -> dict[str, Any]:
    """A report row with an interval of +-1 point (compared by overlap: no per-image outcomes)."""
    found = {"experiment": "compare", "variant": variant, "series": series or variant, "x": x, "protocol": "linear",
             "metric": "top1", "val": val, "test": test, "low": test - 0.01, "high": test + 0.01, "seeds": 1,
             "seed_std": 0.0, "test_images": 1000, "pretrain_steps": steps, "images_seen": 256 * steps,
             "pretrain_wall_s": 1.0, "eval_wall_s": 1.0, "stages": "s", "start": "x", "result_id": "r",
             "eval_dir": "stages/r/eval/target", "backbone_sha256": "s", "pretrain_seed": 0, **extra}
    return found if val is not None else {k: v for k, v in found.items() if k != "val"}


def point(series: str, steps: int, test: float, val: float | None = None, **extra: Any) -> dict[str, Any]:
    return row(series, test, val, x=steps, steps=steps, experiment="convergence", **extra)


def write_rows(out: Path, kind: str, rows: list[dict[str, Any]]) -> None:
    (out / "experiments").mkdir(parents=True, exist_ok=True)
    (out / "experiments" / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def compare_rows(with_val: bool = True) -> list[dict[str, Any]]:
    """HPT is best on val; HPT-BN has the best test score (val and test disagree)."""
    scores = {"Random": (0.30, 0.31), "Base": (0.60, 0.62), "Target": (0.70, 0.66), "HPT": (0.80, 0.70),
              "HPT-BN": (0.85, 0.68)}
    return [row(name, test, val if with_val else None, steps=0 if name in ("Random", "Base") else 10)
            for name, (test, val) in scores.items()]


def convergence_rows(with_val: bool = True) -> list[dict[str, Any]]:
    """HPT's best on val is at 50 steps (78.0), its best on test at 25 (84.0); Target reaches 78 at 100 steps."""
    points = [("HPT", 0, 0.60, 0.60), ("Target", 0, 0.30, 0.30), ("HPT", 25, 0.84, 0.70), ("HPT", 50, 0.78, 0.75),
              ("Target", 100, 0.79, 0.72), ("Target", 400, 0.85, 0.80)]
    return [point(s, x, test, val if with_val else None) for s, x, test, val in points]


def test_the_best_row_and_hpts_best_point_are_chosen_on_val() -> None:
    rows = compare_rows()
    named = {r["variant"]: r for r in rows}
    assert versus_best(named["HPT"], rows) == "best on val"
    assert versus_best(named["HPT-BN"], rows) == "above it beyond noise"  # a higher test score, not chosen
    assert versus_best(named["Base"], rows) == "below it beyond noise"
    parity = steps_to_parity(convergence_rows())
    assert parity is not None and parity["best_row"]["x"] == 50 and parity["ratio"] == 2.0
    sentence = parity_sentence(parity)
    assert sentence.startswith("Steps to parity: Target needed 100 steps to reach HPT's best on val (78.0 at 50 "
                               "steps): ratio 2.0")


def test_the_report_chooses_on_val_and_says_so(tmp_path: Path) -> None:
    write_rows(tmp_path, "compare", compare_rows())
    write_rows(tmp_path, "convergence", convergence_rows())
    text = build_report(tmp_path).read_text()
    assert "| HPT | 80.0 [79.0, 81.0] | best on val |" in text
    assert "| HPT-BN | 85.0 [84.0, 86.0] | above it beyond noise |" in text
    assert "| Target @ 400 | 85.0 [84.0, 86.0] | best on val (not separated from HPT @ 25) |" in text
    assert "| HPT @ 25 | 84.0 [83.0, 85.0] | within noise of it |" in text
    assert "ratio 2.0" in text and "ratio 16.0" not in text
    assert "every choice is made on validation scores" in text.lower() and "predate validation scores" not in text
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0].startswith("experiment,variant,series,x,protocol,metric,val,test,")
    assert csv[1].startswith("compare,Random,Random,,linear,top1,0.31,0.3,")


def test_rows_without_val_scores_fall_back_to_test_and_the_report_says_so_once(tmp_path: Path) -> None:
    rows = compare_rows(with_val=False)
    assert versus_best(rows[4], rows) == "best on test"  # HPT-BN: the best test score
    parity = steps_to_parity(convergence_rows(with_val=False))
    assert parity is not None and parity["best_row"]["x"] == 25 and parity["ratio"] == 16.0
    assert "Target needed 400 steps to reach HPT's best (84.0 at 25 steps)" in parity_sentence(parity)
    write_rows(tmp_path, "compare", rows)
    write_rows(tmp_path, "convergence", convergence_rows(with_val=False))
    text = build_report(tmp_path).read_text()
    assert text.count("predate validation scores") == 1
    assert "The rows of compare, convergence predate validation scores" in text
    assert "| HPT-BN | 85.0 [84.0, 86.0] | best on test |" in text


@pytest.mark.parametrize(("target", "why"), [
    (row("Target", 0.30), "below Random beyond noise"),
    (row("Target", 0.405), "not above Random beyond noise"),
    (row("Target", 0.60, collapse={"step": 40, "spread": 0.02}), "embeddings collapsed at step 40"),
    (row("Target", 0.60), None),
])
def test_a_target_that_did_not_learn_is_marked_and_not_compared(target: dict[str, Any], why: str | None) -> None:
    rows = [row("Random", 0.40, steps=0), row("Base", 0.70, steps=0), {**target, "val": target["test"]},
            row("HPT", 0.80)]
    rows = [{**r, "val": r["test"]} for r in rows]
    table = experiment_table(rows)
    notes = pairwise_notes(rows)
    if why is None:  # a healthy Target is compared as before
        assert "| Target | 60.0 [59.0, 61.0] | below it beyond noise |" in table
        assert "- HPT - Target: +20.0 points, beyond noise" in notes
        assert "did not learn" not in table
    else:
        assert f"| did not learn ({why}) |" in table
        assert f"- HPT - Target: not compared: Target did not learn ({why})" in notes
        assert not any(n.startswith("- HPT - Target: +") for n in notes)
    assert "- HPT - Random: +40.0 points, beyond noise" in notes  # Random is the reference, always compared


def test_hpt_that_did_not_learn_is_said_plainly() -> None:
    rows = [row("Random", 0.40, 0.40, steps=0), row("Target", 0.60, 0.60),
            row("HPT", 0.41, 0.41), row("HPT-BN", 0.55, 0.55, collapse={"step": 20, "spread": 0.01})]
    notes = pairwise_notes(rows)
    assert "- HPT did not learn (not above Random beyond noise)." in notes
    assert "- HPT-BN did not learn (embeddings collapsed at step 20)." in notes
    assert "- HPT - HPT-BN: not compared: HPT-BN did not learn (embeddings collapsed at step 20)" in notes
    assert "- HPT - Target: -19.0 points, beyond noise" in notes  # a loss to a baseline that learned is still one


@pytest.mark.parametrize(("last", "why"), [
    (point("Target", 400, 0.25, 0.25), "below random weights (Target @ 0) beyond noise"),
    (point("Target", 400, 0.305, 0.305), "not above random weights (Target @ 0) beyond noise"),
    (point("Target", 400, 0.60, 0.60, collapse={"step": 300, "spread": 0.03}), "embeddings collapsed at step 300"),
])
def test_no_steps_to_parity_when_targets_largest_budget_did_not_learn(last: dict[str, Any], why: str) -> None:
    rows = [point("HPT", 0, 0.60, 0.60), point("Target", 0, 0.30, 0.30), point("HPT", 50, 0.78, 0.75),
            point("Target", 100, 0.50, 0.65), last]
    parity = steps_to_parity(rows)
    assert parity is not None and parity["ratio"] is None and parity["target_failure"] == why
    sentence = parity_sentence(parity)
    assert sentence.startswith("No steps-to-parity: Target did not learn within 400 steps (its best on val: "
                               f"50.0 [49.0, 51.0] at 100 steps; at 400 steps: {why}).")
    assert "ratio" not in sentence


def test_target_points_that_did_not_learn_never_count_as_reaching_hpt() -> None:
    rows = [point("HPT", 0, 0.60, 0.60), point("Target", 0, 0.30, 0.30), point("HPT", 50, 0.78, 0.75),
            point("Target", 100, 0.90, 0.70, collapse={"step": 80, "spread": 0.05}),
            point("Target", 200, 0.785, 0.71), point("Target", 400, 0.80, 0.76)]
    parity = steps_to_parity(rows)
    assert parity is not None and parity["target_steps"] == 200 and parity["ratio"] == 4.0
    healthy = steps_to_parity([{**r, "collapse": None} for r in rows])
    assert healthy is not None and healthy["target_steps"] == 100  # the same score, had it learned
    collapsed_hpt = [*rows[:2], {**rows[2], "collapse": {"step": 30, "spread": 0.01}}, *rows[3:]]
    sentence = parity_sentence(steps_to_parity(collapsed_hpt))
    assert sentence.startswith("No steps-to-parity: HPT did not learn (HPT's best on val, 78.0 [77.0, 79.0] at 50 "
                               "steps: embeddings collapsed at step 30).")


def test_the_guards_kept_step_is_printed_under_the_table(tmp_path: Path) -> None:
    guard = {"signal": "knn", "kept_step": 300, "kept_value": 0.8312, "reason": "the kNN score fell by 6 points "
             "after step 300", "rolled_back": True}
    rows = [row("Random", 0.40, 0.40, steps=0), row("HPT", 0.80, 0.80, guard=guard),
            {**row("HPT", 0.80, 0.80, guard=guard), "protocol": "knn"}, row("Target", 0.60, 0.60)]
    table = experiment_table(rows)
    line = "- HPT: the guard kept step 300 (knn 0.831): the kNN score fell by 6 points after step 300"
    assert table.count(line) == 1  # once per variant, not once per protocol
    assert "- Target: the guard" not in table
    write_rows(tmp_path, "compare", rows)
    build_report(tmp_path)
    csv = (tmp_path / "results.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert [line.split(",")[header.index("kept_step")] for line in csv[1:]] == ["", "300", "300", ""]


def test_merged_seeds_keep_the_val_mean_a_collapse_and_each_guard() -> None:
    guard = {"signal": "knn", "kept_step": 100, "kept_value": 0.5, "reason": "r", "rolled_back": True}
    seeds = [row("HPT", 0.80, 0.70, pretrain_seed=0),
             row("HPT", 0.82, 0.74, pretrain_seed=1, collapse={"step": 40, "spread": 0.02}, guard=guard)]
    (merged,) = merge_seeds(seeds)
    assert merged["val"] == pytest.approx(0.72) and merged["collapsed_seeds"] == 1
    table = experiment_table([row("Random", 0.40, 0.40, steps=0), merged])
    assert "did not learn (embeddings collapsed at step 40 in 1 of 2 pretraining seeds)" in table
    assert "- HPT (pretraining seed 1): the guard kept step 100 (knn 0.500): r" in table
