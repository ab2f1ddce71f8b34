"""What a data spec's files hold, independent of where they are: a cheap fingerprint that is the same for a moved
or copied data set and differs for other data of the same name.

- a file (npz, csv): its size and the sha256 of its first and last MiB;
- a folder (folder, npy): the sorted relative names of its files (the walk cached like the data sets' own, see
  :mod:`hpt.data.listing`), and the size and first and last MiB of the first and last files by name;
- wds shards: the shards' names and sizes, and the first and last MiB of the first and last shard.

A csv's images are not read (only the list): the fingerprint tells data sets apart, it does not checksum them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpt.data.listing import Walker, cached_walk
from hpt.data.spec import DataSpec, parse_data_spec
from hpt.errors import HptError

CONTENT_VERSION = 1  # bump when the fingerprint's recipe changes (older records then read as unknown)
_EDGE = 1 << 20  # bytes read at each end of a file
_SAMPLED = 8  # files of a folder whose bytes are read, at each end of the sorted listing


def content_fingerprint(spec: str | Path | Mapping[str, Any] | DataSpec) -> str | None:
    """The fingerprint of the files `spec` names, or None when they do not exist or cannot be read."""
    parsed = parse_data_spec(spec)
    path = parsed.path.expanduser()
    try:
        if parsed.kind == "wds":
            return _shards(path)
        if path.is_file():
            return f"v{CONTENT_VERSION}:file:{_file(path)}"
        if path.is_dir():
            return f"v{CONTENT_VERSION}:folder:{_folder(path)}"
    except OSError:
        return None
    return None


def _file(path: Path) -> str:
    """Size and sha256 of the first and last MiB (the whole file when it is at most 2 MiB)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_EDGE))
        if size > _EDGE:
            handle.seek(max(_EDGE, size - _EDGE))
            digest.update(handle.read(_EDGE))
    return f"{size}:{digest.hexdigest()[:32]}"


def _folder(root: Path) -> str:
    listing = cached_walk(["content", str(CONTENT_VERSION), str(root.resolve())], lambda w: _names(root, w))
    sampled = listing["names"][:_SAMPLED] + listing["names"][max(_SAMPLED, len(listing["names"]) - _SAMPLED):]
    parts = [listing["digest"], str(listing["count"]), *(f"{name}={_file(root / name)}" for name in sampled)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _names(root: Path, walker: Walker) -> dict[str, Any]:
    """The digest and count of every file's relative name below root (hidden entries left out), and the names at
    both ends of the sorted listing."""
    found: list[str] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        for name, path, is_dir, is_file in walker.scandir(folder):
            if name.startswith("."):
                continue
            if is_dir:
                pending.append(Path(path))
            elif is_file:
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    found.sort()
    names = found if len(found) <= 2 * _SAMPLED else found[:_SAMPLED] + found[-_SAMPLED:]
    return {"digest": hashlib.sha256("\n".join(found).encode()).hexdigest(), "count": len(found), "names": names}


def _shards(pattern: Path) -> str | None:
    from hpt.data.wdsindex import resolve_shards

    try:
        shards = resolve_shards(pattern)
    except HptError:
        return None
    parts = [f"{p.name}:{p.stat().st_size}" for p in shards] + [_file(shards[0]), _file(shards[-1])]
    return f"v{CONTENT_VERSION}:shards:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
