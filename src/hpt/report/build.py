"""`hpt report OUT`: tables (report.md), every number (results.csv) and figures, from finished experiment rows; with
`html=True` also one self-contained page (report.html).

Reads only OUT/experiments/<kind>.jsonl and the evaluations' records (curve.csv, results.json); trains and evaluates
nothing.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from hpt.atomic import atomic_text_file, atomic_write_text
from hpt.errors import HptError
from hpt.report import figures
from hpt.report.html import write_html
from hpt.report.parity import parity_sentences
from hpt.report.published import published_for_rows, reference_line
from hpt.report.selection import predate_val
from hpt.report.sweep import sweep_table
from hpt.report.tables import experiment_table, merge_seeds

ORDER = ("compare", "sequential", "augment", "datasize", "convergence", "bases", "sweep")
TITLES = {
    "compare": "Base vs Target vs HPT vs HPT-BN",
    "sequential": "Sequential pretraining: B, B+S, B+T, B+S+T",
    "augment": "Augmentation robustness (augmentations removed cumulatively)",
    "datasize": "Pretraining-data robustness (fraction of the target's images)",
    "convergence": "Convergence: score against pretraining steps",
    "bases": "HPT from weaker and stronger bases",
    "sweep": "One HPT setting swept, the value chosen on validation",
}
CSV_FIELDS = ("experiment", "variant", "series", "x", "protocol", "metric", "val", "test", "low", "high", "seeds",
              "seed_std", "test_images", "pretrain_steps", "images_seen", "pretrain_wall_s", "eval_wall_s", "stages",
              "start", "result_id", "eval_dir", "backbone_sha256", "pretrain_seed", "setting", "collapse_step",
              "kept_step")


def read_rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    folder = out / "experiments"
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise HptError(f"{out} holds no finished experiments (no {folder}/*.jsonl); run `hpt experiment KIND FILE "
                       f"--out {out}` first")
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        try:
            rows[path.stem] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise HptError(f"{path} is not valid JSON lines ({err}); re-run that experiment to rewrite it") from None
    return rows


def build_report(out: str | Path, title: str | None = None, html: bool = False) -> Path:
    """Write OUT/report.md (titled `title`, or the folder's name), OUT/results.csv and OUT/figures/*.png; with
    `html`, also OUT/report.html (the same report on one page, figures inside). Returns report.md's path."""
    out = Path(out)
    rows = read_rows(out)
    kinds = [k for k in ORDER if k in rows] + sorted(k for k in rows if k not in ORDER)
    _write_csv(out / "results.csv", [row for kind in kinds for row in rows[kind]])
    lines = [f"# {title or out.resolve().name}", "",
             ("Scores are test scores, in percent, with 95% bootstrap intervals over the test images. Every choice "
             "is made on validation scores and the test score is only read for what was chosen: the classifier's "
             "step, the best row of a table ('best on val'), HPT's best point of a convergence curve and the value "
             "of a sweep. A variant 'did not learn' when its embeddings collapsed or its score is not above random "
             "weights beyond noise; no lead over it is claimed. Two variants differ 'beyond noise' when the 95% "
             "bootstrap interval of their difference, resampling the same test images for both (paired), excludes "
             "0 - or, where per-image outcomes are not kept (AUROC), when their own intervals do not overlap. A "
             "difference 'within noise' is not evidence. These intervals cover the test images' sampling only, not "
             "a new training seed."), ""]
    older = [kind for kind in kinds if predate_val(rows[kind])]
    if older:
        lines += [(f"The rows of {', '.join(older)} predate validation scores: there, the best row or point was "
                  "chosen on test scores, which flatters it; run those experiments again (finished stages and "
                  "evaluations are reused) to choose on val."), ""]
    for kind in kinds:
        merged = merge_seeds(rows[kind])  # results.csv keeps every seed's row; tables and figures their mean
        lines += [f"## {TITLES.get(kind, kind)}", ""]
        lines.append(sweep_table(merged) if kind == "sweep" else experiment_table(merged))
        reference = published_for_rows(merged, out)
        if reference is not None:
            lines += ["", f"> {reference_line(reference, merged[0].get('metric'))}", ""]
        if kind == "convergence":
            for protocol, sentence in parity_sentences(merged):
                lines += [f"{protocol}: {sentence}", ""]
        for figure in _figures(kind, merged, out):
            lines += [f"![{figure.stem}]({figure.relative_to(out).as_posix()})", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    if html:
        write_html(out, "\n".join(lines), rows)
    return path


def _by_protocol(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["protocol"]].append(row)
    return groups


def _figures(kind: str, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    made = []
    folder = out / "figures"
    for protocol, group in _by_protocol(rows).items():
        name = f"{kind}_{protocol}"
        title = f"{TITLES.get(kind, kind)} - {protocol}"
        if kind in ("compare", "sequential"):
            made.append(figures.bars(group, folder / f"{name}.png", title))
            if protocol == "linear":
                curves = {r["variant"]: out / r["eval_dir"] / "linear" / "curve.csv" for r in group}
                curve = figures.separability_curves(curves, folder / f"{kind}_separability.png",
                                                    f"Linear separability - {kind}", group[0]["metric"])
                if curve is not None:
                    made.append(curve)
        elif kind == "sweep":
            made.append(figures.sweep_values(group, folder / f"{name}.png", title))
        elif kind == "bases":
            made.append(figures.bars(group, folder / f"{name}.png", title))
        else:
            xlabel = {"augment": "augmentations kept", "datasize": "fraction of target images pretrained on",
                      "convergence": "pretraining steps"}.get(kind, "x")
            made.append(figures.lines(group, folder / f"{name}.png", title, xlabel, log_x=kind == "datasize"))
    return made


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_text_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "collapse_step": (row.get("collapse") or {}).get("step"),
                          "kept_step": (row.get("guard") or {}).get("kept_step")} for row in rows)
