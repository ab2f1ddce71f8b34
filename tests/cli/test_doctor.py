"""`hpt doctor` and `hpt --version`: the machine's checks, printed and as JSON; problems exit 2 with one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hpt import __version__, doctor
from tests.helpers import assert_one_line_error, call


def test_version_names_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--version")
    assert code == 0 and __version__ in out


def test_doctor_lists_every_check_and_succeeds(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, out, err = call(capsys, "doctor", "--out", str(tmp_path / "runs"))
    assert code == 0, err
    for name in ("hpt", "torch", "extra [dicom]", "extra [tiff]", "hpt cache", "weights cache", "output folder"):
        assert f"  {name} " in out, out
    assert str(tmp_path / "cache") in out and "(will be created)" in out


def test_doctor_json_is_the_checks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = call(capsys, "doctor", "--json", "--out", str(tmp_path))
    assert code == 0
    rows = json.loads(out)
    assert {row["status"] for row in rows} <= {"ok", "note", "problem"}
    assert [row["name"] for row in rows] == [check.name for check in doctor.checks(tmp_path)]


def test_an_unwritable_output_folder_is_one_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = call(capsys, "doctor", "--out", str(blocker / "runs"))
    assert_one_line_error(code, err, "1 problem(s)", "output folder", "is not a folder")
    assert "!!  output folder" in out


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pydicom" else real_find_spec(name, *a))
    row = next(check for check in doctor.checks(tmp_path) if check.name == "extra [dicom]")
    assert row.status == "note" and "pip install 'hpt[dicom]'" in row.detail
