"""WebDataset shards on disk: brace patterns, and a per-shard index of samples (where each image's bytes are).

A shard is an uncompressed tar whose consecutive members sharing a key form a sample: ``<key>.png|jpg|jpeg``
and optionally ``<key>.cls`` (a text integer label); other members (``.json``, ...) are ignored. The key is
the member path up to the first dot of its file name, as in the ``webdataset`` package. Scanning a shard reads
only tar headers and the tiny .cls members; the result is cached in $HPT_CACHE/listings keyed by the shard's
path, size and mtime, so a data set is scanned once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpt.atomic import atomic_write
from hpt.data.listing import listings_dir
from hpt.errors import HptError

log = logging.getLogger("hpt")
IMAGE_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg")
INDEX_VERSION = 1
MAX_LISTED = 5
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: ``a{1..3}`` (zero padding kept: ``{000..010}``), ``{x,y}``, nested."""
    start = pattern.find("{")
    while start >= 0:
        depth, end, commas = 0, -1, []
        for i in range(start, len(pattern)):
            ch = pattern[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
            elif ch == "," and depth == 1:
                commas.append(i)
        if end < 0:
            raise HptError(f"the shard pattern {pattern} has an unclosed '{{'; close it, e.g. shard-{{000..009}}.tar")
        body = pattern[start + 1:end]
        head, tail = pattern[:start], pattern[end + 1:]
        if commas:
            cuts = [start, *commas, end]
            options = [pattern[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        elif _RANGE.match(body):
            options = _range(body)
        else:  # a literal brace pair: keep it and look for the next one
            start = pattern.find("{", start + 1)
            continue
        return [head + x for option in options for x in expand_braces(option + tail)]
    return [pattern]


def _range(body: str) -> list[str]:
    match = _RANGE.match(body)
    assert match is not None
    a, b = match.group(1), match.group(2)
    lo, hi = int(a), int(b)
    padded = any(s.lstrip("-").startswith("0") and len(s.lstrip("-")) > 1 for s in (a, b))
    width = max(len(a), len(b)) if padded else 0
    step = 1 if hi >= lo else -1
    return [str(v).zfill(width) for v in range(lo, hi + step, step)]


def resolve_shards(pattern: Path) -> list[Path]:
    """The shard files of a pattern (brace-expanded) or of a folder (its *.tar, sorted); all must exist."""
    text = str(pattern.expanduser())
    if Path(text).is_dir():
        shards = sorted(p for p in Path(text).iterdir() if p.suffix.lower() == ".tar" and p.is_file())
        if not shards:
            raise HptError(f"the folder {text} holds no .tar shards; point wds: at the shards, "
                           "e.g. wds:/data/shard-{000000..000099}.tar")
        return shards
    names = list(dict.fromkeys(expand_braces(text)))
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more"
                                                   if len(missing) > MAX_LISTED else "")
        raise HptError(f"{len(missing)} of the {len(names)} shards of {pattern} do not exist: {shown}; check the "
                       "pattern (brace ranges like shard-{000000..000099}.tar are expanded)")
    return [Path(n) for n in names]


@dataclass(frozen=True)
class ShardIndex:
    """Per sample of one shard, in tar order: image byte offset and size, label (-1 without a .cls)."""

    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


def index_shards(shards: list[Path], cache_dir: Path | None = None) -> list[ShardIndex]:
    """The index of every shard, from the cache or by scanning (several shards at once: it is I/O bound)."""
    if len(shards) < 4:
        return [shard_index(s, cache_dir) for s in shards]
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda s: shard_index(s, cache_dir), shards))


