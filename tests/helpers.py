"""Small helpers shared by the engine tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpt.cli import main

TINY_STAGE = {"batch_size": 16, "precision": "fp32", "device": "cpu", "log_every": 1, "checkpoint_every": 2,
              "workers": 0, "moco": {"dim": 16, "bn_splits": 2}, "augment": {"image_size": 16}}
TINY_BASE = {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8}
FAULT_RUNNER = Path(__file__).resolve().parent / "faults" / "fault_runner.py"


def write_hierarchy(path: Path, stages: list[dict], base: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"base": base or TINY_BASE, "defaults": TINY_STAGE, "stages": stages}))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            fault: list[str] | None = None) -> subprocess.CompletedProcess:
    """`hpt ARGS` in a new process; fault: options of tests/faults/fault_runner.py (e.g. a signal after a step)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, str(FAULT_RUNNER), *fault, "--"] if fault is not None else [sys.executable, "-m", "hpt"]
    return subprocess.run([*command, *args], check=False, capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=600)


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
