"""Two processes with gloo on the CPU train to identical weights on both ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from .helpers import write_hierarchy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_ends_with_identical_weights(tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [
        {"name": "t", "data": f"npz:{tiny_npz}", "steps": 3, "train": "all"},
        {"name": "bn", "data": f"npz:{tiny_npz}", "steps": 2, "train": "bn"},
    ])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "hpt", "run", str(config), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("t", "bn"):
        summary = json.loads((tmp_path / "out" / name / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_batch"] == 16
        checksums = summary["rank_checksums"]
        assert len(checksums) == 2 and checksums[0] == checksums[1] == summary["backbone_sha256"]
    assert "global batch 16 = 8 per process x 2" in done.stderr
