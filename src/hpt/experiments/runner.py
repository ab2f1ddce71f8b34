"""Run an experiment: train the stages that are missing, evaluate each variant, write one row per result.

Layout of OUT:  stages/<stage-id>/<stage name>/   (backbone, state, metrics; shared by every experiment;
                                                   `stages_dir:` puts them elsewhere, to share across files)
                stages/<id>/eval/<label>/<protocol>/results.json  (always under OUT: evaluations are per target)
                experiments/<kind>.jsonl           (the rows of the last complete run of that experiment)
Killed and restarted, an experiment resumes the interrupted stage and skips everything that finished.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hpt import distributed
from hpt.atomic import atomic_write_text
from hpt.errors import HptError
from hpt.eval.suite import EvalSuite
from hpt.experiments.config import ExperimentConfig
from hpt.experiments.moved import existing_stage_ids
from hpt.experiments.plan import Variant, expand
from hpt.models import build_backbone
from hpt.pretrain.config import TRAINING_MODES
from hpt.pretrain.stage import run_stage

log = logging.getLogger("hpt")


@dataclass
class ExperimentResult:
    kind: str
    rows: list[dict[str, Any]]
    rows_path: Path
    wall_time_s: float


def run_experiment(kind: str, config: ExperimentConfig, out_dir: str | Path | None = None) -> ExperimentResult:
    """Expand, run what is missing, evaluate, and write OUT/experiments/<kind>.jsonl."""
    out = Path(out_dir or config.out or f"runs/{config.name}")
    variants = expand(kind, config)
    started = time.time()
    info = distributed.init_distributed(config.defaults.get("device", "auto"))
    suite = EvalSuite(config.eval, out)
    stages = Path(config.stages_dir) if config.stages_dir else out / "stages"
    log.info("experiment %s: %d variants -> %s (stage runs in %s)", kind, len(variants), out, stages)
    rows = []
    for i, variant in enumerate(variants, 1):
        log.info("[%d/%d] %s", i, len(variants), _name(variant))
        rows.extend(run_variant(variant, out, suite, info, stages))
    path = out / "experiments" / f"{kind}.jsonl"
    if info.is_main:
        atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return ExperimentResult(kind, rows, path, time.time() - started)


def run_variant(variant: Variant, out: Path, suite: EvalSuite, info: distributed.DistInfo,
                stages: Path | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) the variant's stages (in `stages`, default OUT/stages) from its start, then evaluate."""
    stages = stages or out / "stages"
    start = variant.start
    import torch

    torch.manual_seed(start.seed)
    backbone, checkpoint_info = build_backbone(start.checkpoint, arch=start.arch, small_stem=start.small_stem,
                                               width=start.width)
    summaries = []
    stage_ids = existing_stage_ids(variant, stages)
    for stage, stage_id in zip(variant.stages, stage_ids, strict=True):
        result = run_stage(stage, backbone, stages / stage_id, resume=True, info=info)
        summaries.append(result.summary)
    if not info.is_main:
        return []
    result_id = stage_ids[-1] if stage_ids else variant.result_id()
    trained = stages / result_id
    where = out / "stages" / result_id  # evaluations stay under OUT even when the stage runs are shared
    source = start.checkpoint
    fmt = "random" if checkpoint_info is None else checkpoint_info.format
    if variant.stages:
        fmt = "safetensors"
        name = "backbone.safetensors" if variant.snapshot is None else f"backbone-step{variant.snapshot}.safetensors"
        source = str(trained / variant.stages[-1].name / name)
        if variant.snapshot is not None:
            backbone = _snapshot(Path(source))
    # Named by the stage, not the variant: experiments that share a stage share its evaluation too.
    records = suite.evaluate(variant.eval_name, backbone, source, fmt, out_dir=where)
    times = [float(s.get("wall_time_s", 0.0)) for s in summaries]
    if variant.snapshot is not None and times:  # the share of the last stage's time spent before the snapshot
        times[-1] *= variant.snapshot / variant.stages[-1].steps
    pretrain_s = sum(times)
    health = stage_health(variant, summaries)
    return [{**_row(variant, record, pretrain_s, result_id), **health} for record in records]


def _snapshot(path: Path) -> nn.Module:
    if not path.exists():
        raise HptError(f"{path} is missing: that stage was trained before snapshots were asked for; delete its "
                       f"folder {path.parent.parent} to train it again with them, or use convergence_mode: budgets")
    model, _ = build_backbone(str(path))
    return model


def _name(variant: Variant) -> str:
    return variant.label if variant.x is None else f"{variant.label} @ {variant.x}"


GUARD_FIELDS = ("signal", "kept_step", "kept_value", "reason", "rolled_back")


def stage_health(variant: Variant, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The last gradient stage's collapse warning and guard: {"collapse": None or {"step", "spread"}, "guard": None
    or its signal, kept_step, kept_value, reason, rolled_back}. Only a collapse before the evaluated backbone counts:
    a snapshot's step, or the step a guard rolled back to. A snapshot has no guard (the guard chose the final one)."""
    trained = [i for i, stage in enumerate(variant.stages) if stage.train in TRAINING_MODES]
    if not trained or len(summaries) <= trained[-1]:
        return {"collapse": None, "guard": None}
    summary = summaries[trained[-1]]
    snapshot = variant.snapshot if trained[-1] == len(variant.stages) - 1 else None
    found = summary.get("guard")
    guard = {key: found.get(key) for key in GUARD_FIELDS} if found and snapshot is None else None
    evaluated = snapshot  # the step of the evaluated backbone, where it is not the run's last one
    if guard is not None and guard.get("rolled_back"):
        evaluated = guard.get("kept_step")
    collapse = summary.get("collapse") or None
    if collapse and evaluated is not None and collapse["step"] > evaluated:
        collapse = None
    return {"collapse": collapse, "guard": guard}


def _row(variant: Variant, record: dict[str, Any], pretrain_s: float, result_id: str) -> dict[str, Any]:
    """One line of results.csv: which variant, which protocol, the val score the choices are made on, the test score
    with its interval, and the cost."""
    seeds = record["seeds"]
    vals = [run.get("val") for run in seeds.get("runs") or []]
    return {
        "experiment": variant.experiment,
        "variant": variant.label,
        "series": variant.series or variant.label,
        "x": variant.x,
        "stages": " -> ".join(f"{s.name}({s.train}, {s.steps} steps)" for s in variant.stages) or "none",
        "start": variant.start.checkpoint,
        "protocol": record["protocol"],
        "metric": record["metric"],
        "val": sum(vals) / len(vals) if vals and None not in vals else None,  # mean over the classifier's seeds
        "test": record["test"],
        "low": record["interval"][0],
        "high": record["interval"][1],
        "seeds": seeds["count"],
        "seed_std": seeds["std"],
        "test_images": record["splits"]["sizes"]["test"],
        "excluded_classes": record.get("excluded_classes", []),
        "pretrain_steps": variant.steps,
        "images_seen": variant.images_seen,
        "pretrain_wall_s": round(pretrain_s, 1),
        "eval_wall_s": record["wall_time_s"],
        "result_id": result_id,
        "eval_dir": f"stages/{result_id}/eval/{variant.eval_name}",  # relative to OUT
        "backbone_sha256": record["backbone"]["weights_sha256"],
        "pretrain_seed": variant.stages[-1].seed if variant.stages else None,
        "setting": variant.setting,  # the sweep experiment's setting, whose value is x
        "test_correct": record.get("test_correct"),  # per seed, packed per-image outcomes (not in results.csv)
    }
