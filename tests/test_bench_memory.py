"""bench/memory_per_image.py: the line through (batch, peak memory), one fresh process per batch size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "memory_per_image.py"


def test_fit_recovers_a_line() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import memory_per_image
    finally:
        sys.path.remove(str(SCRIPT.parent))
    fixed, per_image = memory_per_image.fit([(8, 500.0 + 8 * 12.5), (16, 500.0 + 16 * 12.5), (32, 500.0 + 32 * 12.5)])
    assert fixed == pytest.approx(500.0) and per_image == pytest.approx(12.5)


def test_runs_each_batch_size_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--arch", "resnet18", "--small-stem", "--width", "8",
                           "--res", "16", "--batches", "4,8", "--steps", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["rows"]] == [4, 8]
    assert all(row["peak_rss_mib"] > 100 and row["img_s"] > 0 for row in result["rows"])
    assert result["measured"] == "peak_rss_mib" and "MiB per image" in done.stdout


def test_one_batch_size_is_refused() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--batches", "8"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "at least two batch sizes" in done.stderr
