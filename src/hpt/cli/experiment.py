"""`hpt experiment KIND FILE` and `hpt report OUT` (thin layer over hpt.experiments and hpt.report)."""

from __future__ import annotations

from pathlib import Path

import click

from hpt import distributed
from hpt.cli.output import claim_out
from hpt.experiments import KINDS, load_experiment, run_experiment
from hpt.report import build_report

HELP = {
    "compare": "Base, Target, HPT and HPT-BN on one target.",
    "sequential": "B, B+S, B+T and B+S+T (needs 'source:').",
    "augment": "HPT and Target with augmentations removed cumulatively.",
    "datasize": "HPT, HPT-BN, Target and Base on fractions of the target's pretraining images.",
    "convergence": "Probe score against pretraining steps, HPT vs Target, with the steps-to-parity ratio.",
    "bases": "HPT from weaker and stronger bases (needs 'bases:').",
    "sweep": "HPT at each value of one stage setting, chosen on val (needs 'sweep: {setting, values}').",
}


@click.group("experiment")
def experiment_group() -> None:
    """Run one of the paper's studies from an experiment YAML; finished runs are reused, killed ones resumed."""


def _make(kind: str) -> click.Command:
    @click.argument("config", type=click.Path(path_type=Path))
    @click.argument("overrides", nargs=-1)
    @click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (overrides 'out:').")
    @click.option("--no-report", is_flag=True, help="Do not rebuild OUT/report.md afterwards.")
    def command(config: Path, overrides: tuple[str, ...], out: Path | None, no_report: bool) -> None:
        experiment = load_experiment(config, list(overrides))
        folder = out or Path(experiment.out or f"runs/{experiment.name}")
        distributed.init_distributed(experiment.defaults.get("device", "auto"))  # every rank learns if OUT is free
        if experiment.stages_dir and not _inside(Path(experiment.stages_dir), folder):
            claim_out(Path(experiment.stages_dir), log_here=False)  # stage runs shared with other experiments
        claim_out(folder)
        result = run_experiment(kind, experiment, folder)
        click.echo(f"{kind}: {len(result.rows)} results in {result.rows_path} ({result.wall_time_s:.0f} s)")
        if not no_report:
            click.echo(f"report: {build_report(folder, experiment.name)}")

    command.__doc__ = HELP[kind]
    return click.command(kind)(command)


for _kind in KINDS:
    experiment_group.add_command(_make(_kind))


@click.command("report")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--title", default=None, help="Title of report.md.")
@click.option("--html", "html", is_flag=True,
              help="Also write OUT/report.html: the report on one self-contained page, figures embedded.")
def report_command(out: Path, title: str | None, html: bool) -> None:
    """Rebuild OUT/report.md, OUT/results.csv and OUT/figures/ from finished experiments (and OUT/report.html)."""
    claim_out(out, create=False)
    click.echo(build_report(out, title, html=html))
    if html:
        click.echo(out / "report.html")


def _inside(folder: Path, parent: Path) -> bool:
    return folder.resolve().is_relative_to(parent.resolve())