def shard_index(shard: Path, cache_dir: Path | None = None) -> ShardIndex:
    path = _cache_file(shard, cache_dir)
    try:
        with np.load(path, allow_pickle=False) as cached:
            return ShardIndex(cached["offsets"], cached["sizes"], cached["labels"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable shard index %s (%s)", path, err)
    index, keys = scan_shard(shard)
    _write(path, index, keys)
    return index


def shard_keys(shard: Path, cache_dir: Path | None = None) -> list[str]:
    """The sample keys of a shard, in tar order (read from the cache; used for error messages)."""
    try:
        with np.load(_cache_file(shard, cache_dir), allow_pickle=False) as cached:
            return [str(k) for k in cached["keys"]]
    except (OSError, ValueError, KeyError):
        return scan_shard(shard)[1]


def _cache_file(shard: Path, cache_dir: Path | None) -> Path:
    st = os.stat(shard)
    key = json.dumps([INDEX_VERSION, str(shard.resolve()), st.st_size, st.st_mtime_ns])
    folder = listings_dir() if cache_dir is None else cache_dir
    return folder / f"shard-{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"


def _write(path: Path, index: ShardIndex, keys: list[str]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, offsets=index.offsets, sizes=index.sizes, labels=index.labels,
                                              keys=np.array(keys, dtype=str) if keys else np.zeros(0, dtype="<U1")))
    except OSError as err:
        log.warning("could not write the shard index %s (%s); the shard will be scanned again next time", path, err)


def scan_shard(shard: Path) -> tuple[ShardIndex, list[str]]:
    """Read a shard's tar headers (and .cls members): its samples' image locations, labels and keys."""
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    keys: list[str] = []
    current: dict[str, object] = {}

    def finish() -> None:
        if not current:
            return
        key = str(current["key"])
        if "image" not in current:
            found = ", ".join(f".{e}" for e in current["exts"]) or "nothing"  # type: ignore[attr-defined]
            raise HptError(f"sample '{key}' in shard {shard} has no .png, .jpg or .jpeg image (it has {found}); "
                           "every sample needs one image: rewrite the shard")
        offset, size = current["image"]  # type: ignore[misc]
        offsets.append(offset)
        sizes.append(size)
        labels.append(int(current.get("label", -1)))  # type: ignore[call-overload]
        keys.append(key)

    try:
        archive = tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise HptError(f"cannot read shard {shard} as an uncompressed tar ({err}); wds shards must be plain .tar "
                       "files: check that the file is complete and not compressed") from None
    with archive:
        try:
            for member in archive:
                if not member.isreg():
                    continue
                folder, base = posixpath.split(member.name)
                stem, _, ext = base.partition(".")
                key = posixpath.join(folder, stem) if folder else stem
                if not current or key != current["key"]:
                    finish()
                    current = {"key": key, "exts": []}
                ext = ext.lower()
                current["exts"].append(ext)  # type: ignore[attr-defined]
                if ext in IMAGE_EXTS and "image" not in current:
                    current["image"] = (member.offset_data, member.size)
                elif ext == "cls":
                    current["label"] = _parse_label(archive, member, key, shard)
            finish()
            end = archive.offset
        except (tarfile.TarError, OSError, EOFError) as err:
            last = f"near sample '{current['key']}'" if current else "at its start"
            raise HptError(f"shard {shard} is damaged {last} ({err}); rewrite the shard or leave it out of the "
                           "pattern") from None
    _check_end(shard, end, keys)
    as_int = np.int64
    return ShardIndex(np.asarray(offsets, as_int), np.asarray(sizes, as_int), np.asarray(labels, as_int)), keys


def _parse_label(archive: tarfile.TarFile, member: tarfile.TarInfo, key: str, shard: Path) -> int:
    handle = archive.extractfile(member)
    raw = handle.read(64) if handle is not None else b""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        value = int(text)
    except ValueError:
        raise HptError(f"sample '{key}' in shard {shard}: {key}.cls holds {text[:20]!r}, not an integer class "
                       "index; write the label as text, e.g. '3'") from None
    if value < 0:
        raise HptError(f"sample '{key}' in shard {shard}: {key}.cls holds {value}; class indices must be >= 0")
    return value


def _check_end(shard: Path, end: int, keys: list[str]) -> None:
    """tarfile stops quietly at a damaged header after the first member: what follows must be zero padding."""
    with open(shard, "rb") as f:
        f.seek(end)
        rest = f.read(1024)
    if rest.strip(b"\0"):
        last = f"after sample '{keys[-1]}'" if keys else "at its start"
        raise HptError(f"shard {shard} is damaged {last} (a tar header at byte {end} cannot be read); rewrite the "
                       "shard or leave it out of the pattern")
