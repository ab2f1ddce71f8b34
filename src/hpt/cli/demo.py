"""`hpt demo`: offline, on the shipped base and target, the Base / Target / HPT / HPT-BN table and the report."""

from __future__ import annotations

from pathlib import Path

import click

from hpt.cli.output import claim_out
from hpt.demo import run_demo


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Output folder; run again to reuse what is finished.")
def demo_command(out: Path) -> None:
    """Run the demo: compare and convergence experiments on shipped data (minutes on a CPU, no network)."""
    claim_out(out)
    result = run_demo(out)
    click.echo(result.summary)
    click.echo(f"report: {result.report} (figures in {result.out_dir / 'figures'}); {result.wall_time_s:.0f} s")
