"""`hpt eval linear|finetune|knn|compare`: one command per evaluation protocol (each a thin layer over
hpt.api.evaluate()), and the paired comparison of finished evaluations (hpt.api.compare())."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hpt.api.comparison import compare as compare_evaluations
from hpt.api.evaluation import evaluate
from hpt.cli.backbone_options import architecture_options
from hpt.cli.output import claim_out
from hpt.report.published import reference_line

F = Callable[..., Any]


def _common(func: F) -> F:
    """Options every protocol takes: what to evaluate, on which data, where to write."""
    options = [
        click.option("--backbone", required=True,
                     help="Anything `hpt pretrain --base` accepts: a checkpoint file, named weights, or 'random'."),
        click.option("--data", required=True, help="Labelled data spec; train/val/test splits are taken from it."),
        *architecture_options("the checkpoint's; needed with --backbone random"),
        click.option("--image-size", type=int, default=None, help="Resize images to this side (default: theirs)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Folder for results.json (and the curve CSV/PNG)."),
        click.option("--json", "as_json", is_flag=True, help="Print the results record as JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _evaluate(protocol: str, backbone: str, data: str, out: Path | None, as_json: bool, **settings: Any) -> None:
    """Run hpt.api.evaluate() with the command's options and print its headline (or the whole record as JSON)."""
    if out is not None:
        claim_out(out)  # and log to OUT/hpt.log; evaluate()'s own hold of OUT nests in this one
    result = evaluate(backbone, data, protocol, out=out, **settings)
    click.echo(json.dumps(result.record, indent=2, sort_keys=True) if as_json else result.headline)
    if result.published is not None and not as_json:
        click.echo(reference_line(result.published, result.metric), err=True)


@click.group("eval")
def eval_group() -> None:
    """Measure a backbone with the paper's protocols (accuracy or AUROC, with 95% intervals)."""


@eval_group.command()
@_common
@click.option("--steps", type=int, default=5000, show_default=True, help="Classifier steps.")
@click.option("--lr", type=float, default=30.0, show_default=True)
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--eval-every", type=int, default=100, show_default=True, help="Steps between val/test scores.")
@click.option("--augmented", is_flag=True, help="Random-resized-crop + flip on the fly (slow) instead of cached features.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Repeat the classifier with this many seeds.")
@click.option("--seed", type=int, default=0, show_default=True)
def linear(backbone: str, data: str, arch: str | None, small_stem: bool | None, width: int | None,
           image_size: int | None, device: str, out: Path | None, as_json: bool, steps: int, lr: float,
           batch_size: int, eval_every: int, augmented: bool, seeds: int, seed: int) -> None:
    """Linear separability: a linear classifier on frozen features; test score at the best val score."""
    _evaluate("linear", backbone, data, out, as_json, arch=arch, small_stem=small_stem, width=width,
              image_size=image_size, device=device, steps=steps, lr=lr, batch_size=batch_size, eval_every=eval_every,
              augmented=augmented, seeds=seeds, seed=seed)


@eval_group.command()
@_common
@click.option("--labels", required=True, help="Labelled training images (at least one per class), or 'all'.")
@click.option("--steps", type=int, default=2500, show_default=True, help="Optimizer steps of one effective batch.")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Backbone lr (the head's is x100).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Effective batch per optimizer step.")
@click.option("--micro-batch", type=int, default=None, help="Images per forward pass (gradient accumulation).")
@click.option("--eval-every", type=int, default=100, show_default=True, help="Steps between val/test scores.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Repeat with this many seeds (and subsets).")
@click.option("--seed", type=int, default=0, show_default=True)
def finetune(backbone: str, data: str, arch: str | None, small_stem: bool | None, width: int | None,
             image_size: int | None, device: str, out: Path | None, as_json: bool, labels: str, steps: int,
             lr: float, batch_size: int, micro_batch: int | None, eval_every: int, seeds: int, seed: int) -> None:
    """Few-label fine-tuning of the whole network on N labelled images; test score at the best val score."""
    if labels != "all" and not labels.isdigit():
        raise click.BadParameter(f"expected a number or 'all', got {labels!r}", param_hint="--labels")
    _evaluate("finetune", backbone, data, out, as_json, arch=arch, small_stem=small_stem, width=width,
              image_size=image_size, device=device, labels=labels, steps=steps, lr=lr, batch_size=batch_size,
              micro_batch=micro_batch, eval_every=eval_every, seeds=seeds, seed=seed)


@eval_group.command()
@_common
@click.option("--k", type=int, default=20, show_default=True, help="Neighbours.")
@click.option("--temperature", type=float, default=0.07, show_default=True, help="Vote weight exp(cos/T).")
def knn(backbone: str, data: str, arch: str | None, small_stem: bool | None, width: int | None,
        image_size: int | None, device: str, out: Path | None, as_json: bool, k: int, temperature: float) -> None:
    """kNN on L2-normalised features with the training split as the bank."""
    _evaluate("knn", backbone, data, out, as_json, arch=arch, small_stem=small_stem, width=width,
              image_size=image_size, device=device, k=k, temperature=temperature)


@eval_group.command("compare")
@click.argument("evaluations", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", "names", multiple=True, help="A name per evaluation, in order (default: its folder).")
def compare(evaluations: tuple[Path, ...], names: tuple[str, ...]) -> None:
    """Compare finished evaluations (results.json files or folders) on the same test images: each minus the first,
    with the paired bootstrap interval of the difference."""
    click.echo(compare_evaluations(evaluations, names).table)
