"""`hpt pretrain` (one stage from a base) and `hpt run` (the stages of a hierarchy YAML): thin layers over
hpt.api.pretrain() and hpt.pretrain.hierarchy's run_hierarchy(), which go through hpt.pretrain.hierarchy's module
(so that tests can replace its pretrain() and run_hierarchy() there); the options of `hpt pretrain` are in
stage_options.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpt import distributed
from hpt.api.pretraining import pretrain, stage_settings
from hpt.cli.output import claim_out
from hpt.cli.stage_options import pretrain_options
from hpt.pretrain import hierarchy
from hpt.report.stages import stages_summary


@click.command("pretrain")
@pretrain_options
def pretrain_command(out: Path, stop_when_converged: bool, guard_on: bool, set_items: tuple[str, ...],
                     **values: Any) -> None:
    """Pretrain one stage from --base on --data; writes OUT/NAME/backbone.safetensors."""
    settings = stage_settings(values, stop_when_converged=stop_when_converged, guard=guard_on, overrides=set_items)
    distributed.init_distributed(str(settings.get("device", "auto")))  # every rank learns whether OUT is free
    claim_out(out)
    result = pretrain(out=out, stop_when_converged=stop_when_converged, guard=guard_on, overrides=set_items, **values)
    if distributed.rank() == 0:
        click.echo(result.summary())


@click.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (overrides 'out:').")
@click.option("--resume", is_flag=True, help="Continue an interrupted stage; finished stages are always skipped.")
def run_command(config: Path, overrides: tuple[str, ...], out: Path | None, resume: bool) -> None:
    """Run the stages of a hierarchy YAML in order. OVERRIDES: key=value, e.g. stages.target.steps=100."""
    chain = hierarchy.load_hierarchy(config, list(overrides))
    out_dir = out or Path(chain.out or "runs/hpt")
    distributed.init_distributed(chain.stages[0].device)  # every rank learns whether OUT is free
    claim_out(out_dir)
    result = hierarchy.run_hierarchy(chain, out_dir, resume=resume)
    if distributed.rank() == 0:
        click.echo(stages_summary(result))
