"""Training metrics: one CSV per stage (truncated on resume) and TensorBoard events when available."""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

from hpt.atomic import append_bytes, atomic_write, os_error_in, write_error

log = logging.getLogger("hpt")


class MetricsLog:
    """Appends rows of scalar metrics to metrics.csv and TensorBoard; rows after `resume_step` are dropped.

    metrics.csv is created with its first row (never empty) and each row is appended whole or not at all."""

    def __init__(self, out_dir: Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.path = out_dir / "metrics.csv"
        self._rows = self._read_until(resume_step) if resume_step > 0 else []
        self._fields: list[str] = list(self._rows[0].keys()) if self._rows else []
        if self._rows:
            self._rewrite()
        else:  # a stage starting again: the rows of its earlier start go
            try:
                self.path.unlink(missing_ok=True)
            except OSError as err:
                raise write_error(self.path, err) from None
        self._tb = None
        self._tb_dir = out_dir / "tensorboard"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                log.info("tensorboard is not installed; metrics go to metrics.csv only")
            else:
                _quiet_tensorboard_thread()
                try:
                    self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=resume_step or None)
                except OSError as err:
                    raise self._tb_error(err) from None

    def _read_until(self, step: int) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as handle:
            return [row for row in csv.DictReader(handle) if int(row["step"]) <= step]

    def _csv(self, rows: list[dict[str, Any]], header: bool) -> bytes:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self._fields, extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return text.getvalue().encode()

    def _rewrite(self) -> None:
        data = self._csv(self._rows, header=True)
        atomic_write(self.path, lambda handle: handle.write(data))

    def add(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        if not self._fields or not self.path.exists():
            self._fields = self._fields or list(row.keys())
            data = self._csv([row], header=True)
            atomic_write(self.path, lambda handle: handle.write(data))
        else:
            append_bytes(self.path, self._csv([row], header=False))
        if self._tb is not None:
            try:
                for key, value in values.items():
                    self._tb.add_scalar(f"pretrain/{key}", value, step)
            except OSError as err:
                raise self._tb_error(err) from None

    def _tb_error(self, err: OSError) -> BaseException:
        """A TensorBoard writer's failed write as one line naming its folder; empty event files are removed."""
        for events in self._tb_dir.glob("events.out.tfevents.*"):
            try:
                if events.stat().st_size == 0:
                    events.unlink()
            except OSError:
                pass
        return write_error(self._tb_dir, err)

    def close(self) -> None:
        """Flush TensorBoard's events; a failure only warns (metrics.csv holds every row already)."""
        if self._tb is not None:
            try:
                self._tb.close()
            except OSError as err:
                mapped = self._tb_error(err)
                if mapped is err:
                    raise
                log.warning("%s", mapped)


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes its events from a thread, whose failed write would print a traceback; the writer hands
    the error on to its next add_scalar or close, where MetricsLog turns it into one line."""
    if getattr(threading.excepthook, "_hpt", False):
        return
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and os_error_in(args.exc_value) is not None:
            return
        previous(args)

    hook._hpt = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to a results.jsonl file (the one results format that reports read), atomically:
    the file is rewritten whole, so that a crash or a full disk leaves it as it was."""
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    if old and not old.endswith(b"\n"):  # a line cut short by an older, non-atomic append
        old += b"\n"
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda handle: handle.write(old + line))
