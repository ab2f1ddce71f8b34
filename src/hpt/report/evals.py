"""`hpt eval compare`: finished evaluations of several backbones on the same test images, compared paired.

Reads results.json records (of `hpt eval`, of a hierarchy's eval section or of an experiment's evaluations);
trains and evaluates nothing. The first evaluation is the reference every other one is compared with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpt.errors import HptError
from hpt.report.published import recognise, reference_line
from hpt.report.selection import chosen_on
from hpt.report.tables import difference_note, metric_name, score_cell, versus_best


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """The results.json record at `path` (the file, or the folder holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    if not file.is_file():
        raise HptError(f"no evaluation record at {file}; give a results.json written by `hpt eval` or an eval "
                       "section, or its folder")
    try:
        record = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HptError(f"{file} cannot be read as JSON ({err}); re-run the evaluation that wrote it") from None
    if not isinstance(record, dict) or record.get("kind") != "eval":
        raise HptError(f"{file} is not an evaluation record (no \"kind\": \"eval\")")
    return record


def as_row(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """An evaluation record in the shape of a report row (what tables.py compares); val is the mean over the
    record's seeds of the val score at each one's chosen step (None for records that do not keep it)."""
    vals = [run.get("val") for run in record["seeds"].get("runs") or []]
    return {"variant": name, "x": None, "protocol": record["protocol"], "metric": record["metric"],
            "val": sum(vals) / len(vals) if vals and None not in vals else None, "test": record["test"],
            "low": record["interval"][0], "high": record["interval"][1],
            "seeds": record["seeds"]["count"], "seed_std": record["seeds"]["std"],
            "test_images": record["splits"]["sizes"]["test"], "test_correct": record.get("test_correct")}


def compare_evaluations(paths: list[str | Path], names: list[str] | None = None) -> str:
    """A markdown table of the evaluations (score, interval, vs best) and each one minus the first, paired; where the
    test data is a known public set, its published supervised reference below (hpt.report.published)."""
    if len(paths) < 2:
        raise HptError("give at least two evaluations to compare")
    names = list(names or [])
    if names and len(names) != len(paths):
        raise HptError(f"{len(names)} names for {len(paths)} evaluations; give one name per evaluation, or none")
    records = [load_evaluation(p) for p in paths]
    labels = names or [evaluation_name(Path(p), r) for p, r in zip(paths, records)]
    first = records[0]
    for label, record in zip(labels[1:], records[1:]):
        for key, what in (("protocol", "protocol"), ("metric", "metric"), ("data", "test data")):
            if record[key] != first[key]:
                raise HptError(f"'{label}' has another {what} than '{labels[0]}' ({record[key]} vs {first[key]}); "
                               "a comparison needs the same protocol on the same test images")
        if record["splits"]["sizes"]["test"] != first["splits"]["sizes"]["test"]:
            raise HptError(f"'{label}' was scored on {record['splits']['sizes']['test']} test images and "
                           f"'{labels[0]}' on {first['splits']['sizes']['test']}; evaluate both on the same split")
    rows = [as_row(label, record) for label, record in zip(labels, records)]
    lines = [(f"**{first['protocol']}** - test {metric_name(rows)} [95% bootstrap interval], "
             f"{rows[0]['test_images']} test images of {first['data']}"), "",
             "| evaluation | score | vs best |", "|---|---|---|"]
    lines += [f"| {row['variant']} | {score_cell(row)} | {versus_best(row, rows)} |" for row in rows]
    lines.append("")
    if chosen_on(rows) == "test":
        lines.append("The best evaluation was chosen on test scores: these records predate validation scores.")
    lines += [f"- {row['variant']} - {rows[0]['variant']}: {difference_note(row, rows[0])}" for row in rows[1:]]
    reference = recognise(first["data"]) if isinstance(first.get("data"), str) else None
    if reference is not None:  # a known public test set: the published supervised score, to place these
        lines += ["", f"> {reference_line(reference, first['metric'])}"]
    return "\n".join(lines)


def evaluation_name(path: Path, record: dict[str, Any]) -> str:
    """The name an evaluation goes by when none is given: its stage, else its parent and own folder."""
    folder = path if path.is_dir() else path.parent
    return record.get("stage") or f"{folder.parent.name}/{folder.name}"
