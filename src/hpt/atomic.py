"""Files that are never half-written: write a temp file beside the target, fsync it, rename it into place.

A write that fails for a reason outside hpt (disk full, read-only file system, permissions) raises FileWriteError:
a user error (an HptError, and an OSError for callers that tolerate unwritable caches) whose message names the
file and the cause, e.g. "cannot write /x/y: no space left on device; free space or choose another --out".
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hpt.errors import HptError

log = logging.getLogger("hpt")

#: The causes of failed writes that are the user's to fix, with what to do.
_CAUSES = {
    errno.ENOSPC: ("no space left on device", "free space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another --out"),
    errno.EROFS: ("read-only file system", "choose another --out"),
    errno.EACCES: ("permission denied", "choose another --out or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose another --out or change its permissions"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another --out"),
    errno.EISDIR: ("it is a folder", "remove that folder or choose another --out"),
    errno.EEXIST: ("it exists and is not a folder", "choose another --out"),
    errno.ENOENT: ("its folder does not exist (removed during the run?)", "choose another --out"),
    errno.EFBIG: ("file too large for the file system", "choose another --out"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter --out"),
    errno.EIO: ("input/output error of the device", "check the disk, or choose another --out"),
    errno.EMLINK: ("too many links in the folder", "choose another --out"),
}
#: errno values that mean the file system refused the write (see _CAUSES); others are not the user's to fix.
FILESYSTEM_ERRNOS = frozenset(_CAUSES)
#: The temp files of atomic_write: .<target name>.<8 random characters>.tmp
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class FileWriteError(HptError, OSError):
    """Writing `path` failed for a reason the user fixes (disk full, read-only, permissions): one line, exit 2."""

    def __init__(self, path: str | Path, err: OSError, action: str = "write") -> None:
        OSError.__init__(self, err.errno, err.strerror, str(path))
        cause, fix = cause_of(err)
        self.message = f"cannot {action} {path}: {cause}; {fix}"

    def __str__(self) -> str:
        return self.message


def cause_of(err: OSError) -> tuple[str, str]:
    """What went wrong, in words, and what the user can do about it."""
    return _CAUSES.get(err.errno or 0, ((err.strerror or str(err)).lower(), "choose another --out"))


#: causes that only a write meets (a read of an input never runs out of space)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def os_error_in(err: BaseException) -> OSError | None:
    """The OSError of a file system refusal that `err` is, or was raised while handling (torch.save wraps the
    OSError of a failed write in a RuntimeError), else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FILESYSTEM_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def write_error(path: str | Path, err: BaseException, action: str = "write") -> BaseException:
    """A FileWriteError for `path` when `err` is (or wraps) a file system refusal; else `err` itself."""
    if isinstance(err, FileWriteError):
        return err
    found = os_error_in(err)
    return err if found is None else FileWriteError(path, found, action)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _mode_for(path: Path) -> int:
    """The mode of the file being replaced, or that of a new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def make_folder(folder: str | Path) -> None:
    """mkdir -p, with a FileWriteError naming the folder (or the file in its way) when it cannot be made."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            refused = FileWriteError(folder, err, "create the folder")
            refused.message = f"cannot create the folder {folder}: {blocking} is a file, not a folder; choose " \
                              "another --out"
            raise refused from None
        raise write_error(err.filename or folder, err, "create the folder") from None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(file_object)` on a temp file beside `path`, fsync it, and rename it into place.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        try:  # mkstemp makes 0600 files; the target gets the mode a plain open would give it
            os.fchmod(fd, _mode_for(path))
        except OSError:
            pass
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        mapped = write_error(path, err)
        if mapped is err:
            raise
        raise mapped from None
    try:  # persist the rename itself; not possible on every platform/filesystem
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """atomic_write for UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


@contextmanager
def atomic_text_file(path: str | Path) -> Iterator[io.StringIO]:
    """`with atomic_text_file(path) as handle:` - like open(path, "w", newline=""), but the file appears whole when
    the block ends (and not at all when it raises)."""
    buffer = io.StringIO(newline="")
    yield buffer
    atomic_write_text(path, buffer.getvalue())


def append_bytes(path: str | Path, data: bytes) -> None:
    """Append `data` to `path` (created if missing); a failed append leaves the file as it was (or absent)."""
    path = Path(path)
    existed = path.exists()
    size = path.stat().st_size if existed else 0
    try:
        with path.open("ab") as handle:
            handle.write(data)
    except OSError as err:
        try:
            if existed:
                os.truncate(path, size)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(path, err) from None


def remove_stale_temps(*folders: Path) -> list[Path]:
    """Delete the temp files of atomic_write that an interrupted write left in `folders` (not recursively).

    Only for folders that no running process writes to (the output folder's lock guarantees that)."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if _TEMP_NAME.match(entry.name) and entry.is_file() and not entry.is_symlink():
                try:
                    entry.unlink()
                except OSError as err:
                    log.warning("could not remove the stale temp file %s (%s)", entry, err)
                    continue
                removed.append(entry)
    if removed:
        log.info("removed %d temp file(s) of interrupted writes: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed
