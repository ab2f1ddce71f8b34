"""One pretraining stage: its train modes (all / bn / norm / lora / bn-stats / none), reuse, resume and refusal.

A stage starts from a backbone (the Base or the previous stage's), trains it on one data set with a fresh head and
queue (or the previous stage's, with continue_method; the step loop is in loop.py, the settings in config.py), and
writes OUT/<stage>/: backbone.safetensors, state/ (resume), metrics.csv, config.yaml, summary.json.
summary.json is written last: its presence marks the stage finished, and a finished stage is never retrained.
A stage stopped by a non-finite loss, weight or statistic writes failed.json instead (hpt.pretrain.health).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from hpt import distributed
from hpt.atomic import atomic_write, atomic_write_text, remove_stale_temps
from hpt.augment import EvalTransform
from hpt.config import to_dict
from hpt.data import moved_data
from hpt.data.content import content_fingerprint
from hpt.errors import HptError
from hpt.metrics_log import append_result
from hpt.models import (
    ResNet,
    SplitBatchNorm2d,
    load_backbone,
    save_backbone,
    weights_sha256,
)
from hpt.models.stem import adapt_stem, saved_channels
from hpt.pretrain.batches import fit_stem, per_rank_batch, prepare_data
from hpt.pretrain.batchnorm import reestimate_bn_statistics
from hpt.pretrain.config import LATER_DEFAULTS, TRAINING_MODES, StageConfig
from hpt.pretrain.health import FAILED_FILE, TrainingDiverged
from hpt.pretrain.loop import train_ssl
from hpt.pretrain.state import KEPT_DIR, load_state
from hpt.pretrain.trainable import set_trainable

log = logging.getLogger("hpt")


@dataclass
class StageResult:
    name: str
    stage_dir: Path
    backbone_path: Path
    skipped: bool
    summary: dict[str, Any]


def run_stage(
    config: StageConfig,
    backbone: ResNet,
    out_dir: Path,
    *,
    resume: bool = False,
    info: distributed.DistInfo | None = None,
    previous_stage_dir: Path | None = None,
) -> StageResult:
    """Run (or skip, if finished, or resume) one stage; `backbone` is updated in place and also saved.

    previous_stage_dir: the stage before this one, whose final method state `continue_method` starts from.
    """
    info = info or distributed.init_distributed(config.device)
    stage_dir = Path(out_dir) / config.name
    summary_path = stage_dir / "summary.json"
    init_sha = weights_sha256(backbone)
    semantic = recorded_settings(config, init_sha)

    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        _check_same(summary["config"], semantic, stage_dir, "finished")
        channels = saved_channels(str(stage_dir / "backbone.safetensors"))
        if channels is not None:  # trained on N-channel data: the stem was adapted
            adapt_stem(backbone, channels, where=f"stage '{config.name}'")
        load_backbone(backbone, stage_dir / "backbone.safetensors")
        log.info("stage '%s' is finished (%s); skipping it", config.name, summary_path)
        return StageResult(config.name, stage_dir, stage_dir / "backbone.safetensors", True, summary)

    state = load_state(stage_dir / "state")
    failed = _read_failed(stage_dir)
    if failed is not None and state is not None and not resume:
        raise HptError(f"stage '{config.name}' in {stage_dir} stopped at step {failed['step']}: {failed['found']}; "
                       "train it again with a lower lr in another --out (or delete that folder); --resume would "
                       f"continue from its last good state, step {state['step']}, with the same settings")
    if failed is not None:
        log.warning("stage '%s' stopped at step %s in an earlier run (%s); %s", config.name, failed["step"],
                    failed["found"], f"resuming from step {state['step']}" if state else "training it from the start")
    if state is not None and not resume:
        raise HptError(
            f"{stage_dir} holds an unfinished run of stage '{config.name}' (saved at step {state['step']}); "
            "pass --resume to continue it, or use another --out"
        )
    if state is not None:
        _check_same(state["semantic"], semantic, stage_dir, "interrupted")
    if info.is_main:
        # temp files of writes a killed run left (the output folder's lock says no other run writes here)
        remove_stale_temps(stage_dir, stage_dir / "state", stage_dir / KEPT_DIR)
        atomic_write_text(stage_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))

    started = time.time()
    if config.train in TRAINING_MODES:
        continued = _previous_method_state(config, previous_stage_dir) if state is None else None
        try:
            stats = train_ssl(config, backbone, stage_dir, state, semantic, info, continued)
        except TrainingDiverged as err:
            if info.is_main:
                _record_failure(config, semantic, stage_dir, Path(out_dir), err)
            raise
    elif config.train == "bn-stats":
        stats = _reestimate_bn(config, backbone, info)
    else:
        stats = {"steps_done": 0}
    backbone_path = stage_dir / "backbone.safetensors"
    summary = {
        "status": "done",
        "kind": "pretrain",
        "stage": config.name,
        "train": config.train,
        "data": str(config.data),
        "config": semantic,
        "backbone_sha256": weights_sha256(backbone),
        "wall_time_s": round(time.time() - started, 3),
        "world_size": info.world_size,
        **stats,
    }
    if info.is_main:
        metadata = {"stage": config.name, "train": config.train, "data": str(config.data), "steps": str(config.steps)}
        save_backbone(backbone, backbone_path, metadata)
        (stage_dir / FAILED_FILE).unlink(missing_ok=True)
        atomic_write(summary_path, lambda h: h.write(json.dumps(summary, indent=2).encode()))
        append_result(Path(out_dir) / "results.jsonl", summary)
    distributed.barrier()
    return StageResult(config.name, stage_dir, backbone_path, False, summary)


def _read_failed(stage_dir: Path) -> dict[str, Any] | None:
    """The record of an earlier run of the stage that stopped on non-finite numbers (failed.json), or None."""
    try:
        record = json.loads((stage_dir / FAILED_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and {"step", "found"} <= record.keys() else None


def _record_failure(config: StageConfig, semantic: dict[str, Any], stage_dir: Path, out_dir: Path,
                    err: TrainingDiverged) -> None:
    """failed.json in the stage folder (no summary.json: the stage is not finished) and a results.jsonl row."""
    record = {"status": "failed", "kind": "pretrain", "stage": config.name, "train": config.train,
              "data": str(config.data), "config": semantic, "step": err.step, "found": err.found,
              "last_good_step": err.last_good_step, "error": str(err)}
    atomic_write(stage_dir / FAILED_FILE, lambda h: h.write(json.dumps(record, indent=2).encode()))
    append_result(out_dir / "results.jsonl", record)


#: Where a run records what its data held (hpt.data.content fingerprints), next to its settings: moved data is
#: recognised by it, and other data of the same name refused.
DATA_CONTENT = "data_content"
#: The settings that name data: the stage's own, and the probe's and the guard's when they read other data.
DATA_SETTINGS = ("data", "stop.data", "guard.data")
_UNSET = object()


def data_contents(config: StageConfig) -> dict[str, str]:
    """The content fingerprint of every data set the stage reads, by setting (recorded with the run's settings)."""
    specs = {"data": config.data, "stop.data": config.stop.data if config.stop is not None else None,
             "guard.data": config.guard.data if config.guard is not None else None}
    found = {key: content_fingerprint(spec) for key, spec in specs.items() if spec}
    return {key: value for key, value in found.items() if value is not None}


def same_data_content(config: StageConfig, stage_dir: Path) -> bool:
    """False when the run in `stage_dir` (finished or interrupted) recorded other content for a data set the stage
    reads than that data now holds; True when they agree or either is unknown."""
    recorded: Any = None
    try:
        recorded = json.loads((stage_dir / "summary.json").read_text()).get("config", {}).get(DATA_CONTENT)
    except (OSError, ValueError, AttributeError):
        try:
            state = load_state(stage_dir / "state")
        except HptError:
            state = None
        recorded = (state or {}).get("semantic", {}).get(DATA_CONTENT)
    if not isinstance(recorded, dict):
        return True
    current = data_contents(config)
    return all(recorded[key] == current[key] for key in recorded.keys() & current.keys())


def recorded_settings(config: StageConfig, init_sha256: str) -> dict[str, Any]:
    """What a run records to be compared with later runs: its settings, its start and its data's content."""
    return {**config.semantic(), "init_sha256": init_sha256, DATA_CONTENT: data_contents(config)}


def _differences(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any],
                 prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(setting, old value, new value) of every setting that differs, nested ones by dotted name. A setting one side
    lacks is its default there when `defaults` has it (LATER_DEFAULTS), and _UNSET otherwise."""
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, defaults.get(key, _UNSET)), new.get(key, defaults.get(key, _UNSET))
        if isinstance(before, dict) and isinstance(after, dict):
            nested = defaults.get(key) if isinstance(defaults.get(key), dict) else {}
            found += _differences(before, after, nested, f"{prefix}{key}.")
        elif before != after or isinstance(before, bool) != isinstance(after, bool):
            found.append((f"{prefix}{key}", before, after))
    return found


def _shown(value: Any) -> str:
    if value is _UNSET or value is None:
        return "unset"
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_same(saved: dict[str, Any], current: dict[str, Any], stage_dir: Path, what: str) -> None:
    """Refuse to resume or reuse a stage whose result-determining settings changed.

    Every setting is compared both ways, nested ones key by key; one that a side lacks counts as its default when it
    is a setting added to hpt later (LATER_DEFAULTS: runs made before it existed used that default), and as a change
    otherwise (an optional section such as stop or guard, set on one side only, is a change). Data is compared by
    content where the run recorded it (data_content): data that was moved (the same name in another folder, the old
    one gone) is the same data when its content is the same, and data whose content changed is other data.
    """
    old_content, new_content = saved.get(DATA_CONTENT) or {}, current.get(DATA_CONTENT) or {}
    old = {k: v for k, v in saved.items() if k != DATA_CONTENT}
    new = {k: v for k, v in current.items() if k != DATA_CONTENT}
    changed = {name: (before, after) for name, before, after in _differences(old, new, LATER_DEFAULTS)}
    reasons = []
    for name in DATA_SETTINGS:
        before_content, after_content = old_content.get(name), new_content.get(name)
        other_content = before_content is not None and after_content is not None and before_content != after_content
        if name in changed and isinstance(changed[name][0], str) and isinstance(changed[name][1], str) \
                and moved_data(*changed[name]):
            before, after = changed.pop(name)
            if other_content:
                reasons.append(f"{name}: {after} has the name of {before}, which no longer exists, but other content")
            else:
                log.warning("stage in %s: its %s %s no longer exists; taking %s, which has the same name%s, as that "
                            "data moved", stage_dir, name, before, after,
                            "" if before_content else " (its content was not recorded)")
        elif name not in changed and other_content:
            reasons.append(f"{name}: the content of {new.get(name)} changed since the stage ran")
    start = changed.pop("init_sha256", None)
    if start is not None:
        reasons.insert(0, "the starting backbone differs (the base or an earlier stage changed)")
    reasons += [f"{name}: {_shown(before)} -> {_shown(after)}" for name, (before, after) in changed.items()]
    if not reasons:
        return
    shown = "; ".join(reasons[:6]) + (f"; and {len(reasons) - 6} more" if len(reasons) > 6 else "")
    raise HptError(f"the {what} stage in {stage_dir} was run with other settings or data ({shown}); "
                   "use another --out, or delete that folder to train it again")


def _previous_method_state(config: StageConfig, previous_stage_dir: Path | None) -> dict[str, torch.Tensor] | None:
    """The final method weights (head, key encoder, queue) of the previous stage, when continue_method asks."""
    if not config.continue_method:
        return None
    if previous_stage_dir is None:
        raise HptError(f"stage '{config.name}': continue_method needs a previous stage in the same run to continue; "
                       "it cannot continue the base checkpoint (set continue_method: false)")
    state = load_state(previous_stage_dir / "state")
    if state is None:
        raise HptError(f"stage '{config.name}': continue_method needs the final state of the previous stage, but "
                       f"{previous_stage_dir / 'state'} holds none (it was not trained with SSL, or was deleted); "
                       "set continue_method: false to start a new head and queue")
    return state["model"]


@torch.no_grad()
def _reestimate_bn(config: StageConfig, backbone: torch.nn.Module, info: distributed.DistInfo) -> dict[str, Any]:
    """The paper's Base baseline: only BatchNorm running statistics, re-estimated on un-augmented target images.
    A backbone without BatchNorm (a ViT, a ConvNeXt) has none: it is kept as it is, without reading the data."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
        backbone.eval()
        if info.is_main:
            log.info("stage '%s': the backbone has no BatchNorm layers, so bn-stats leaves it as it is",
                     config.name)
        return {"steps_done": 0, "batchnorm_layers": 0}
    per_rank = per_rank_batch(config, info)
    dataset, side, mean, std, loader = prepare_data(config, info, per_rank, 0)
    fit_stem(backbone, dataset, config)
    transform = EvalTransform(mean, std, side).to(info.device)
    set_trainable(backbone, "none")
    backbone.to(info.device)
    iterator = iter(loader)
    batches = (next(iterator)[0] for _ in tqdm(range(config.steps), disable=not info.is_main or None,
                                                desc=f"{config.name} (bn-stats)"))
    start = time.perf_counter()
    reestimate_bn_statistics(backbone, batches, transform, info.device)
    for module in backbone.modules():
        if isinstance(module, SplitBatchNorm2d):
            module.num_splits = 1
    backbone.eval()
    elapsed = time.perf_counter() - start
    log.info("stage '%s': BatchNorm statistics re-estimated over %d batches of %d images", config.name,
             config.steps, config.batch_size)
    return {"steps_done": config.steps, "train_time_s": round(elapsed, 3), "num_images": len(dataset),
            "images_per_s": round(config.steps * config.batch_size / max(elapsed, 1e-9), 2)}
