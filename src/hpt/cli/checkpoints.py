"""`hpt inspect` and `hpt export`: what a checkpoint file holds, and a backbone written in a format other code loads
(thin layers over hpt.models and hpt.api.export())."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from hpt.api.backbones import export
from hpt.models import EXPORT_FORMATS, inspect_checkpoint
from hpt.models.checkpoints import inspect_lines, load_refusal


@click.command("inspect")
@click.argument("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect_command(checkpoint: str, as_json: bool) -> None:
    """Detected format, architecture, parameter count, keys set aside of a checkpoint, and whether it loads.

    Exits with code 2 when the backbone does not load into its architecture (missing, unexpected or
    mis-shaped keys), as `hpt pretrain --base` would refuse it."""
    info = inspect_checkpoint(checkpoint)
    refusal = load_refusal(info)  # without a target, the reason names its own fix
    if as_json:
        click.echo(json.dumps(asdict(info), indent=2, default=str))
    else:
        click.echo("\n".join(inspect_lines(info)))
    if refusal is not None:
        raise refusal


@click.command("export")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="torchvision", show_default=True,
              help="torchvision and moco: ResNets; timm and safetensors: any backbone (timm's keys, LoRA merged).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--truncate", type=click.Choice(["layer1", "layer2", "layer3"]), default=None,
              help="Keep only conv1/bn1 and layer1..this layer (torchvision or safetensors format). A truncated "
                   "backbone is for code that stops at that layer; hpt's commands (--base, --backbone) refuse it.")
def export_command(source: str, fmt: str, out: Path, truncate: str | None) -> None:
    """Write a backbone in a format other code loads (torchvision or timm state dict, MoCo .pth.tar, safetensors);
    the written file is loaded back strictly before this reports it.

    With --truncate layerK only the stem and layer1..layerK are written (torchvision key names), for code that
    stops at layerK; in Python, hpt.models.truncate.load_truncated loads it."""
    path = export(source, out, fmt, truncate).path
    if truncate is not None:
        click.echo(f"wrote {path} ({fmt}, truncated after {truncate}: conv1, bn1, layer1..{truncate})")
        return
    click.echo(f"wrote {path} ({fmt})")
    if fmt == "torchvision":
        click.echo("load it with: model.load_state_dict(torch.load(path), strict=False)  # only fc.* is missing")
    elif fmt == "timm":
        click.echo("load it with: timm.create_model(NAME, num_classes=0).load_state_dict(torch.load(path))")
