"""The `hpt` command line (`hpt = "hpt.cli:main"`): app.py holds the group and main(); each command group has its
own module, named by what it does (pretrain, checkpoints, eval, experiment, analyze, rank_sources, demo, data), and
output.py the output folder and log every command shares."""

from hpt.cli.app import cli, main

__all__ = ["cli", "main"]
