"""What the repository tracks: no large binaries (run states, snapshots) and no bookkeeping words in its files.

They read the git checkout the tests run from; outside one (an unpacked sdist, say) they are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000  # a tracked file above this is a run's output, not source
LARGE_FILES_ALLOWED_UNDER = ("src/hpt/assets/", "tests/fixtures/")  # the shipped base, the demo's data, fixtures
BOOKKEEPING = r"session [0-9]|issue ?#?[0-9]"  # words of a work log, not of the product


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def checkout() -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    top = git("rev-parse", "--show-toplevel")
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
        pytest.skip("not run from a git checkout of the repository")
    return ROOT


def tracked() -> list[str]:
    listing = git("ls-files", "-z")
    assert listing.returncode == 0, listing.stderr
    return [path for path in listing.stdout.split("\0") if path]


def test_no_large_files_are_tracked_outside_the_assets(checkout: Path) -> None:
    large = []
    for path in tracked():
        if path.startswith(LARGE_FILES_ALLOWED_UNDER):
            continue
        file = checkout / path
        if file.is_file() and not file.is_symlink() and file.stat().st_size > MAX_BYTES:
            large.append(f"{path} ({file.stat().st_size / 1e6:.1f} MB)")
    assert not large, f"tracked files over {MAX_BYTES / 1e6:g} MB (run outputs belong under runs/): {large}"


def test_no_bookkeeping_words_in_tracked_files(checkout: Path) -> None:
    found = git("grep", "-n", "-I", "-i", "-E", BOOKKEEPING)
    assert found.returncode in (0, 1), found.stderr  # 1: no match
    assert found.returncode == 1, f"say what the thing does instead:\n{found.stdout}"


def test_no_bookkeeping_words_in_file_names(checkout: Path) -> None:
    names = re.compile(r"(session|issue)[ _-]?#?[0-9]", re.IGNORECASE)
    assert not [path for path in tracked() if names.search(path)]
