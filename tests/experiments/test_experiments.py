"""Experiments: expansion into variants, shared content-addressed stages, reuse, restart after a kill, reports."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from hpt.errors import HptError
from hpt.experiments import expand, load_experiment, parse_experiment, run_experiment
from hpt.models import build_resnet, save_backbone
from hpt.report import build_report

from ..conftest import write_npz
from ..helpers import TINY_STAGE, run_cli

BUDGETS = {"hpt": 2, "hpt_bn": 2, "target": 3, "source": 2, "bn_stats": 2}
EVAL = {"protocols": ["linear"], "linear": {"steps": 6, "eval_every": 3}, "device": "cpu"}


@pytest.fixture
def experiment_file(tmp_path: Path) -> Path:
    target = write_npz(tmp_path / "target.npz", n_train=48, seed=2)
    source = write_npz(tmp_path / "source.npz", n_train=48, seed=3)
    base = tmp_path / "base.safetensors"
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), base)
    raw = {"name": "tiny", "target": "npz:target.npz", "source": "npz:source.npz", "out": "out",
           "base": {"checkpoint": "base.safetensors"}, "defaults": TINY_STAGE, "budgets": BUDGETS, "eval": EVAL,
           "fractions": [0.5, 1.0], "convergence_steps": [1, 2],
           "augment_levels": {"all": [], "crop only": ["grayscale", "color_jitter", "horizontal_flip",
                                                       "gaussian_blur"]}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def labels(variants: list) -> list[str]:  # noqa: ANN001
    return [v.label if v.x is None else f"{v.label}@{v.x}" for v in variants]


def test_compare_expands_into_random_base_target_hpt_hpt_bn(experiment_file: Path) -> None:
    config = load_experiment(experiment_file)
    variants = expand("compare", config)
    assert labels(variants) == ["Random", "Base", "Target", "HPT", "HPT-BN"]
    named = {v.label: v for v in variants}
    assert named["Random"].stages == [] and named["Random"].start.checkpoint == "random"
    assert named["Random"].start.width == 8 and named["Random"].start.small_stem  # the base's architecture
    assert [s.train for s in named["Base"].stages] == ["bn-stats"]
    assert named["Target"].start.checkpoint == "random" and named["Target"].steps == 3
    assert named["HPT"].start.checkpoint.endswith("base.safetensors") and named["HPT"].steps == 2
    assert [s.train for s in named["HPT-BN"].stages] == ["bn"]
    assert config.eval.data is not None and config.eval.data.path.name == "target.npz"
    assert config.eval.data.split == "train"


def test_experiments_share_stages_by_content(experiment_file: Path) -> None:
    config = load_experiment(experiment_file)
    compare = {v.label: v for v in expand("compare", config)}
    sequential = {v.label: v for v in expand("sequential", config)}
    assert compare["HPT"].stage_ids() == sequential["B+T"].stage_ids()
    assert compare["Base"].result_id() == sequential["B"].result_id()
    assert sequential["B+S+T"].stage_ids()[0] == sequential["B+S"].stage_ids()[0]
    assert sequential["B+S+T"].stage_ids()[1] != compare["HPT"].stage_ids()[0]  # it starts from B+S, not B
    assert len(set(v.result_id() for v in compare.values())) == 5


def test_hpt_lr_and_head_warmup_change_the_hpt_stages_only(experiment_file: Path) -> None:
    config = load_experiment(experiment_file)
    tuned = load_experiment(experiment_file, ["budgets.hpt_lr=0.01", "budgets.hpt_bn_lr=0.003"])
    before, after = ({v.label: v for v in expand("compare", c)} for c in (config, tuned))
    assert after["HPT"].stages[0].lr == 0.01 and after["HPT-BN"].stages[0].lr == 0.003
    assert after["HPT"].stage_ids() != before["HPT"].stage_ids()
    assert after["Target"].stage_ids() == before["Target"].stage_ids()  # Target keeps the stages' lr
    assert after["Base"].result_id() == before["Base"].result_id()
    warm = {v.label: v for v in expand("compare", load_experiment(experiment_file, ["budgets.hpt_head_warmup=1"]))}
    assert warm["HPT"].stages[0].head_warmup_steps == 1 and warm["HPT-BN"].stages[0].head_warmup_steps == 1
    assert warm["Target"].stage_ids() == before["Target"].stage_ids()
    with pytest.raises(HptError, match="budgets.hpt_lr must be a learning rate > 0"):
        load_experiment(experiment_file, ["budgets.hpt_lr=0"])


def test_recipes_give_each_kind_of_stage_its_own_settings(experiment_file: Path) -> None:
    config = load_experiment(experiment_file)
    tuned = load_experiment(experiment_file, ["recipes.target.moco.head_bn=true", "recipes.target.lr=0.1",
                                              "recipes.hpt.anchor.weight=1.0", "recipes.source.lr=0.02"])
    before, after = ({v.label: v for v in expand("compare", c)} for c in (config, tuned))
    target = after["Target"].stages[0]
    assert target.moco.head_bn and target.lr == 0.1 and target.anchor.weight == 0
    assert after["HPT"].stages[0].anchor.weight == 1.0 and not after["HPT"].stages[0].moco.head_bn
    assert after["HPT"].stages[0].lr == before["HPT"].stages[0].lr
    assert after["HPT-BN"].stage_ids() == before["HPT-BN"].stage_ids()  # no recipe of its own: unchanged
    assert after["Base"].result_id() == before["Base"].result_id()
    sequential = {v.label: v for v in expand("sequential", tuned)}
    assert sequential["B+S"].stages[0].lr == 0.02 and sequential["B+S+T"].stages[1].anchor.weight == 1.0
    with pytest.raises(HptError, match="recipes.targets: not a kind of stage; valid: target, hpt"):
        load_experiment(experiment_file, ["recipes.targets.lr=0.1"])
    with pytest.raises(HptError, match="recipes.target.steps is not a stage setting an experiment may set"):
        load_experiment(experiment_file, ["recipes.target.steps=10"])


def test_augment_datasize_convergence_and_bases_expansions(experiment_file: Path, tmp_path: Path) -> None:
    config = load_experiment(experiment_file)
    augment = expand("augment", config)
    assert labels(augment) == ["HPT@all", "Target@all", "HPT@crop only", "Target@crop only"]
    assert augment[2].stages[-1].augment.active == ("random_resized_crop",)
    datasize = expand("datasize", config)
    assert [v.x for v in datasize] == [0.5] * 4 + [1.0] * 4
    assert datasize[0].stages[-1].data.fraction == 0.5 and datasize[4].stages[-1].data.fraction is None
    convergence = expand("convergence", config)
    assert [(v.series, v.x, v.steps) for v in convergence] == [("HPT", 0, 0), ("Target", 0, 0), ("HPT", 1, 1),
                                                               ("Target", 1, 1), ("HPT", 2, 2), ("Target", 2, 2)]
    with pytest.raises(HptError, match="bases"):
        expand("bases", config)
    weak = tmp_path / "weak.safetensors"
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), weak)
    config.bases = {"weak": str(weak), "strong": config.base.checkpoint}
    assert labels(expand("bases", config)) == ["Base@weak", "HPT@weak", "Base@strong", "HPT@strong"]


def test_bad_experiment_files_are_refused(experiment_file: Path) -> None:
    raw = yaml.safe_load(experiment_file.read_text())
    root = experiment_file.parent
    with pytest.raises(HptError, match="budgetz"):
        parse_experiment({**raw, "budgetz": {}}, root)
    with pytest.raises(HptError, match="defaults.steps"):
        parse_experiment({**raw, "defaults": {"steps": 3}}, root)
    with pytest.raises(HptError, match="defaults.continue_method is not a stage setting an experiment may set"):
        parse_experiment({**raw, "defaults": {"continue_method": True}}, root)
    with pytest.raises(HptError, match="colour_jitter"):
        parse_experiment({**raw, "augment_levels": {"x": ["colour_jitter"]}}, root)
    with pytest.raises(HptError, match="source"):
        expand("sequential", parse_experiment({k: v for k, v in raw.items() if k != "source"}, root))
    with pytest.raises(HptError, match="unknown experiment"):
        expand("compares", parse_experiment(raw, root))


def test_compare_runs_reuses_finished_work_and_reports(experiment_file: Path) -> None:
    config = load_experiment(experiment_file)
    out = Path(config.out or "")
    result = run_experiment("compare", config, out)
    assert [r["variant"] for r in result.rows] == ["Random", "Base", "Target", "HPT", "HPT-BN"]
    for row in result.rows:
        assert row["protocol"] == "linear" and row["low"] <= row["test"] <= row["high"]
        assert 0 <= row["val"] <= 1 and "collapse" in row and row["guard"] is None  # the stages keep no guard here
    backbones = sorted(out.glob("stages/*/*/backbone.safetensors"))
    evals = sorted(out.glob("stages/*/eval/*/linear/results.json"))
    assert len(backbones) == 4 and len(evals) == 5
    stamps = {p: p.stat().st_mtime_ns for p in backbones + evals}
    sequential = run_experiment("sequential", config, out)  # B and B+T are compare's Base and HPT: reused
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    by = {r["variant"]: r for r in sequential.rows}
    old = {r["variant"]: r for r in result.rows}
    assert by["B+T"]["test"] == old["HPT"]["test"] and by["B"]["test"] == old["Base"]["test"]
    again = run_experiment("compare", config, out)
    assert [r["test"] for r in again.rows] == [r["test"] for r in result.rows]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    report = build_report(out, "tiny")
    text = report.read_text()
    assert "## Base vs Target vs HPT vs HPT-BN" in text and "## Sequential pretraining" in text
    assert "within noise of it" in text or "below it beyond noise" in text or "did not learn (" in text
    assert "- HPT - Base:" in text
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("experiment,variant,series,x,protocol") and len(csv_lines) == 1 + 5 + 4
    assert (out / "figures" / "compare_linear.png").stat().st_size > 1000
    assert (out / "figures" / "compare_separability.png").exists()


def test_report_from_a_results_file_alone(tmp_path: Path) -> None:
    rows = []
    for series, xs, scores in (("HPT", [0, 10, 20], [0.70, 0.80, 0.82]), ("Target", [10, 20, 40], [0.5, 0.7, 0.81])):
        for x, score in zip(xs, scores):
            rows.append({"experiment": "convergence", "variant": series, "series": series, "x": x,
                         "protocol": "linear", "metric": "top1", "test": score, "low": score - 0.02,
                         "high": score + 0.02, "seeds": 1, "seed_std": 0.0, "test_images": 1000,
                         "pretrain_steps": x, "images_seen": 256 * x, "pretrain_wall_s": 1.0, "eval_wall_s": 1.0,
                         "stages": "target(all, 1 steps)", "start": "x", "result_id": "r", "backbone_sha256": "s"})
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "convergence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = build_report(tmp_path).read_text()
    assert text.startswith(f"# {tmp_path.name}\n")  # no title given: the folder's name
    # HPT's best is 82% at 20 steps; Target never reaches it (81% at 40): the ratio is a lower bound of 2.
    assert "ratio > 2.0" in text
    assert (tmp_path / "figures" / "convergence_linear.png").exists()


def test_report_without_experiments_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HptError, match="no finished experiments"):
        build_report(tmp_path)


def test_a_killed_experiment_restarts_without_redoing_finished_stages(experiment_file: Path) -> None:
    raw = yaml.safe_load(experiment_file.read_text())
    raw["budgets"]["target"] = 6
    experiment_file.write_text(yaml.safe_dump(raw))
    killed = run_cli("experiment", "compare", str(experiment_file), "--no-report",
                     fault=["--signal", "KILL", "--after-step", "4"])
    assert killed.returncode != 0
    out = experiment_file.parent / "out"
    partial = sorted(out.glob("stages/target-*/target/state"))
    assert partial and not list(out.glob("stages/target-*/target/summary.json"))  # killed inside Target
    finished_before = {p: p.stat().st_mtime_ns for p in out.glob("stages/*/*/summary.json")}
    done = run_cli("experiment", "compare", str(experiment_file))
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in finished_before} == finished_before
    rows = [json.loads(line) for line in (out / "experiments" / "compare.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["Random", "Base", "Target", "HPT", "HPT-BN"]
    assert "6 steps from step 4" in (out / "hpt.log").read_text()  # the killed stage resumed, not restarted


def test_convergence_from_snapshots_shares_the_runs_of_compare(experiment_file: Path) -> None:
    raw = yaml.safe_load(experiment_file.read_text())
    raw.update(convergence_mode="snapshots", convergence_steps=[1, 2])
    raw["budgets"].update(hpt=2, target=3)
    experiment_file.write_text(yaml.safe_dump(raw))
    config = load_experiment(experiment_file)
    variants = expand("convergence", config)
    assert [(v.series, v.x, v.snapshot, v.steps) for v in variants] == [
        ("HPT", 0, None, 0), ("Target", 0, None, 0), ("HPT", 1, 1, 1), ("HPT", 2, None, 2),
        ("Target", 1, 1, 1), ("Target", 2, 2, 2), ("Target", 3, None, 3)]
    compare = {v.label: v for v in expand("compare", config)}
    assert variants[3].stage_ids() == compare["HPT"].stage_ids()  # keep_backbones is not part of the id
    out = Path(config.out or "")
    rows = run_experiment("convergence", config, out).rows
    assert len(rows) == 7 and len(list(out.glob("stages/target-*/target/backbone-step*.safetensors"))) == 3
    snapshot, final = rows[2], rows[3]
    assert snapshot["eval_dir"].endswith("eval/target-step1") and final["eval_dir"].endswith("eval/target")
    assert snapshot["backbone_sha256"] != final["backbone_sha256"]
    text = build_report(out).read_text()
    assert "Steps to parity: " in text or "No steps-to-parity: " in text  # tiny runs may not learn: then said so


def test_sequential_with_several_sources_expands_one_pair_per_source(experiment_file: Path) -> None:
    raw = yaml.safe_load(experiment_file.read_text())
    write_npz(experiment_file.parent / "other.npz", n_train=48, seed=4)
    raw["source"] = ["npz:source.npz", "npz:other.npz"]
    config = parse_experiment(raw, experiment_file.parent)
    variants = {v.label: v for v in expand("sequential", config)}
    assert list(variants) == ["B", "B+S (source)", "B+S (other)", "B+T", "B+S+T (source)", "B+S+T (other)"]
    for name in ("source", "other"):
        assert variants[f"B+S+T ({name})"].stage_ids()[0] == variants[f"B+S ({name})"].stage_ids()[0]
        assert variants[f"B+S+T ({name})"].series == "B+S+T"
    assert variants["B+S (source)"].stage_ids()[0] != variants["B+S (other)"].stage_ids()[0]
    single = {v.label for v in expand("sequential", load_experiment(experiment_file))}
    assert single == {"B", "B+S", "B+T", "B+S+T"}
    with pytest.raises(HptError, match="empty list"):
        parse_experiment({**raw, "source": []}, experiment_file.parent)


def test_a_shared_stages_dir_trains_a_source_once_for_two_targets(experiment_file: Path) -> None:
    root = experiment_file.parent
    raw = yaml.safe_load(experiment_file.read_text())
    write_npz(root / "target2.npz", n_train=48, seed=5)
    raw.update(stages_dir="shared")
    first = parse_experiment({**raw, "out": "out1"}, root)
    second = parse_experiment({**raw, "out": "out2", "target": "npz:target2.npz"}, root)
    rows1 = run_experiment("sequential", first, root / "out1").rows
    source_runs = sorted((root / "shared").glob("source-*/source/summary.json"))
    assert len(source_runs) == 1
    stamp = source_runs[0].stat().st_mtime_ns
    rows2 = run_experiment("sequential", second, root / "out2").rows
    assert sorted((root / "shared").glob("source-*/source/summary.json")) == source_runs
    assert source_runs[0].stat().st_mtime_ns == stamp  # trained once, reused by the second target
    assert not list((root / "out1").glob("stages/*/*/backbone.safetensors"))  # stage runs only in shared/
    for out, rows in ((root / "out1", rows1), (root / "out2", rows2)):
        for row in rows:  # each target's evaluations live under its own OUT
            assert (out / row["eval_dir"] / "linear" / "results.json").exists()
    assert rows1[0]["backbone_sha256"] != rows2[0]["backbone_sha256"]  # B: statistics of each target
    text = build_report(root / "out1").read_text()
    assert "- B+S+T - B+T:" in text and "- B+S+T - B+S:" in text


def _move_all(root: Path, into: str) -> Path:
    """Move everything under `root` into `root/into`, as a user moves a checkout with its data and runs."""
    moved = root / into
    moved.mkdir()
    for child in list(root.iterdir()):
        if child != moved:
            shutil.move(str(child), str(moved / child.name))
    return moved


def test_a_moved_experiment_reuses_its_runs_and_evaluations(
        experiment_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = experiment_file.parent
    first = run_experiment("sequential", load_experiment(experiment_file), root / "out")
    files = sorted(p.relative_to(root) for p in (root / "out").rglob("*") if p.is_file()
                   and p.suffix in (".safetensors", ".json") and "experiments" not in p.parts)
    stamps = {p: (root / p).stat().st_mtime_ns for p in files}
    stage_dirs = sorted(p.name for p in (root / "out" / "stages").iterdir())
    moved = _move_all(root, "elsewhere")
    config = load_experiment(moved / "experiment.yaml")
    assert str(moved) in str(config.target)  # the data specs name the new place, so the stage ids are new ones
    assert not {v.result_id() for v in expand("sequential", config)} & {r["result_id"] for r in first.rows}
    with caplog.at_level(logging.WARNING, logger="hpt"):
        again = run_experiment("sequential", config, moved / "out")
    assert {p: (moved / p).stat().st_mtime_ns for p in files} == stamps  # nothing trained or evaluated again
    assert sorted(p.name for p in (moved / "out" / "stages").iterdir()) == stage_dirs
    assert [r["test"] for r in again.rows] == [r["test"] for r in first.rows]
    assert [r["result_id"] for r in again.rows] == [r["result_id"] for r in first.rows]
    assert "before its data moved" in caplog.text and "has the same name" in caplog.text


def test_a_copied_experiment_whose_old_data_still_exists_trains_anew(experiment_file: Path) -> None:
    root = experiment_file.parent
    run_experiment("compare", load_experiment(experiment_file), root / "out")
    copy = root / "copy"
    copy.mkdir()
    for name in ("experiment.yaml", "base.safetensors", "target.npz", "source.npz"):
        shutil.copy(root / name, copy / name)
    shutil.copytree(root / "out", copy / "out")
    before = {p.name for p in (copy / "out" / "stages").iterdir()}
    run_experiment("compare", load_experiment(copy / "experiment.yaml"), copy / "out")
    after = {p.name for p in (copy / "out" / "stages").iterdir()}
    assert len(after - before) == 4  # the old data is still there: another data set for all hpt can tell


def _convergence_row(series: str, steps: int, score: float, half_width: float = 0.01) -> dict[str, object]:
    return {"series": series, "x": steps, "pretrain_steps": steps, "test": score, "low": score - half_width,
            "high": score + half_width, "protocol": "linear", "variant": series}


@pytest.mark.parametrize(("base_score", "target_last", "expected", "absent"), [
    (0.70, 0.60, [], ["HPT itself added nothing", "HPT lowered", "not a clear lead"]),   # HPT improved on the Base
    (0.80, 0.60, ["HPT itself added nothing"], ["HPT lowered"]),                      # within noise of the Base
    (0.90, 0.60, ["HPT lowered the Base's score"], ["added nothing"]),               # below the Base
    (0.70, 0.79, ["not a clear lead"], ["added nothing", "HPT lowered"]),            # Target's last within noise
])
def test_steps_to_parity_names_what_the_ratio_does_not_say(
        base_score: float, target_last: float, expected: list[str], absent: list[str]) -> None:
    from hpt.report.parity import parity_sentence, steps_to_parity

    rows = [_convergence_row("HPT", 0, base_score), _convergence_row("Target", 0, 0.5),
            _convergence_row("HPT", 25, 0.80), _convergence_row("HPT", 50, 0.78),
            _convergence_row("Target", 100, 0.55), _convergence_row("Target", 400, target_last)]
    sentence = parity_sentence(steps_to_parity(rows))
    assert "Target did not reach HPT's best (80.0 at 25 steps) within 400 steps: ratio > 16.0." in sentence
    assert all(text in sentence for text in expected) and not any(text in sentence for text in absent)


def test_steps_to_parity_names_targets_first_point_within_noise_of_hpts_best() -> None:
    """Target within noise mid-way and below again at its last point (as on FashionMNIST at 4,800 of 8,000 steps)."""
    from hpt.report.parity import parity_sentence, steps_to_parity

    rows = [_convergence_row("HPT", 0, 0.70), _convergence_row("Target", 0, 0.5), _convergence_row("HPT", 100, 0.85),
            _convergence_row("Target", 200, 0.80), _convergence_row("Target", 400, 0.845, half_width=0.01),
            _convergence_row("Target", 800, 0.82), _convergence_row("Target", 1000, 0.83)]
    sentence = parity_sentence(steps_to_parity(rows))
    assert "within 1000 steps: ratio > 10.0." in sentence
    assert "Target came within noise of HPT's best at 400 steps (84.5 [83.5, 85.5]): counted there, the ratio is " \
           "4.0, so the bound is not a clear lead." in sentence


@pytest.mark.parametrize(("target_last", "expected"), [
    (0.82, "HPT was within noise of its best already at 50 steps (84.5); from there, Target did not reach that "
           "score within 400 steps: ratio > 8.0."),
    (0.847, "HPT was within noise of its best already at 50 steps (84.5); from there, Target needed 400 steps to "
            "reach that score: ratio 8.0."),
])
def test_steps_to_parity_also_counts_from_the_start_of_hpts_plateau(target_last: float, expected: str) -> None:
    from hpt.report.parity import parity_sentence, steps_to_parity

    rows = [_convergence_row("HPT", 0, 0.70), _convergence_row("Target", 0, 0.5),
            _convergence_row("HPT", 25, 0.80), _convergence_row("HPT", 50, 0.845), _convergence_row("HPT", 100, 0.85),
            _convergence_row("Target", 200, 0.80), _convergence_row("Target", 400, target_last)]
    sentence = parity_sentence(steps_to_parity(rows))
    assert "Target did not reach HPT's best (85.0 at 100 steps) within 400 steps: ratio > 4.0." in sentence
    assert expected in sentence
    rows = [r for r in rows if r["x"] != 50]  # no plateau: the best is also HPT's first step within noise of it
    assert "already at" not in parity_sentence(steps_to_parity(rows))


def test_pretraining_seeds_repeat_every_trained_variant_and_keep_seed_0s_runs(experiment_file: Path) -> None:
    single = {v.label: v for v in expand("compare", load_experiment(experiment_file))}
    seeded = expand("compare", load_experiment(experiment_file, ["seeds=[0,1]"]))
    assert labels(seeded) == ["Random", "Base", "Base", "Target", "Target", "HPT", "HPT", "HPT-BN", "HPT-BN"]
    hpt0, hpt1 = [v for v in seeded if v.label == "HPT"]
    assert hpt0.stage_ids() == single["HPT"].stage_ids()  # seed 0: the runs made without `seeds`
    assert hpt1.stage_ids() != hpt0.stage_ids() and hpt1.stages[0].seed == 1
    with pytest.raises(HptError, match="seeds must be distinct integers"):
        load_experiment(experiment_file, ["seeds=[1,1]"])


def test_report_merges_pretraining_seeds_into_their_mean_and_spread(tmp_path: Path) -> None:
    from hpt.eval.paired import pack_outcomes
    from hpt.report.tables import merge_seeds

    def row(variant: str, seed: int, correct: list[int]) -> dict:
        score = sum(correct) / len(correct)
        return {"experiment": "compare", "variant": variant, "series": variant, "x": None, "protocol": "linear",
                "metric": "top1", "test": score, "low": score - 0.1, "high": score + 0.1, "seeds": 1,
                "seed_std": 0.0, "test_images": 4, "pretrain_steps": 2, "images_seen": 8, "pretrain_wall_s": 1.0,
                "eval_wall_s": 1.0, "stages": "s", "start": "x", "result_id": f"r{seed}", "backbone_sha256": "s",
                "eval_dir": f"stages/r{seed}/eval/target",
                "pretrain_seed": seed, "test_correct": [pack_outcomes(correct)]}

    rows = [row("Base", 0, [1, 1, 0, 0]), row("HPT", 0, [1, 1, 1, 0]), row("HPT", 1, [1, 1, 1, 1])]
    base, hpt = merge_seeds(rows)
    assert base is rows[0]
    assert hpt["test"] == 0.875 and hpt["seeds"] == 2 and hpt["pretrain_seed"] == [0, 1]
    assert abs(hpt["seed_std"] - 0.1768) < 1e-3 and len(hpt["test_correct"]) == 2
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "compare.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = build_report(tmp_path).read_text()
    assert "| HPT | 87.5 [77.5, 97.5] (sd 17.7 over 2 pretraining seeds) |" in text
    assert (tmp_path / "results.csv").read_text().count("compare,HPT,") == 2  # every seed's row is kept
