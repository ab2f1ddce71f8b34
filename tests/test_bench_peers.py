"""The peer benchmark (bench/peers/lightly_moco.py) runs at its tiny size: hpt's side in this environment, lightly's
where lightly imports (the side environment of bench/peers/setup_env.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_npz

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "peers" / "lightly_moco.py"


def run_tiny(tmp_path: Path, sides: str) -> dict:
    data = write_npz(tmp_path / "peers.npz", n_train=64, size=32)
    out = tmp_path / "peers.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--threads", "1", "--workers", "0", "--steps", "2",
               "--data", str(data), "--sides", sides, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_hpt_side_runs_at_the_tiny_size(tmp_path: Path) -> None:
    result = run_tiny(tmp_path, "hpt")
    (entry,) = result["rounds"]
    assert entry["order"] == ["hpt"]
    assert entry["hpt"]["img_s"] > 0 and entry["hpt"]["peak_rss_mib"] > 0
    assert entry["hpt"]["threads"] == 1
    assert result["settings"]["width"] == 8 and result["settings"]["batch"] == 16
    assert result["summary"]["hpt_img_s_median"] > 0


def test_both_sides_run_on_the_same_architecture(tmp_path: Path) -> None:
    pytest.importorskip("lightly")  # only in the side environment (torchvision does not import beside the CPU torch)
    result = run_tiny(tmp_path, "hpt,lightly")
    (entry,) = result["rounds"]
    assert entry["hpt"]["backbone_params"] == entry["lightly"]["backbone_params"]
    assert entry["ratio"] == pytest.approx(entry["hpt"]["img_s"] / entry["lightly"]["img_s"], rel=1e-3)
    assert result["summary"]["ratio_hpt_over_lightly_median"] > 0


def test_the_queue_must_hold_whole_batches(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "peers.npz", n_train=64, size=32)
    done = subprocess.run([sys.executable, str(SCRIPT), "--batch", "16", "--queue", "40", "--data", str(data)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "multiple of --batch" in done.stderr
