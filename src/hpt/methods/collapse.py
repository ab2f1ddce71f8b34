"""Representation collapse: every image mapped to (nearly) the same embedding, whatever the loss says.

The spread of a batch of L2-normalised embeddings z (N x D) is sqrt(D) times the mean over dimensions of the
standard deviation across the batch: about 1 for embeddings spread over the sphere, 0 when they have collapsed
to one point (the measure lightly's benchmarks log as "std of l2-normalised outputs", rescaled). A stage logs it
and warns once when it stays below a threshold after a warm-up.

alignment and uniformity (Wang & Isola 2020, "Understanding contrastive representation learning through
alignment and uniformity on the hypersphere") split what a contrastive loss asks for in two: positive pairs close
(alignment near 0) and all embeddings spread over the sphere (uniformity clearly below 0; 0 when collapsed).
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


def alignment(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared distance ||f(x) - f(x+)||^2 of L2-normalised positive pairs (rows of z1 and z2), alpha = 2:
    0 when every pair coincides, 2 for orthogonal pairs, 4 for opposite ones (a 0-d tensor)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"alignment needs two (N, D) batches of the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    a = torch.nn.functional.normalize(z1.float(), dim=1)
    b = torch.nn.functional.normalize(z2.float(), dim=1)
    return (a - b).pow(2).sum(dim=1).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log of the mean Gaussian potential exp(-t ||z_i - z_j||^2) over the pairs i < j of L2-normalised rows:
    0 when every embedding is the same point, down to about -t * 2 (-4 at t = 2) for a uniform spread over a
    high-dimensional sphere (a 0-d tensor)."""
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"uniformity needs an (N, D) batch with N >= 2, got {tuple(z.shape)}")
    z = torch.nn.functional.normalize(z.float(), dim=1)
    sq_dists = torch.pdist(z, p=2).pow(2)
    return sq_dists.mul(-t).exp().mean().log()


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
