"""The `hpt` command: a thin layer over hpt's Python functions (each command calls one of them)."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from hpt import distributed
from hpt.atomic import make_folder, os_error_in
from hpt.cli_out import RunLogHandler, close_log_files, log_to_file, os_error_line
from hpt.errors import HptError

log = logging.getLogger("hpt")
_DEBUG = {"on": bool(os.environ.get("HPT_DEBUG"))}


def _setup_logging(verbose: bool, out: Path | None = None) -> None:
    """Log to the current stderr (and to OUT/hpt.log on rank 0); replaces handlers of earlier calls."""
    logger = logging.getLogger("hpt")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    kind = "file" if out is not None else "stream"
    for handler in [h for h in logger.handlers if getattr(h, "_hpt", None) == kind]:
        logger.removeHandler(handler)
        handler.close()
    if out is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    elif int(os.environ.get("RANK", "0")) == 0:
        make_folder(out)
        handler = RunLogHandler(out / "hpt.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    else:
        return
    handler._hpt = kind  # type: ignore[attr-defined]
    logger.addHandler(handler)


def _claim_out(out: Path, *, create: bool = True, log_here: bool = True) -> None:
    """Hold the output folder until the command ends (HptError when another command writes into it), then log to
    OUT/hpt.log (with log_here): nothing is written into OUT before the lock is held. create=False: a missing OUT
    is left to the command to report."""
    from hpt.atomic import remove_stale_temps
    from hpt.run_lock import claim

    if not create and not out.is_dir():
        return
    lock = claim(out)
    if lock is not None:
        click.get_current_context().call_on_close(lock.release)
        remove_stale_temps(out)  # of writes a killed command left; no other command writes here now
    if log_here:
        _setup_logging(False, out)
    if lock is not None and lock.takeover_message:
        log.warning(lock.takeover_message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
@click.version_option(package_name="hpt")
def cli(debug: bool, verbose: bool) -> None:
    """Hierarchical PreTraining: continue self-supervised pretraining from a Base model onto your images."""
    _DEBUG["on"] = _DEBUG["on"] or debug
    _setup_logging(verbose)


@cli.command()
@click.option("--base", required=True, help="'random', a checkpoint file, or named weights (e.g. torchvision:resnet50).")
@click.option("--data", required=True, help="Data spec, e.g. npz:PATH?split=train or folder:PATH.")
@click.option("--steps", required=True, type=int, help="Budget in steps of one global batch.")
@click.option("--train", "train_mode", type=click.Choice(["all", "bn", "bn-stats", "none"]), default="all",
              show_default=True, help="all = HPT, bn = HPT-BN, bn-stats = re-estimate BatchNorm statistics only.")
@click.option("--arch", type=click.Choice(["resnet18", "resnet34", "resnet50"]), default=None,
              help="Architecture (default: the checkpoint's; resnet50 for --base random).")
@click.option("--small-stem/--no-small-stem", default=None, help="3x3 stride-1 stem without max-pool (28-64 px).")
@click.option("--width", type=int, default=None, help="Base width of layer1 (64 in torchvision).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/pretrain"), show_default=True)
@click.option("--name", default="target", show_default=True, help="Stage name (the sub-folder of --out).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Global batch size.")
@click.option("--lr", type=float, default=0.03, show_default=True, help="Learning rate for a global batch of 256.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--image-size", type=int, default=None, help="Side of the augmented views (default: the images').")
@click.option("--remove-aug", multiple=True, help="Leave out an augmentation (repeatable), e.g. grayscale.")
@click.option("--queue-size", type=int, default=None, help="MoCo queue size (default: sized to the stage).")
@click.option("--workers", type=int, default=None, help="DataLoader workers (default: chosen by data kind).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between resume states.")
@click.option("--method", type=click.Choice(["mocov2", "simclr", "byol"]), default="mocov2", show_default=True,
              help="Self-supervised method of the stage.")
@click.option("--head-warmup-steps", type=int, default=0, show_default=True,
              help="Train only the new head for the first N steps (backbone lr 0): keeps a random head from "
                   "wrecking a pretrained backbone.")
@click.option("--lr-warmup-steps", type=int, default=0, show_default=True,
              help="Raise the lr linearly from 0 over the first N steps, then cosine decay.")
@click.option("--stop-when-converged", is_flag=True,
              help="Probe every --probe-every steps (kNN on labelled images); stop when it stops improving.")
@click.option("--probe-data", default=None, help="Labelled data for the probe (default: --data, if labelled).")
@click.option("--probe-every", type=int, default=100, show_default=True)
@click.option("--probe-patience", type=int, default=3, show_default=True, help="Probes without progress before stopping.")
@click.option("--probe-margin", type=float, default=None,
              help="Least gain that counts (0.01 = 1 point); default: one standard error of the probe's val score.")
@click.option("--anchor-weight", type=float, default=0.0, show_default=True,
              help="Weight of a distillation term to the frozen start (Base-anchored continuation); 0: off.")
@click.option("--guard", "guard_on", is_flag=True,
              help="Read a validation signal every --guard-every steps; keep a later checkpoint only when it reads "
                   "better beyond noise; roll back to the kept one when the signal drops beyond noise.")
@click.option("--guard-every", type=int, default=100, show_default=True, help="Steps between the guard's readings.")
@click.option("--guard-signal", type=click.Choice(["auto", "knn", "linear", "rank"]), default="auto",
              show_default=True, help="auto: kNN accuracy where the data has labels, else effective rank.")
@click.option("--guard-on-drop", type=click.Choice(["stop", "lower-lr"]), default="stop", show_default=True,
              help="After a roll-back: stop, or go on at a tenth of the lr.")
@click.option("--budget", type=click.Choice(["fixed", "auto"]), default="fixed", show_default=True,
              help="auto: stop once the guard's signal stops improving beyond noise (--steps is the cap).")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
              help="Any other stage setting, dotted for nested ones (repeatable), e.g. --set moco.temperature=0.1 "
                   "--set moco.head_bn=true --set augment.crop_scale=[0.5,1.0]; it wins over the options above.")
def pretrain(base: str, data: str, steps: int, train_mode: str, arch: str | None, small_stem: bool | None,
             width: int | None, out: Path, name: str, resume: bool, batch_size: int, lr: float, precision: str,
             channels_last: bool, device: str, image_size: int | None, remove_aug: tuple[str, ...],
             queue_size: int | None, workers: int | None, seed: int, checkpoint_every: int, method: str,
             head_warmup_steps: int, lr_warmup_steps: int, stop_when_converged: bool,
             probe_data: str | None, probe_every: int, probe_patience: int, probe_margin: float | None,
             anchor_weight: float, guard_on: bool, guard_every: int, guard_signal: str, guard_on_drop: str,
             budget: str, set_items: tuple[str, ...]) -> None:
    """Pretrain one stage from --base on --data; writes OUT/NAME/backbone.safetensors."""
    from hpt.config import apply_overrides
    from hpt.hierarchy import pretrain as run_pretrain

    moco = {"queue_size": queue_size} if queue_size else {}
    settings: dict[str, Any] = {
        "batch_size": batch_size, "lr": lr, "precision": precision, "channels_last": channels_last,
        "device": device, "seed": seed, "workers": workers, "checkpoint_every": checkpoint_every, "moco": moco,
        "method": method, "head_warmup_steps": head_warmup_steps, "lr_warmup_steps": lr_warmup_steps,
        "augment": {"image_size": image_size, "remove": list(remove_aug)},
        "stop": {"data": probe_data, "every": probe_every, "patience": probe_patience, "margin": probe_margin}
        if stop_when_converged else None,
        "anchor": {"weight": anchor_weight}, "budget": budget,
        "guard": {"every": guard_every, "signal": guard_signal, "on_drop": guard_on_drop}
        if guard_on or budget == "auto" else None,
    }
    settings = apply_overrides(settings, list(set_items))
    distributed.init_distributed(str(settings.get("device", "auto")))  # every rank learns whether OUT is free
    _claim_out(out)
    result = run_pretrain(base, data, steps, out=out, name=name, train=train_mode, arch=arch, small_stem=small_stem,
                          width=width, resume=resume, **settings)
    _print_summary(result)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (overrides 'out:').")
@click.option("--resume", is_flag=True, help="Continue an interrupted stage; finished stages are always skipped.")
def run(config: Path, overrides: tuple[str, ...], out: Path | None, resume: bool) -> None:
    """Run the stages of a hierarchy YAML in order. OVERRIDES: key=value, e.g. stages.target.steps=100."""
    from hpt.hierarchy import load_hierarchy, run_hierarchy

    hierarchy = load_hierarchy(config, list(overrides))
    out_dir = out or Path(hierarchy.out or "runs/hpt")
    distributed.init_distributed(hierarchy.stages[0].device)  # every rank learns whether OUT is free
    _claim_out(out_dir)
    _print_summary(run_hierarchy(hierarchy, out_dir, resume=resume))


@cli.command()
@click.argument("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect(checkpoint: str, as_json: bool) -> None:
    """Detected format, architecture, parameter count, keys set aside of a checkpoint, and whether it loads.

    Exits with code 2 when the backbone does not load into its architecture (missing, unexpected or
    mis-shaped keys), as `hpt pretrain --base` would refuse it."""
    from dataclasses import asdict

    from hpt.models import inspect_checkpoint

    info = inspect_checkpoint(checkpoint)
    check = info.load_check
    refusal = None
    if check is not None and not check.loadable:  # without a target, the reason names its own fix
        fix = ""
        if check.missing or check.unexpected:
            fix = ("; its key names do not match a ResNet's (renamed keys, or a prefix hpt does not strip): rename "
                   "them to torchvision's ResNet names and re-save")
        elif check.shape_mismatches:
            fix = "; the file is damaged or was edited: re-export it from the model it came from"
        refusal = HptError(f"{info.path} is {check.describe()}{fix}")
    record = asdict(info)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        if refusal is not None:
            raise refusal
        return
    spec = info.spec
    click.echo(f"file:        {info.path}")
    click.echo(f"format:      {info.format}")
    if spec is not None:
        click.echo(f"arch:        {spec.arch} (small_stem={spec.small_stem}, width={spec.width})")
    click.echo(f"parameters:  {info.num_params:,} in {info.backbone_keys} backbone tensors")
    ignored = info.ignored_keys
    shown = ", ".join(ignored[:8]) + (f", ... ({len(ignored)} in all)" if len(ignored) > 8 else "")
    click.echo(f"set aside:   {shown or 'nothing'}")
    for key, value in sorted(info.metadata.items()):
        click.echo(f"meta {key}: {value}")
    if check is not None:
        click.echo(f"loadable:    {check.describe()}")
    if refusal is not None:
        raise refusal


@cli.command()
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["torchvision", "moco", "safetensors"]), default="torchvision",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--truncate", type=click.Choice(["layer1", "layer2", "layer3"]), default=None,
              help="Keep only conv1/bn1 and layer1..this layer (torchvision or safetensors format). A truncated "
                   "backbone is for code that stops at that layer; hpt's commands (--base, --backbone) refuse it.")
def export(source: str, fmt: str, out: Path, truncate: str | None) -> None:
    """Write a backbone in a format other code loads (torchvision state dict, MoCo .pth.tar, safetensors).

    With --truncate layerK only the stem and layer1..layerK are written (torchvision key names), for code that
    stops at layerK; in Python, hpt.models.truncate.load_truncated loads it."""
    if truncate is not None:
        from hpt.models.truncate import export_truncated

        path = export_truncated(source, out, fmt, truncate)
        click.echo(f"wrote {path} ({fmt}, truncated after {truncate}: conv1, bn1, layer1..{truncate})")
        return
    from hpt.models import export_backbone

    path = export_backbone(source, out, fmt)
    click.echo(f"wrote {path} ({fmt})")
    if fmt == "torchvision":
        click.echo("load it with: model.load_state_dict(torch.load(path), strict=False)  # only fc.* is missing")


def _register_commands() -> None:
    from hpt.cli_analyze import analyze_group
    from hpt.cli_demo import demo_command
    from hpt.cli_eval import eval_group
    from hpt.cli_experiment import experiment_group, report_command
    from hpt.cli_sources import rank_sources_command

    cli.add_command(eval_group)
    cli.add_command(analyze_group)
    cli.add_command(experiment_group)
    cli.add_command(report_command)
    cli.add_command(rank_sources_command)
    cli.add_command(demo_command)


_register_commands()


def _print_summary(result: object) -> None:
    if distributed.rank() != 0:
        return
    for stage in result.stages:  # type: ignore[attr-defined]
        s = stage.summary
        status = "skipped (finished earlier)" if stage.skipped else "done"
        rate = f"{s['images_per_s']:.0f} img/s" if "images_per_s" in s else ""
        click.echo(f"{stage.name:>12}: {status:<26} {s.get('steps_done', 0):>7} steps {s.get('wall_time_s', 0):9.1f} s "
                   f"{rate:>12}  {stage.backbone_path}")
        if s.get("stopped_early"):
            stop = s["stopped_early"]
            click.echo(f"{'':>14}stopped at step {stop['step']} ({stop['steps_saved']} of the budget saved): "
                       f"{stop['reason']}")
        if s.get("guard"):
            guard = s["guard"]
            said = s.get("stopped_early") and s["stopped_early"]["reason"] == guard["reason"]
            click.echo(f"{'':>14}guard ({guard['signal']}): kept step {guard['kept_step']} "
                       f"({guard['kept_value']:.4f})" + ("" if said else f"; {guard['reason']}"))
    click.echo(f"total wall time {result.wall_time_s:.1f} s; backbones and logs in {result.out_dir}")  # type: ignore[attr-defined]


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
