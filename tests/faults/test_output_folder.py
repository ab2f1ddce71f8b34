"""One command at a time writes into an output folder: a second one is refused before it writes anything, a lock
left by a dead process is taken over, one from another host is not, and the lock goes when the command ends."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from hpt import run_lock
from hpt.cli import main
from hpt.errors import HptError
from hpt.models import build_resnet, save_backbone
from hpt.pretrain import hierarchy

from ..conftest import write_npz
from ..helpers import TINY_STAGE, run_cli, write_hierarchy
from .disk_faults import disk_full
from .test_filesystem_errors import call, error_line, files

HOLD = ("import sys; from hpt.run_lock import acquire; acquire(sys.argv[1], 'hpt run held.yaml'); "
        "print('held', flush=True); sys.stdin.read()")
TINY = ["--arch", "resnet18", "--small-stem", "--width", "8", "--batch-size", "16", "--device", "cpu",
        "--workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("lock-data") / "tiny.npz")


@pytest.fixture(scope="module")
def config(data: Path) -> Path:
    return write_hierarchy(data.parent / "h.yaml", [{"name": "target", "data": f"npz:{data}", "steps": 4}])


@pytest.fixture(scope="module")
def finished(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lock-finished") / "out"
    main(["run", str(config), "--out", str(out)])
    assert (out / "target" / "summary.json").exists()
    return out


def experiment_file(data: Path, folder: Path) -> Path:
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), folder / "base.safetensors")
    raw = {"name": "tiny", "target": f"npz:{data}", "base": {"checkpoint": str(folder / "base.safetensors")},
           "defaults": TINY_STAGE, "budgets": {"hpt": 2, "hpt_bn": 2, "target": 2, "bn_stats": 2},
           "eval": {"protocols": ["knn"], "device": "cpu"}}
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_command_writing_into_a_held_folder_is_refused(capsys: pytest.CaptureFixture[str], config: Path,
                                                            data: Path, finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = files(out)
        commands = [
            ["run", str(config), "--out", str(out)],
            ["run", str(config), "--out", str(out), "--resume"],
            ["pretrain", "--base", "random", "--data", f"npz:{data}", "--steps", "2", "--out", str(out), *TINY],
            ["eval", "knn", "--backbone", "random", "--arch", "resnet18", "--data", f"npz:{data}", "--out", str(out)],
            ["experiment", "compare", str(experiment_file(data, tmp_path)), "--out", str(out)],
            ["report", str(out)],
            ["demo", "--out", str(out)],
        ]
        for argv in commands:
            code, err = call(capsys, *argv)
            assert code == 2, (argv, err)
            line = error_line(err)
            assert line.startswith(f"error: {out} is in use by another hpt command (pid {holder.pid} on this host, "
                                   "`hpt run held.yaml`, started "), (argv, line)
            assert line.endswith("); wait for it to finish, or choose another --out"), line
            assert files(out) == before, argv  # nothing written, not even a log line
    finally:
        holder.communicate("", timeout=60)
    assert not (out / run_lock.LOCK_NAME).exists()  # the holder released it when it ended


def test_a_lock_left_by_a_dead_process_is_taken_over(capsys: pytest.CaptureFixture[str], config: Path,
                                                     finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "command": "hpt run old.yaml", "started": "earlier"}
    (out / run_lock.LOCK_NAME).write_text(json.dumps(record))
    code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 0, err
    said = (f"{out}: took over the lock left by pid {dead.pid} on this host, `hpt run old.yaml`, started earlier, "
            "which is no longer running")
    assert said in err and said in (out / "hpt.log").read_text()
    assert not (out / run_lock.LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused(capsys: pytest.CaptureFixture[str], config: Path, finished: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    record = {"pid": 4242, "host": "gpu-node-7", "command": "hpt run big.yaml", "started": "2024-01-01 10:00:00"}
    (out / run_lock.LOCK_NAME).write_text(json.dumps(record))
    before = files(out)
    code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 2
    assert error_line(err) == (
        f"error: {out} is locked by a run on another host (pid 4242 on host gpu-node-7, `hpt run big.yaml`, started "
        f"2024-01-01 10:00:00); if that run is no longer running, delete {out / run_lock.LOCK_NAME} and run again, "
        "or choose another --out")
    assert files(out) == before


@pytest.mark.parametrize(("raised", "code"), [(KeyboardInterrupt(), 130), (HptError("bad input"), 2),
                                              (RuntimeError("a bug"), 1)])
def test_the_lock_goes_when_the_command_fails(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                              config: Path, finished: Path, tmp_path: Path, raised: BaseException,
                                              code: int) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)

    def fail(*args: object, **kwargs: object) -> None:
        assert (out / run_lock.LOCK_NAME).exists()  # held while the command runs
        raise raised

    monkeypatch.setattr(hierarchy, "run_hierarchy", fail)
    assert call(capsys, "run", str(config), "--out", str(out))[0] == code
    assert not (out / run_lock.LOCK_NAME).exists() and run_lock._HELD == {}


def test_a_command_that_fails_early_leaves_no_folder(capsys: pytest.CaptureFixture[str], data: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    code, err = call(capsys, "pretrain", "--base", str(tmp_path / "missing.pt"), "--data", f"npz:{data}",
                     "--steps", "2", "--out", str(out), *TINY)
    assert code == 2, err
    assert not (tmp_path / "new").exists()


def test_a_refused_rerun_changes_nothing(capsys: pytest.CaptureFixture[str], config: Path, finished: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = files(out)
    stamp = (out / "hierarchy.yaml").stat().st_mtime_ns
    code, err = call(capsys, "run", str(config), "--out", str(out), "stages.target.steps=5")
    assert code == 2
    line = error_line(err)
    assert "was run with other settings" in line and "steps: 4 -> 5" in line
    after = files(out)
    log = after.pop("hpt.log")
    assert after == {k: v for k, v in before.items() if k != "hpt.log"}
    assert (out / "hierarchy.yaml").stat().st_mtime_ns == stamp
    assert log.startswith(before["hpt.log"]) and log.decode().rstrip().endswith(line.removeprefix("error: "))


def test_temp_files_of_a_killed_write_are_removed_on_resume(capsys: pytest.CaptureFixture[str], config: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    with disk_full(tmp_path, match="*last.pt*", after=1):  # stops the stage after its state of step 2
        assert call(capsys, "run", str(config), "--out", str(out))[0] == 2
    stale = [out / "target" / "state" / ".last.pt.k2j4h6g8.tmp", out / "target" / ".summary.json.abcd1234.tmp",
             out / ".hierarchy.yaml.q1w2e3r4.tmp", out / "target" / ".metrics.csv.zz_99yy8.tmp"]
    kept = [out / "target" / "state" / "notes.tmp", out / "target" / ".cache.tmp", out / "mine.txt"]
    for path in stale + kept:
        path.write_bytes(b"half")
    code, err = call(capsys, "run", str(config), "--out", str(out), "--resume")
    assert code == 0, err
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"half" for p in kept)


def _claim_on_rank(rank: int, world: int, port: int, folders: list[str], report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    outcomes = []
    for folder in folders:
        try:
            lock = run_lock.claim(folder)
            outcomes.append("held" if lock is not None else "not rank 0")
            if lock is not None:
                lock.release()
        except HptError as err:
            outcomes.append(f"error: {err}")
    Path(report, f"rank{rank}.json").write_text(json.dumps(outcomes))
    dist.destroy_process_group()


def test_under_torchrun_rank_0_locks_and_every_rank_learns_the_outcome(tmp_path: Path) -> None:
    free, taken = tmp_path / "free", tmp_path / "taken"
    taken.mkdir()
    (taken / run_lock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_claim_on_rank, args=(2, port, [str(free), str(taken)], str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0[0] == "held" and rank1[0] == "not rank 0"
    assert rank0[1] == rank1[1] and rank0[1].startswith(f"error: {taken} is locked by a run on another host")
    assert not (free / run_lock.LOCK_NAME).exists()


@pytest.mark.slow
def test_two_runs_started_on_one_folder(data: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [{"name": "target", "data": f"npz:{data}", "steps": 60}])
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "hpt", "run", str(config), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not (out / "target" / "config.yaml").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    second = run_cli("run", str(config), "--out", str(out))
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert error_line(second.stderr).startswith(f"error: {out} is in use by another hpt command (pid {first.pid} ")
    rows = (out / "target" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [str(step) for step in range(1, 61)]
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
