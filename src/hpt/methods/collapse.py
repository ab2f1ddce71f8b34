"""Representation collapse: every image mapped to (nearly) the same embedding, whatever the loss says.

The spread of a batch of L2-normalised embeddings z (N x D) is sqrt(D) times the mean over dimensions of the
standard deviation across the batch: about 1 for embeddings spread over the sphere, 0 when they have collapsed
to one point (the measure lightly's benchmarks log as "std of l2-normalised outputs", rescaled). A stage logs it
and warns once when it stays below a threshold after a warm-up.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

log = logging.getLogger("hpt")

COLLAPSE_THRESHOLD = 0.1  # spread below this: collapsed


@torch.no_grad()
def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """sqrt(D) x mean_d std_n(z[n, d]) of L2-normalised rows: ~1 well spread, 0 collapsed (a 0-d tensor)."""
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    if z.shape[0] < 2:
        return torch.ones((), device=z.device)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


@dataclass
class CollapseWatch:
    """Warns once when the spread is below the threshold at a logged step after the warm-up."""

    stage: str
    warmup_steps: int
    threshold: float = COLLAPSE_THRESHOLD
    warning: dict[str, float] | None = field(default=None)

    def check(self, step: int, spread: float) -> None:
        if self.warning is not None or step < self.warmup_steps or spread >= self.threshold:
            return
        self.warning = {"step": step, "spread": round(spread, 4)}
        log.warning("%s step %d: the embeddings have collapsed (spread %.3f, where 1 is well spread and 0 is one "
                    "point for every image): the backbone is learning little. Lower the lr, raise the batch size or "
                    "the temperature, or check that the images differ", self.stage, step, spread)
