"""bench/gpu_check.sh --tiny runs every part on the CPU at tiny size and writes them all to one figures file; a part
that fails is reported there and makes the script exit non-zero."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
SECTIONS = ("== tests ==", "== timings ==", "== lightly comparison ==", "== torchrun run ==")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def gpu_check(tmp_path: Path, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": python, "PEERS_ENV": str(tmp_path / "no-peers"),
           "TMPDIR": str(tmp_path)}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=600)


def test_tiny_run_passes_every_part_on_the_cpu_and_writes_one_figures_file(tmp_path: Path) -> None:
    figures = tmp_path / "figures" / "gpu_check.txt"
    done = gpu_check(tmp_path, "--tiny", "--out", str(figures))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"figures written to {figures}" in done.stdout
    text = figures.read_text()
    assert all(section in text for section in SECTIONS), text
    assert "mode: tiny" in text
    assert text.count("status: passed") == 3 and "FAILED" not in text, text
    assert re.search(r"^=+ 5 passed", text, re.MULTILINE), text  # the tests marked gpu ran, on the CPU
    for precision in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            assert re.search(rf"^{precision} +{layout} +compute limit +[0-9.]+ img/s +full step +[0-9.]+ img/s",
                             text, re.MULTILINE), text
    assert "the lightly comparison was not run: the peer environment is absent" in text
    assert "world size 1, global batch 8, 4 steps" in text
    assert "checks: one process ok, rank checksum is the saved backbone's ok, trained on cpu ok" in text
    assert "result: every part that ran passed" in text
    assert not list(tmp_path.glob("hpt-gpu-check.*"))  # its work folder is removed


def test_a_failing_part_is_reported_and_makes_the_script_exit_non_zero(tmp_path: Path) -> None:
    figures = tmp_path / "gpu_check.txt"
    done = gpu_check(tmp_path, "--out", str(figures), python=shutil.which("false") or "/bin/false")
    assert done.returncode == 1
    text = figures.read_text()
    assert all(section in text for section in SECTIONS), text
    assert "no CUDA GPU is visible" in text
    assert text.count("status: FAILED") == 3
    assert "result: FAILED: tests,timings,torchrun run" in text
