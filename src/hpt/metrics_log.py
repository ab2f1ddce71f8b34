"""Training metrics: one CSV per stage (truncated on resume) and TensorBoard events when available."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("hpt")


class MetricsLog:
    """Appends rows of scalar metrics to metrics.csv and TensorBoard; rows after `resume_step` are dropped."""

    def __init__(self, out_dir: Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.path = out_dir / "metrics.csv"
        self._rows = self._read_until(resume_step) if resume_step > 0 else []
        self._fields: list[str] = list(self._rows[0].keys()) if self._rows else []
        self._rewrite()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step or None)
            except ImportError:  # tensorboard is optional at run time
                log.info("tensorboard is not installed; metrics go to metrics.csv only")

    def _read_until(self, step: int) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as handle:
            return [row for row in csv.DictReader(handle) if int(row["step"]) <= step]

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as handle:
            if self._fields:
                writer = csv.DictWriter(handle, fieldnames=self._fields)
                writer.writeheader()
                writer.writerows(self._rows)

    def add(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        if not self._fields:
            self._fields = list(row.keys())
            self._rewrite()
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"pretrain/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to a results.jsonl file (the one results format that reports read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
