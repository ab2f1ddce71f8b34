"""Under torchrun, rank 0 decides when a stage stops early and every rank stops at that step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..helpers import FAULT_RUNNER, write_hierarchy
from ..test_ddp import free_port


def test_ranks_whose_probe_scores_disagree_stop_together_at_rank_0s_step(tiny_npz: Path, tmp_path: Path) -> None:
    # rank 0's probe scores stay flat (stop after one probe without gain), rank 1's rise (it would never stop)
    stop = {"every": 1, "patience": 1, "margin": 0.0}
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 6,
                                                    "stop": stop}])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(FAULT_RUNNER), "--probe-scores-by-rank", "--",
           "run", str(config), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun ends its ranks on SIGTERM (they run in sessions of their own)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        raise AssertionError("the two ranks did not finish: one stopped while the other trained on") from None
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "t" / "summary.json").read_text())
    assert summary["stopped_early"]["step"] == 1 and summary["steps_done"] == 1
    assert summary["stopped_early"]["probe_history"] == [[0, 0.5], [1, 0.5]]  # rank 0's scores
    checksums = summary["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1] == summary["backbone_sha256"]
