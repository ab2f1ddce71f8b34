"""`hpt data cache`: a pre-decoded copy of a data set at the training resolution (a thin layer over
hpt.data.cache.cache_images)."""

from __future__ import annotations

from pathlib import Path

import click

from hpt.data.cache import cache_images


@click.group("data")
def data_group() -> None:
    """Prepare data for training."""


@data_group.command("cache")
@click.argument("spec")
@click.option("--image-size", type=int, required=True, help="Side in pixels of the cached images (size x size).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to write <split>_images.npy (+ <split>_labels.npy) to; use it as npy:OUT.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes decoding in parallel (default: the CPUs less one, at most 8).")
def cache_command(spec: str, image_size: int, out: Path, workers: int | None) -> None:
    """Decode the images of SPEC (one split) once, resized to --image-size, into an npy folder: training reads
    them without decoding. Run it once per split (split=train, split=val, ...) with the same --out."""
    written = cache_images(spec, image_size, out, workers=workers)
    labels = "with labels" if written.labelled else "unlabelled"
    click.echo(f"wrote {written.images} images of {image_size}x{image_size} ({labels}) to {written.folder}; "
               f"train on them with --data {written.spec}")
