"""The step profilers (bench/profile_step.py for hpt, bench/peers/profile_lightly.py for lightly) run at a tiny size
and their phase tables account for the step: every phase seen, and the phases that do not nest within one
another adding up to no more than the step's wall time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_npz

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = ["--width", "8", "--res", "16", "--batch", "16", "--queue", "32", "--threads", "1", "--steps", "2",
        "--warmup", "1"]


def run_profile(script: Path, tmp_path: Path, *extra: str) -> dict:
    data = write_npz(tmp_path / "profile.npz", n_train=64, size=16)
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(script), *TINY, *extra, "--data", str(data), "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ms per step" in done.stdout and "operator (self time)" in done.stdout
    return json.loads(out.read_text())


def test_hpt_step_profile_accounts_for_the_step(tmp_path: Path) -> None:
    result = run_profile(BENCH / "profile_step.py", tmp_path)
    phases, wall = result["phases_ms"], result["wall_ms_per_step"]
    assert wall > 0
    for name in ("augment (both views)", "method forward", "key encoder", "loss", "momentum update", "enqueue",
                 "backward + optimizer", "metrics row"):
        assert phases[name] > 0, name
    inner = phases["key encoder"] + phases["loss"] + phases["momentum update"] + phases["enqueue"]
    assert inner < phases["method forward"]  # they run inside the method's forward
    outer = sum(phases[name] for name in ("augment (both views)", "method forward", "backward + optimizer",
                                          "metrics row", "finite check"))
    assert outer <= 1.05 * wall
    assert outer >= 0.3 * wall  # the labelled phases are most of the step, not a stray corner of it
    assert "aten::convolution_backward" in result["operators_self_ms"]


def test_lightly_step_profile_accounts_for_the_step(tmp_path: Path) -> None:
    pytest.importorskip("lightly")  # only in the side environment of bench/peers/setup_env.sh
    result = run_profile(BENCH / "peers" / "profile_lightly.py", tmp_path, "--workers", "0")
    phases, wall = result["phases_ms"], result["wall_ms_per_step"]
    for name in ("query encoder", "key encoder", "loss", "backward", "optimizer", "momentum update"):
        assert phases[name] > 0, name
    assert sum(phases.values()) <= 1.05 * wall
