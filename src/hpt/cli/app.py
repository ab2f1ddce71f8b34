"""The `hpt` command: the group, every command registered on it, and main(), which turns errors into one line and an
exit code. Each command is a thin layer over one of hpt's Python functions; the commands live in the modules of
this package (by what they do), which never import this one."""

from __future__ import annotations

import os
import sys
import traceback

import click

from hpt import distributed
from hpt.atomic import os_error_in
from hpt.cli.analyze import analyze_group
from hpt.cli.checkpoints import export_command, inspect_command
from hpt.cli.data import data_group
from hpt.cli.demo import demo_command
from hpt.cli.doctor import doctor_command
from hpt.cli.eval import eval_group
from hpt.cli.experiment import experiment_group, report_command
from hpt.cli.output import close_log_files, log_to_file, os_error_line, setup_logging
from hpt.cli.pretrain import pretrain_command, run_command
from hpt.cli.rank_sources import rank_sources_command
from hpt.errors import HptError

_DEBUG = {"on": bool(os.environ.get("HPT_DEBUG"))}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
@click.version_option(package_name="hpt")
def cli(debug: bool, verbose: bool) -> None:
    """Hierarchical PreTraining: continue self-supervised pretraining from a Base model onto your images."""
    _DEBUG["on"] = _DEBUG["on"] or debug
    setup_logging(verbose)


for _command in (pretrain_command, run_command, inspect_command, export_command, eval_group, analyze_group,
                 experiment_group, report_command, rank_sources_command, demo_command, doctor_command, data_group):
    cli.add_command(_command)


def _one_line(err: BaseException) -> str:
    """The message of an error; one raised in a DataLoader worker carries the worker's traceback, which is cut."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        head, _, rest = last.partition(": ")
        text = rest if rest and head.split(".")[-1] == type(err).__name__ else last
    return text


def _user_error(message: str) -> None:
    """A user error: 'error: MESSAGE' on stderr and in OUT/hpt.log, exit code 2."""
    click.echo(f"error: {message}", err=True)
    log_to_file(message)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input -> one line on stderr and exit 2; a bug -> a short note (traceback with --debug)."""
    _DEBUG["on"] = bool(os.environ.get("HPT_DEBUG"))
    try:
        cli.main(args=argv, prog_name="hpt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2)
    except HptError as err:
        if _DEBUG["on"]:
            traceback.print_exc()
        _user_error(_one_line(err))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        log_to_file("interrupted")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last resort of a CLI
        if _DEBUG["on"]:
            traceback.print_exc()
        refused = os_error_in(err)  # the file system refused a read or write: the user's to fix
        if refused is not None:
            _user_error(os_error_line(refused))
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            _user_error(str(err))
        if not _DEBUG["on"]:
            click.echo(f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback, "
                       "and please report it)", err=True)
        log_to_file(f"internal error: {type(err).__name__}: {err}")
        sys.exit(1)
    finally:
        close_log_files()
        if distributed.world_size() > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
