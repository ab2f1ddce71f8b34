"""The strict-loading comparison every backbone family uses: which keys a file lacks, adds or shapes differently."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor


def key_differences(model_state: Mapping[str, Tensor], state: Mapping[str, Tensor],
                    may_lack: Iterable[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape mismatches) of `state` against `model_state`; a key of `may_lack`, or one
    ending in ``num_batches_tracked`` (absent from pre-0.4.1 BatchNorm files), may be missing."""
    tolerated = set(may_lack)
    missing = [k for k in model_state
               if k not in state and k not in tolerated and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    shapes = [f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
              for k, v in model_state.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes
