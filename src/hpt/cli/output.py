"""A command's output folder and its log: the folder held (locked) while the command writes into it, OUT/hpt.log
(which never stops a run it cannot be written to), and the one line a file system error prints."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from hpt.atomic import (
    WRITE_ERRNOS,
    FileWriteError,
    cause_of,
    make_folder,
    remove_stale_temps,
)
from hpt.run_lock import claim

log = logging.getLogger("hpt")


class RunLogHandler(logging.FileHandler):
    """OUT/hpt.log, opened at its first record (never left empty). A write that fails (disk full) is said once on
    stderr and the log goes on to the terminal only: the files that matter report their own failures."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self._path, self._failed, self._size = path, False, 0
        self.quiet = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._failed or not self._path.parent.is_dir():  # OUT removed (a command that wrote nothing): no log
            return
        try:
            self._size = self._path.stat().st_size  # a line that fails half-way is cut off again
        except OSError:
            self._size = 0
        try:
            super().emit(record)  # opening the file may raise here; a failed write calls handleError
        except OSError as err:
            self._give_up(err)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            self._give_up(err)
        else:
            super().handleError(record)

    def _give_up(self, err: OSError) -> None:
        self._failed = True
        try:
            self.close()  # flushing what is buffered fails again
        except OSError:
            pass
        try:
            if self._size == 0:
                self._path.unlink()  # never left empty
            else:
                os.truncate(self._path, self._size)
        except OSError:
            pass
        if not self.quiet:
            click.echo(f"warning: {FileWriteError(self._path, err)}; logging to the terminal only", err=True)


def os_error_line(err: OSError) -> str:
    """One line for an OSError of the file system: the path and the cause (and the fix, for a write)."""
    if isinstance(err, FileWriteError):
        return str(err)
    cause, fix = cause_of(err)
    if err.filename is None:
        return f"{cause}; {fix}"
    if err.errno in WRITE_ERRNOS:
        return str(FileWriteError(err.filename, err))
    return f"{err.filename}: {(err.strerror or str(err)).lower()}"


def log_to_file(line: str) -> None:
    """Write a line to this command's OUT/hpt.log (where it has one and it can be written)."""
    for handler in logging.getLogger("hpt").handlers:
        if isinstance(handler, RunLogHandler):
            handler.quiet = True  # the line is on stderr already: a log that cannot take it says nothing more
            handler.handle(logging.LogRecord("hpt", logging.ERROR, __file__, 0, line, None, None))


def close_log_files() -> None:
    """Detach this command's OUT/hpt.log, so that a later command in the same process does not write to it."""
    logger = logging.getLogger("hpt")
    for handler in [h for h in logger.handlers if getattr(h, "_hpt", None) == "file"]:
        logger.removeHandler(handler)
        handler.close()


def setup_logging(verbose: bool, out: Path | None = None) -> None:
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


def claim_out(out: Path, *, create: bool = True, log_here: bool = True) -> None:
    """Hold the output folder until the command ends (HptError when another command writes into it), then log to
    OUT/hpt.log (with log_here): nothing is written into OUT before the lock is held. create=False: a missing OUT
    is left to the command to report."""
    if not create and not out.is_dir():
        return
    lock = claim(out)
    if lock is not None:
        click.get_current_context().call_on_close(lock.release)
        remove_stale_temps(out)  # of writes a killed command left; no other command writes here now
    if log_here:
        setup_logging(False, out)
    if lock is not None and lock.takeover_message:
        log.warning(lock.takeover_message)
