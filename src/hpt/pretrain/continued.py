"""continue_method: a stage starts from the previous stage's head, key (or target) encoder and queue."""

from __future__ import annotations

import logging

import torch

from hpt.errors import HptError
from hpt.methods import Method
from hpt.models import ResNet

log = logging.getLogger("hpt")


def load_continued(model: Method, weights: dict[str, torch.Tensor], backbone: ResNet, name: str) -> None:
    """Load the previous stage's method state around this stage's starting backbone, which must match its weights.

    The backbone's BatchNorm statistics are kept as handed over (after DDP they are averaged over the ranks).
    """
    start = {key: value.detach().clone() for key, value in backbone.state_dict().items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise HptError(f"stage '{name}': continue_method cannot load the previous stage's method state ({first}); "
                       "the method, its head or its queue size differ: keep them equal or set continue_method: "
                       "false") from None
    if any(not torch.equal(param.detach().cpu(), start[key].cpu()) for key, param in backbone.named_parameters()):
        raise HptError(f"stage '{name}': the previous stage's saved state does not hold the backbone it finished "
                       "with (was its folder changed after training?); set continue_method: false")
    backbone.load_state_dict(start)
    log.info("%s: continuing the previous stage's head, key encoder and queue", name)
