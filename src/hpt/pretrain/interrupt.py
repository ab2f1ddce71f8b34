"""Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, `kill PID`) during training stops at a step boundary: the
step being run is finished and its state saved, so that a resumed run is the same as an uninterrupted one (a
KeyboardInterrupt in the middle of a step would leave the weights, BatchNorm statistics and queue half-way between
two steps)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("hpt")

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the signals that stop training at a step boundary


class DeferredInterrupt:
    """While installed, the first SIGINT or SIGTERM only sets `requested` (the loop saves and stops after the
    current step); a second one raises KeyboardInterrupt at once, and the last saved state stays the one to resume
    from.

    Install it before the DataLoader starts its worker processes: forked workers inherit the handler, so a
    Ctrl-C to the terminal's process group does not end them before the step is finished."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._pid = os.getpid()

    def install(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the training process decides
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.warning(f"interrupted by {name}: finishing the current step and saving it ({name} again to stop at "
                    "once, keeping the last saved state)")
