"""`hpt rank-sources`: which candidate source set to use for a target (thin layer over hpt.analysis.sources)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from hpt.atomic import atomic_write_text


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
    from hpt.analysis.sources import probe_sources, rank_sources
    from hpt.cli import _claim_out
    from hpt.eval import load_eval_backbone

    _claim_out(out)
    backbone = load_eval_backbone(base)
    ranking = rank_sources(backbone, target, list(sources), base_data=base_data, images=images,
                           image_size=image_size)
    if probe_steps > 0:
        settings = {"batch_size": batch_size, **({"augment": {"image_size": image_size}} if image_size else {})}
        ranking = probe_sources(backbone, ranking, probe_steps, out, settings)
    record = {**asdict(ranking), "recommendation": ranking.recommendation()}
    atomic_write_text(out / "ranking.json", json.dumps(record, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(f"target: {target}   (ranked by {ranking.ranked_by})")
    click.echo(f"{'rank':>4}  {'Frechet':>10}  {'MMD^2':>8}  {'probe':>7}  source")
    for i, s in enumerate(ranking.scores, 1):
        probe = f"{100 * s.probe:6.2f}%" if s.probe is not None else "      -"
        click.echo(f"{i:>4}  {s.frechet:10.3f}  {s.mmd2:8.4f}  {probe}  {s.source}")
    if ranking.base_domain:
        d = ranking.base_domain
        click.echo(f"target from the base's domain ({d['data']}): Frechet {d['frechet_to_target']:.3f}, "
                   f"{d['ratio']:.2f} of the distance to noise images")
    for note in ranking.notes:
        click.echo(f"note: {note}")
    click.echo(ranking.recommendation())
