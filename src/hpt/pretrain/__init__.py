"""Pretraining: the Base -> Source -> Target chain (hierarchy.py) of stages (stage.py, settings in config.py), each
trained by the step loop (loop.py) with a method from hpt.methods; around it the Base anchor, the guard, early
stopping, BatchNorm upkeep, health checks and the atomic resume state.

Called, this package is hpt.api.pretrain (`hpt.pretrain(base, data, steps, ...)`): the package and the function
share the name hpt.pretrain, so the package's module forwards a call to the function.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """This package's module: its submodules as attributes, and a call that runs hpt.api.pretrain."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from hpt.api import pretrain

        return pretrain(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # what help() and notebooks show for hpt.pretrain(...)
        from hpt.api import pretrain

        return inspect.signature(pretrain)


sys.modules[__name__].__class__ = _CallablePackage
