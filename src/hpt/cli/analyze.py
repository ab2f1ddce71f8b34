"""`hpt analyze similarity|depth`: where in the network backbones differ, and how separable each depth is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hpt.analysis.cross import load_compared, similarity, similarity_report
from hpt.analysis.depth import depth_probe, depth_table
from hpt.cli.backbone_options import architecture_options
from hpt.cli.output import claim_out
from hpt.eval import LinearConfig, load_eval_backbone, load_splits

_ARCH_OPTIONS = [
    *architecture_options("the checkpoint's; needed with 'random'"),
    click.option("--image-size", type=int, default=None, help="Resize images to this side (default: theirs)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
    click.option("--json", "as_json", is_flag=True, help="Print the record as JSON."),
]


def _with(options: list[Any]) -> Any:
    def wrap(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func
    return wrap


@click.group("analyze")
def analyze_group() -> None:
    """Layer-by-layer similarity of backbones (linear CKA) and linear probes at each depth."""


@analyze_group.command("similarity")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--data", required=True, help="Data spec; a seeded sample of its images (train split) is encoded.")
@click.option("--images", type=int, default=2000, show_default=True, help="Images in the sample (at most).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the image sample ('random' "
              "backbones get seed, seed+1, ... in order).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward pass.")
@click.option("--name", "names", multiple=True, help="A name per checkpoint, in order (e.g. --name Base --name HPT).")
@click.option("--all-pairs", is_flag=True, help="Two backbones of one architecture: the full matrix (every layer "
              "of one against every layer of the other) instead of the row-by-row table.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/analyze/similarity"), show_default=True,
              help="Folder for similarity.json, similarity.csv and similarity.png.")
@_with(_ARCH_OPTIONS)
def similarity_command(checkpoints: tuple[str, ...], data: str, images: int, seed: int, batch_size: int,
                       names: tuple[str, ...], all_pairs: bool, out: Path,
                       arch: str | None, small_stem: bool | None, width: int | None, image_size: int | None,
                       device: str, as_json: bool) -> None:
    """Linear CKA between backbones, layer by layer (every block; ResNet, ViT or ConvNeXt).

    CHECKPOINTS: two or more files or named weights ('random' too). Of one architecture: a row per layer (stem
    or embedding, every block, pooled), a column per pair. Exactly two of different architectures (e.g. a ViT and
    a ResNet), or two with --all-pairs: the matrix of every layer of the first against every layer of the second,
    and the best match of each layer of the first. Maps are averaged over space, a ViT's tokens over the patch
    tokens (one value per channel) before CKA; BatchNorm is in eval mode."""
    backbones, labels = load_compared(checkpoints, names, arch=arch, small_stem=small_stem, width=width, seed=seed,
                                      all_pairs=all_pairs)
    claim_out(out)
    record = similarity(backbones, data, all_pairs=all_pairs, labels=labels, images=images, seed=seed,
                        image_size=image_size, device=device, batch_size=batch_size, out_dir=out)
    click.echo(json.dumps(record, indent=2, sort_keys=True) if as_json else similarity_report(record))
    if not as_json:
        click.echo(f"wrote {out / 'similarity.json'}, similarity.csv, similarity.png")


@analyze_group.command()
@click.argument("checkpoint")
@click.option("--data", required=True, help="Labelled data spec; train/val/test are taken from it (as hpt eval).")
@click.option("--steps", type=int, default=5000, show_default=True, help="Classifier steps per depth.")
@click.option("--lr", type=float, default=30.0, show_default=True)
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--eval-every", type=int, default=100, show_default=True, help="Steps between val/test scores.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Repeat each classifier with this many seeds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/analyze/depth"), show_default=True,
              help="Folder for depth.json, depth.csv and depth.png.")
@_with(_ARCH_OPTIONS)
def depth(checkpoint: str, data: str, steps: int, lr: float, batch_size: int, eval_every: int, seeds: int,
          seed: int, out: Path, arch: str | None, small_stem: bool | None, width: int | None,
          image_size: int | None, device: str, as_json: bool) -> None:
    """The linear protocol of `hpt eval linear` on features pooled at several depths.

    ResNet: the stem and each of layer1..layer4; ViT: the embedding, the blocks at quarter depths and the pooled
    features; ConvNeXt: the stem, each stage and the pooled features. Prints the test score with its 95% interval
    per depth, the best depth, and which shallower depths are within noise of it (paired over the same test
    images; intervals overlapping, for AUROC); for a ResNet, the `hpt export --truncate` that keeps that much."""
    config = LinearConfig(steps=steps, lr=lr, batch_size=batch_size, eval_every=eval_every, seeds=seeds, seed=seed,
                          image_size=image_size, device=device)
    backbone = load_eval_backbone(checkpoint, arch=arch, small_stem=small_stem, width=width, seed=seed)
    splits = load_splits(data, seed=seed)
    claim_out(out)
    click.echo(f"data: {splits.spec.describe()}: {splits.describe()}", err=True)
    record = depth_probe(backbone, splits, config, out)
    click.echo(json.dumps(record, indent=2, sort_keys=True) if as_json else depth_table(record))
    if not as_json:
        click.echo(f"wrote {out / 'depth.json'}, depth.csv, depth.png")
