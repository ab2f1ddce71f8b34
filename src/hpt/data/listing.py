"""The hpt cache root and a cache of directory walks, so that huge image folders are listed once.

A cached walk records the mtime of every directory it read; a later open only stats those directories
(adding, removing or renaming a file changes its directory's mtime) and walks again when one changed.
Directories modified in the last :data:`RACY_SECONDS` are not trusted (a change within the same clock
tick would keep the mtime), so such a walk is not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpt.atomic import atomic_write_text
from hpt.device import cache_root

log = logging.getLogger("hpt")
LISTING_VERSION = 1  # bump when a walk's result format changes
RACY_SECONDS = 2.0


def listings_dir() -> Path:
    """$HPT_CACHE/listings."""
    return cache_root() / "listings"


class Walker:
    """Lists directories with os.scandir and remembers each one's mtime (taken before reading it)."""

    def __init__(self) -> None:
        self.dirs: dict[str, int] = {}
        self.racy = False

    def note(self, folder: str | Path) -> None:
        """Record a directory whose entries the result depends on without listing them here."""
        mtime = os.stat(folder).st_mtime_ns
        if time.time_ns() - mtime < RACY_SECONDS * 1e9:
            self.racy = True
        self.dirs[str(folder)] = mtime

    def scandir(self, folder: str | Path) -> list[tuple[str, str, bool, bool]]:
        """(name, path, is_dir, is_file) of every entry of folder, unsorted."""
        self.note(folder)
        with os.scandir(folder) as entries:
            return [(e.name, e.path, e.is_dir(), e.is_file()) for e in entries]


def cached_walk(key: list[str], walk: Callable[[Walker], Any], cache_dir: Path | None = None) -> Any:
    """walk(Walker()) (a JSON-serialisable result), or its cached result when no directory it read changed."""
    folder = listings_dir() if cache_dir is None else cache_dir
    digest = hashlib.sha256(json.dumps([LISTING_VERSION, *key]).encode()).hexdigest()[:32]
    path = folder / f"walk-{digest}.json"
    hit = _read(path, key)
    if hit is not None:
        return hit
    walker = Walker()
    result = walk(walker)
    if walker.racy:
        log.debug("not caching the listing of %s: a folder changed in the last %gs", key, RACY_SECONDS)
    else:
        write_json(path, {"version": LISTING_VERSION, "key": key, "dirs": walker.dirs, "result": result})
    return result


def _read(path: Path, key: list[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable listing cache %s (%s)", path, err)
        return None
    if not isinstance(data, dict) or data.get("version") != LISTING_VERSION or data.get("key") != key:
        return None
    for folder, mtime in data.get("dirs", {}).items():
        try:
            if os.stat(folder).st_mtime_ns != mtime:
                return None
        except OSError:
            return None
    log.debug("listing from cache %s", path)
    return data.get("result")


def write_json(path: Path, record: Any) -> None:
    """Write a cache file atomically; failures only warn (the cache is an optimisation)."""
    try:
        atomic_write_text(path, json.dumps(record, separators=(",", ":")))
    except OSError as err:
        log.warning("could not write the cache file %s (%s); it will be rebuilt next time", path, err)
