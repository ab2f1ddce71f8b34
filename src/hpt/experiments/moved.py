"""Finished stage runs of an experiment whose data has moved since (a moved checkout, or one copied to another
machine without the old data) are found again.

A stage's id hashes its settings, data path included, so after a move the same stage gets a new id. When the
folder of that new id does not exist, the ids the variant would have had with the old data paths are tried:
the old paths are read from the saved configs of the stage runs of the same name, and only paths that
`hpt.data.moved_data` calls the same data (same file name, old place gone) are taken, and of their runs only those
whose recorded data content is that of the data now (other data of the same name trains anew). The run found is then
resumed or reused as it is; `run_stage` checks its settings once more.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from hpt.data import moved_data
from hpt.experiments.plan import Variant
from hpt.pretrain.config import StageConfig
from hpt.pretrain.stage import same_data_content

log = logging.getLogger("hpt")

_MOST_COMBINATIONS = 32  # old locations tried, all data specs together (one per spec is the usual case)


def existing_stage_ids(variant: Variant, stages: Path) -> list[str]:
    """The variant's stage ids, each replaced by the id of a finished or interrupted run of it made before its
    data moved, where such a run exists in `stages` and none under the current id."""
    ids = variant.stage_ids()
    if not ids or all((stages / stage_id).exists() for stage_id in ids):
        return ids
    found = list(ids)
    for old_paths in _old_path_choices(variant, stages):
        moved_ids = _with_data(variant, old_paths).stage_ids()
        for i, (current, before) in enumerate(zip(ids, moved_ids, strict=True)):
            if found[i] == current and not (stages / current).exists() and (stages / before).exists() \
                    and same_data_content(variant.stages[i], stages / before / variant.stages[i].name):
                log.warning("stage '%s': reusing %s, run before its data moved (now %s)", variant.stages[i].name,
                            stages / before, variant.stages[i].data)
                found[i] = before
    return found


def _data_specs(stage: StageConfig) -> list[str]:
    specs = [str(stage.data)]
    if stage.stop is not None and stage.stop.data:
        specs.append(str(stage.stop.data))
    return specs


def _old_path_choices(variant: Variant, stages: Path) -> list[dict[str, str]]:
    """Maps {current spec: old spec}, one per combination of the old locations seen in saved stage configs."""
    current = {spec for stage in variant.stages for spec in _data_specs(stage)}
    olds: dict[str, set[str]] = {}
    for name in {stage.name for stage in variant.stages}:
        for saved in stages.glob(f"{name}-*/{name}/config.yaml"):
            for spec in _saved_specs(saved):
                for new in current:
                    if moved_data(spec, new):
                        olds.setdefault(new, set()).add(spec)
    if not olds:
        return []
    keys = sorted(olds)
    choices = itertools.product(*(sorted(olds[key]) for key in keys))
    return [dict(zip(keys, choice, strict=True)) for choice in itertools.islice(choices, _MOST_COMBINATIONS)]


def _saved_specs(path: Path) -> list[str]:
    try:
        saved: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(saved, dict):
        return []
    specs = [saved.get("data")]
    stop = saved.get("stop")
    if isinstance(stop, dict):
        specs.append(stop.get("data"))
    return [spec for spec in specs if isinstance(spec, str)]


def _with_data(variant: Variant, old_paths: dict[str, str]) -> Variant:
    """The variant with every data spec in `old_paths` put back to its old location."""
    stages = []
    for stage in variant.stages:
        changes: dict[str, Any] = {"data": old_paths.get(str(stage.data), stage.data)}
        if stage.stop is not None and stage.stop.data:
            changes["stop"] = replace(stage.stop, data=old_paths.get(str(stage.stop.data), stage.stop.data))
        stages.append(replace(stage, **changes))
    return replace(variant, stages=stages)
