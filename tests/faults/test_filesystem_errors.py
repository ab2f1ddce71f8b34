"""A file system that refuses a write (disk full, read-only, no permission, --out naming a file) is a user error:
one line naming the path and the cause, exit code 2, and no empty, half-written or temp file left behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpt.atomic import FileWriteError, atomic_write
from hpt.cli import main
from hpt.metrics_log import MetricsLog, append_result
from hpt.pretrain.state import load_state

from ..conftest import write_npz
from ..helpers import write_hierarchy
from .disk_faults import disk_full, read_only

FULL = "no space left on device; free space or choose another --out"


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    _, err = capsys.readouterr()
    return int(exit_info.value.code or 0), err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_no_debris(folder: Path) -> None:
    """No temp file of an atomic write, no empty file, no lock file."""
    for path in folder.rglob("*"):
        assert not path.name.endswith(".tmp"), path
        assert path.name != ".hpt.lock", path
        if path.is_file() and "tensorboard" not in path.parts:
            assert path.stat().st_size > 0, path


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fs-config")
    npz = write_npz(folder / "tiny.npz")
    return write_hierarchy(folder / "h.yaml", [{"name": "target", "data": f"npz:{npz}", "steps": 4}])


@pytest.fixture(scope="module")
def finished(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fs-finished") / "out"
    main(["run", str(config), "--out", str(out)])  # returns when it succeeds
    assert (out / "target" / "summary.json").exists()
    return out


def test_out_naming_a_file(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 2
    assert error_line(err) == f"error: --out {out} is a file, not a folder; choose another --out"
    assert out.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_out_below_a_file(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    code, err = call(capsys, "run", str(config), "--out", str(blocker / "run"))
    assert code == 2
    assert error_line(err) == (f"error: cannot create the folder {blocker / 'run'}: {blocker} is a file, not a "
                               "folder; choose another --out")
    assert blocker.read_text() == "keep me"


PERMISSION = "permission denied; choose another --out or change its permissions"


@pytest.mark.parametrize(("code", "cause"), [(errno.EROFS, "read-only file system; choose another --out"),
                                             (errno.EACCES, PERMISSION)])
def test_read_only_parent_of_a_new_out(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path,
                                       code: int, cause: str) -> None:
    out = tmp_path / "ro" / "out"
    out.parent.mkdir()
    with read_only(out.parent, code):
        rc, err = call(capsys, "run", str(config), "--out", str(out))
    assert rc == 2
    assert error_line(err) == f"error: cannot create the folder {out}: {cause}"
    assert list(out.parent.iterdir()) == []


def test_read_only_finished_run_is_left_as_it_was(capsys: pytest.CaptureFixture[str], config: Path,
                                                  finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = files(out)
    with read_only(out):
        code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 2
    assert error_line(err) == f"error: cannot write {out / '.hpt.lock'}: read-only file system; choose another --out"
    assert files(out) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_by_the_folder_mode(capsys: pytest.CaptureFixture[str], config: Path,
                                              tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = call(capsys, "run", str(config), "--out", str(parent / "out"))
    finally:
        parent.chmod(0o755)
    assert code == 2
    assert error_line(err) == (f"error: cannot create the folder {parent / 'out'}: permission denied; choose "
                               "another --out or change its permissions")
    assert list(parent.iterdir()) == []


def test_disk_full_from_the_first_write(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with disk_full(tmp_path):
        code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 2
    assert error_line(err) == f"error: cannot write {out / '.hpt.lock'}: {FULL}"
    assert not out.exists()  # the folder the command made is gone again


def test_disk_full_at_a_checkpoint_keeps_the_last_one(capsys: pytest.CaptureFixture[str], config: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    with disk_full(tmp_path, match="*last.pt*", after=1):  # the state of step 2 fits, that of step 4 does not
        code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 2
    assert error_line(err) == f"error: cannot write {out / 'target' / 'state' / 'last.pt'}: {FULL}"
    assert_no_debris(out)
    assert load_state(out / "target" / "state")["step"] == 2  # the earlier state, whole
    rows = (out / "target" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["step", "1", "2", "3", "4"]
    assert (out / "hpt.log").read_text().endswith("\n")  # no line cut half-way
    assert not (out / "target" / "summary.json").exists()
    code, err = call(capsys, "run", str(config), "--out", str(out), "--resume")  # space freed: it finishes
    assert code == 0, err
    assert "4 steps from step 2" in (out / "hpt.log").read_text()  # resumed, not restarted


def test_the_error_reaches_the_log_when_the_log_can_be_written(capsys: pytest.CaptureFixture[str], config: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    with disk_full(tmp_path, match="*backbone.safetensors*", sticky=False):  # a quota on that one file
        code, err = call(capsys, "run", str(config), "--out", str(out))
    assert code == 2
    line = error_line(err)
    assert line == f"error: cannot write {out / 'target' / 'backbone.safetensors'}: {FULL}"
    assert (out / "hpt.log").read_text().splitlines()[-1].endswith(f"ERROR {line.removeprefix('error: ')}")
    assert_no_debris(out)


def test_a_failed_metrics_row_leaves_metrics_csv_as_it_was(tmp_path: Path) -> None:
    metrics = MetricsLog(tmp_path, tensorboard=False)
    assert not (tmp_path / "metrics.csv").exists()  # not created empty
    metrics.add(1, {"loss": 1.0})
    metrics.add(2, {"loss": 0.5})
    before = (tmp_path / "metrics.csv").read_bytes()
    with disk_full(tmp_path), pytest.raises(FileWriteError, match="no space left on device"):
        metrics.add(3, {"loss": 0.25})
    assert (tmp_path / "metrics.csv").read_bytes() == before


def test_a_failed_results_append_leaves_results_jsonl_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_result(path, {"stage": "a"})
    before = path.read_bytes()
    with disk_full(tmp_path), pytest.raises(FileWriteError) as caught:
        append_result(path, {"stage": "b" * 10_000})
    assert str(caught.value) == f"cannot write {path}: {FULL}"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_torch_save_failing_inside_torch_is_a_write_error(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(b"old")
    with disk_full(tmp_path), pytest.raises(FileWriteError) as caught:  # torch raises RuntimeError around it
        atomic_write(path, lambda handle: torch.save({"w": torch.zeros(100_000)}, handle))
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert str(caught.value) == f"cannot write {path}: {FULL}"
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_the_command_line_reports_a_full_disk(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = Path(__file__).with_name("disk_faults.py")
    done = subprocess.run([sys.executable, str(runner), "--under", str(tmp_path), "--full", "--match", "*last.pt*",
                           "--", "run", str(config), "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, check=False)
    assert done.returncode == 2, done.stderr
    assert error_line(done.stderr) == f"error: cannot write {out / 'target' / 'state' / 'last.pt'}: {FULL}"
    assert "internal error" not in done.stderr
    assert_no_debris(out)
