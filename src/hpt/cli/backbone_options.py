"""The options that name a backbone's architecture (--arch, --small-stem, --width), shared by every command that
builds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from hpt.models.families import arch_names, is_arch


def _check_arch(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not is_arch(value):
        raise click.BadParameter(f"{value!r} is not an architecture hpt builds; choose one of: {arch_names()}")
    return value


def architecture_options(default_note: str) -> list[Callable[[Any], Any]]:
    """--arch (any family's name, checked), --small-stem and --width (ResNet only); `default_note` says what the
    architecture is when --arch is not given."""
    return [
        click.option("--arch", default=None, callback=_check_arch,
                     help=f"Architecture: resnet18/34/50, vit_tiny_patch4_32 ..., convnext_atto_patch2 ... "
                          f"(default: {default_note})."),
        click.option("--small-stem/--no-small-stem", default=None,
                     help="ResNet: 3x3 stride-1 stem without max-pool (28-64 px)."),
        click.option("--width", type=int, default=None, help="ResNet: base width of layer1 (64 in torchvision)."),
    ]
