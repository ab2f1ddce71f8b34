"""`hpt doctor`: what this machine offers hpt (a thin layer over hpt.doctor.checks())."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from hpt import doctor
from hpt.errors import HptError

_MARK = {"ok": "ok", "note": "--", "problem": "!!"}


@click.command("doctor")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="The folder runs would be written to (checked for write access and free space).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_command(out: Path, as_json: bool) -> None:
    """Check the torch build, devices, optional extras, caches and write access; exit 2 if something needs fixing."""
    found = doctor.checks(out)
    if as_json:
        click.echo(json.dumps([asdict(check) for check in found], indent=2))
    else:
        width = max(len(check.name) for check in found)
        for check in found:
            click.echo(f"{_MARK[check.status]}  {check.name:<{width}}  {check.detail}")
    problems = doctor.problems(found)
    if problems:
        raise HptError(f"{len(problems)} problem(s) to fix: " + "; ".join(f"{p.name}: {p.detail}" for p in problems))
