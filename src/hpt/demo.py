"""`hpt demo`: the whole story offline in minutes on a CPU, from files that ship with the package.

A base pretrained by hpt itself on natural images (configs/examples/base_cifar10.yaml) and a small real target set
(a FashionMNIST subset) live in hpt/assets/. The demo runs the compare experiment (Random, Base, Target,
HPT, HPT-BN) and the convergence experiment (probe score against pretraining steps, from snapshots), then
writes the report and its figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hpt.errors import HptError
from hpt.experiments import load_experiment, run_experiment
from hpt.report import build_report
from hpt.report.build import read_rows
from hpt.report.parity import parity_sentences
from hpt.report.tables import experiment_table

DEMO_FILE = "demo.yaml"


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    summary: str  # the compare table and the convergence sentence, for the terminal
    wall_time_s: float


def assets_dir() -> Path:
    """The folder of the shipped demo files (inside the installed package)."""
    path = Path(str(resources.files("hpt") / "assets"))
    if not (path / DEMO_FILE).exists():
        raise HptError(f"the demo files are missing from {path} (a broken install?); reinstall hpt")
    return path


def run_demo(out_dir: str | Path = "runs/demo", assets: Path | None = None) -> DemoResult:
    """Run (or finish, after an interruption) the demo's experiments into out_dir and build the report."""
    import time

    started = time.time()
    config = load_experiment((assets or assets_dir()) / DEMO_FILE)
    out = Path(out_dir)
    for kind in ("compare", "convergence"):
        run_experiment(kind, config, out)
    report = build_report(out, "hpt demo: a CIFAR-10 base, FashionMNIST as the target")
    rows = read_rows(out)
    parts = [experiment_table(rows["compare"])]
    parts += [f"convergence ({protocol}): {sentence}" for protocol, sentence in parity_sentences(rows["convergence"])]
    return DemoResult(out, report, "\n".join(parts), time.time() - started)
