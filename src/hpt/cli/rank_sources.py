"""`hpt rank-sources`: which candidate source set to use for a target (thin layer over hpt.analysis.sources)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpt.analysis.sources import ranking_record, ranking_table, recommend_source
from hpt.cli.output import claim_out
from hpt.eval import load_eval_backbone


@click.command("rank-sources")
@click.option("--base", required=True, help="The base checkpoint (anything `hpt pretrain --base` accepts).")
@click.option("--target", required=True, help="The target data spec.")
@click.argument("sources", nargs=-1, required=True)
@click.option("--base-data", default=None, help="Images of the base's own domain, to say how far the target is.")
@click.option("--images", type=int, default=2000, show_default=True, help="Images sampled per data set.")
@click.option("--image-size", type=int, default=None, help="Side images are resized to (default: the target's).")
@click.option("--probe-steps", type=int, default=0, show_default=True,
              help="Refine: HPT this many steps on each source, then a kNN probe on the target's val split.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Global batch of the probe runs.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/rank-sources"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
def rank_sources_command(base: str, target: str, sources: tuple[str, ...], base_data: str | None, images: int,
                         image_size: int | None, probe_steps: int, batch_size: int, out: Path,
                         as_json: bool) -> None:
    """Rank SOURCES (data specs) by closeness to the target in the base's feature space; recommend one."""
    claim_out(out)
    backbone = load_eval_backbone(base)
    ranking = recommend_source(backbone, target, list(sources), out, base_data=base_data, images=images,
                               image_size=image_size, probe_steps=probe_steps, batch_size=batch_size)
    click.echo(json.dumps(ranking_record(ranking), indent=2) if as_json else ranking_table(ranking))
