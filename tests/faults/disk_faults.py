"""Simulated file system faults under one folder, for tests that need no root and no real full disk.

    python tests/faults/disk_faults.py --under DIR --full [--match GLOB] [--after N] -- HPT ARGUMENTS
    python tests/faults/disk_faults.py --under DIR --read-only [--errno EACCES] -- HPT ARGUMENTS

In-process: `with disk_full(DIR): main([...])` or `with read_only(DIR): main([...])`.

disk_full: writes into files under DIR fail with ENOSPC from the first byte written to the (N+1)-th file opened
for writing whose name matches GLOB (default: any file); a write that meets the fault writes half of its bytes
first, as a real full disk does. From then on the disk stays full: every later write under DIR fails too (with
sticky=False only the matching files fail, so that the error can still reach hpt.log).
read_only: creating or changing anything under DIR fails with EROFS (or the given errno, e.g. EACCES).

Python's file objects, os.open/os.write and os.mkdir are patched, which covers what hpt writes with: open, Path,
os.fdopen (tempfile's atomic writes), logging's FileHandler (opened after the patch), torch.save, numpy, safetensors' bytes, TensorBoard.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import errno
import fnmatch
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Fault:
    def __init__(self, under: Path, mode: str, match: str = "*", after: int = 0, sticky: bool = True,
                 code: int = errno.ENOSPC) -> None:
        self.under = os.path.realpath(under)
        self.mode, self.match, self.after, self.sticky, self.code = mode, match, after, sticky, code
        self.opened = 0  # matching files opened for writing
        self.full = False
        self.failing: set[str] = set()  # with sticky=False: the files that fail

    def covers(self, path: Any) -> str | None:
        """The real path when `path` (a path or a file descriptor) lies under the folder, else None."""
        try:
            if isinstance(path, int):
                real = os.readlink(f"/proc/self/fd/{path}")
            else:
                name = os.path.abspath(os.fsdecode(os.fspath(path)))
                real = os.path.join(os.path.realpath(os.path.dirname(name)), os.path.basename(name))
        except (OSError, TypeError):
            return None
        return real if real == self.under or real.startswith(self.under + os.sep) else None

    def error(self, path: str | None = None) -> OSError:
        return OSError(self.code, os.strerror(self.code), path) if path else OSError(self.code, os.strerror(self.code))

    def opening(self, path: str) -> None:
        """A file under the folder is opened for writing."""
        if self.mode == "read-only":
            raise self.error(path)
        if fnmatch.fnmatch(os.path.basename(path), self.match):
            self.opened += 1
            if self.opened > self.after:
                self.full = True
                self.failing.add(path)

    def allowed(self, path: str, size: int) -> int:
        """How many of `size` bytes a write to `path` may write before it fails."""
        if self.full and (self.sticky or path in self.failing):
            return size // 2
        return size


class _FaultyFile:
    """A writable file under the folder: writes go to the real file until the fault, which they meet half-way."""

    def __init__(self, raw: Any, path: str, fault: _Fault) -> None:
        self._raw, self._path, self._fault = raw, path, fault

    def write(self, data: Any) -> int:
        allowed = self._fault.allowed(self._path, len(data))
        if allowed < len(data):
            if allowed:
                self._raw.write(data[:allowed])
                with contextlib.suppress(OSError):
                    self._raw.flush()
            raise self._fault.error()
        return self._raw.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        self._raw.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


@contextlib.contextmanager
def _patched(fault: _Fault) -> Iterator[_Fault]:
    real_open, real_os_open, real_write, real_pwrite = io.open, os.open, os.write, os.pwrite
    real_mkdir, real_replace, real_unlink = os.mkdir, os.replace, os.unlink

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writing = any(c in mode for c in "wax+")
        path = fault.covers(file) if writing else None
        if path is not None and not isinstance(file, int):  # an fd was counted when os.open opened it
            fault.opening(path)
        handle = real_open(file, mode, *args, **kwargs)
        return _FaultyFile(handle, path, fault) if path is not None else handle

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        where = fault.covers(path) if flags & _WRITE_FLAGS else None
        if where is not None:
            fault.opening(where)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_write(fd: int, data: Any, *args: Any) -> int:
        path = fault.covers(fd)
        if path is not None and fault.allowed(path, len(data)) < len(data):
            raise fault.error()
        return (real_pwrite if args else real_write)(fd, data, *args)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        where = fault.covers(path)
        refused = fault.mode == "read-only" or (fault.full and fault.sticky)
        if where is not None and refused and not os.path.isdir(where):
            raise fault.error(where)
        real_mkdir(path, *args, **kwargs)

    def guarded(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if fault.mode == "read-only" and fault.covers(path) is not None:
                raise fault.error(os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    patches = [(io, "open", fake_open), (builtins, "open", fake_open), (os, "open", fake_os_open),
               (os, "write", fake_write), (os, "pwrite", fake_write), (os, "mkdir", fake_mkdir),
               (os, "replace", guarded(real_replace)), (os, "unlink", guarded(real_unlink))]
    originals = [(target, name, getattr(target, name)) for target, name, _ in patches]
    try:
        for target, name, value in patches:
            setattr(target, name, value)
        yield fault
    finally:
        for target, name, value in originals:
            setattr(target, name, value)


def disk_full(under: Path, match: str = "*", after: int = 0, sticky: bool = True) -> contextlib.AbstractContextManager:
    """The disk under `under` fills up at the (after+1)-th file opened for writing that matches `match`."""
    return _patched(_Fault(Path(under), "full", match, after, sticky))


def read_only(under: Path, code: int = errno.EROFS) -> contextlib.AbstractContextManager:
    """Nothing under `under` can be created or changed (EROFS, or e.g. EACCES)."""
    return _patched(_Fault(Path(under), "read-only", code=code))


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--under", required=True, type=Path)
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--full", action="store_true")
    kind.add_argument("--read-only", action="store_true")
    parser.add_argument("--match", default="*")
    parser.add_argument("--after", type=int, default=0)
    parser.add_argument("--errno", default="EROFS", choices=["EROFS", "EACCES", "EPERM"])
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    from hpt.cli import main

    fault = (disk_full(args.under, args.match, args.after) if args.full
             else read_only(args.under, getattr(errno, args.errno)))
    with fault:
        main(argv[split + 1:])


if __name__ == "__main__":
    run(sys.argv[1:])
