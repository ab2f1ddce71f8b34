"""One hpt command at a time writes into an output folder: OUT/.hpt.lock holds the writer's pid, host and command.

The lock file is held with flock(2) for as long as the command runs, so the kernel frees it when the process dies
however it dies; a lock file left behind by a dead process on this host is taken over with a warning naming its pid.
A lock file written on another host is never taken over (that run may be alive): the message says how to remove it.
On file systems without flock, the pid in the file decides (a live process on this host keeps the folder).
Under torchrun only rank 0 holds the lock; every rank learns rank 0's outcome and stops with the same error.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpt import distributed
from hpt.atomic import make_folder, write_error
from hpt.errors import HptError

log = logging.getLogger("hpt")

LOCK_NAME = ".hpt.lock"
_HELD: dict[Path, OutputLock] = {}  # the folders this process holds, by resolved path (a second claim nests)


@dataclass
class Holder:
    """Who wrote a lock file (fields may be missing from a damaged or half-written one)."""

    pid: int | None = None
    host: str | None = None
    command: str | None = None
    started: str | None = None

    def describe(self) -> str:
        where = "this host" if self.host == socket.gethostname() else f"host {self.host or 'unknown'}"
        parts = [f"pid {self.pid if self.pid is not None else 'unknown'} on {where}"]
        if self.command:
            parts.append(f"`{self.command}`")
        if self.started:
            parts.append(f"started {self.started}")
        return ", ".join(parts)


class OutputLock:
    """A held output folder; release() (idempotent, also run at exit) deletes the lock file."""

    def __init__(self, folder: Path, fd: int, created: list[Path], took_over: Holder | None) -> None:
        self.folder, self.path, self._fd = folder, folder / LOCK_NAME, fd
        self.created = created  # folders this claim made (removed again at release while empty)
        self.took_over = took_over  # the dead holder whose stale lock was replaced, if any
        self._pid, self._depth = os.getpid(), 1

    @property
    def takeover_message(self) -> str | None:
        if self.took_over is None:
            return None
        return f"{self.folder}: took over the lock left by {self.took_over.describe()}, which is no longer running"

    def release(self) -> None:
        if self._fd < 0 or os.getpid() != self._pid:  # released already, or a forked child (a DataLoader worker)
            return
        self._depth -= 1
        if self._depth > 0:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1
        _HELD.pop(self.folder.resolve(), None)
        atexit.unregister(self.release)
        for folder in reversed(self.created):  # a command that failed before writing leaves no empty folder
            try:
                folder.rmdir()
            except OSError:
                break


def acquire(folder: str | Path, command: str | None = None) -> OutputLock:
    """Hold `folder` (made if missing) for this process; HptError when another command holds it."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key]._depth += 1
        return _HELD[key]
    if folder.exists() and not folder.is_dir():
        raise HptError(f"--out {folder} is a file, not a folder; choose another --out")
    created = [p for p in reversed([folder, *folder.parents]) if not p.exists()]
    make_folder(folder)
    try:
        lock = _lock(folder, command or _command(), created)
    except BaseException:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                break
        raise
    _HELD[key] = lock
    atexit.register(lock.release)
    return lock


def claim(folder: str | Path, command: str | None = None) -> OutputLock | None:
    """acquire() on rank 0 only; with a process group, every rank raises rank 0's error (None on other ranks)."""
    lock, error = None, None
    if _rank() == 0:
        try:
            lock = acquire(folder, command)
        except HptError as err:
            error = err
    if distributed.world_size() > 1:
        message = distributed.all_gather_objects(None if error is None else str(error))[0]
        if message is not None and error is None:
            if lock is not None:
                lock.release()
            raise HptError(str(message))
    if error is not None:
        raise error
    return lock


def _lock(folder: Path, command: str, created: list[Path]) -> OutputLock:
    path = folder / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the folder was removed by a run that just released it; make it again
            make_folder(folder)
            continue
        except OSError as err:
            raise write_error(path, err) from None
        try:
            flocked = _flock(fd)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise HptError(_busy(folder, holder)) from None
        if not _same_file(fd, path):  # released (deleted) between our open and our flock: open the new one
            os.close(fd)
            continue
        holder = _read(fd)
        try:
            took_over = _decide(folder, holder, flocked)
        except BaseException:
            _close(fd, path, delete=holder is None)  # an empty lock file is nobody's
            raise
        try:
            _write(fd, path, command)
        except BaseException:
            _close(fd, path, delete=True)
            raise
        return OutputLock(folder, fd, created, took_over)
    raise HptError(f"could not lock {folder}: its lock file {path} keeps changing; try again")


def _decide(folder: Path, holder: Holder | None, flocked: bool) -> Holder | None:
    """The stale holder to take over (None: the file was empty), or HptError when the folder is not free."""
    if holder is None:
        return None
    path = folder / LOCK_NAME
    if holder.host is not None and holder.host != socket.gethostname():
        raise HptError(f"{folder} is locked by a run on another host ({holder.describe()}); if that run is no "
                       f"longer running, delete {path} and run again, or choose another --out")
    if holder.pid is not None and holder.pid != os.getpid() and not flocked and _alive(holder.pid):
        raise HptError(_busy(folder, holder))
    return holder


def _busy(folder: Path, holder: Holder | None) -> str:
    who = holder.describe() if holder is not None else "a process that is still starting"
    return (f"{folder} is in use by another hpt command ({who}); wait for it to finish, or choose another "
            "--out")


def _write(fd: int, path: Path, command: str) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    data = (json.dumps(record) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as err:
        raise write_error(path, err) from None


def _close(fd: int, path: Path, delete: bool) -> None:
    """Give up a lock file this process could not claim (deleting it, with delete)."""
    try:
        if delete and _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    os.close(fd)


def _flock(fd: int) -> bool:
    """Lock `fd` without waiting: True when held, False where the file system has no flock; BlockingIOError when
    another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF):
            return False
        raise
    return True


def _read(fd: int) -> Holder | None:
    """The holder recorded in a lock file; None when it is empty (its writer died before writing it)."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return Holder()
    if not data.strip():
        return None
    try:
        raw: Any = json.loads(data)
    except ValueError:
        return Holder()
    if not isinstance(raw, dict):
        return Holder()
    pid = raw.get("pid")
    return Holder(pid if isinstance(pid, int) else None, _str(raw.get("host")), _str(raw.get("command")),
                  _str(raw.get("started")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _rank() -> int:
    return distributed.rank() if distributed.world_size() > 1 else int(os.environ.get("RANK", "0"))


def _command() -> str:
    args = sys.argv[1:] if sys.argv and sys.argv[0].endswith(("hpt", "__main__.py")) else sys.argv
    return " ".join(["hpt", *args])[:300]
