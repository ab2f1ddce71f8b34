"""The output folder of an API call, held while the call writes into it, as hpt's commands hold theirs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpt.run_lock import claim


@contextmanager
def holding(out: Path | None) -> Iterator[None]:
    """Hold `out` (made if missing; OUT/.hpt.lock) until the block ends: HptError when another run writes into it.
    Inside a command that holds the folder already, the claim nests. None: nothing to hold."""
    lock = claim(out) if out is not None else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
