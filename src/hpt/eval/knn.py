"""k-nearest-neighbour evaluation: cosine similarity of L2-normalised features, temperature-weighted votes."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.curve import write_json
from hpt.eval.features import EvalBackbone, eval_transform, split_features
from hpt.eval.metrics import evaluate
from hpt.eval.result import SeedRun, summarize
from hpt.eval.splits import LabelledSplits

log = logging.getLogger("hpt")


@dataclass
class KnnConfig:
    k: int = 20
    temperature: float = 0.07
    image_size: int | None = None
    device: str = "auto"
    cache_features: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise HptError(f"k must be >= 1, got {self.k}")
        if self.temperature <= 0:
            raise HptError(f"the kNN temperature must be > 0, got {self.temperature}")


def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *, k: int, temperature: float,
               num_classes: int, multilabel: bool, chunk: int = 1024) -> np.ndarray:
    """(N_query, C) class scores: the sum of exp(cos/T) over the k nearest bank images of each class, or for
    multi-label data the exp(cos/T)-weighted mean of the neighbours' 0/1 labels."""
    k = min(k, len(bank))
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    out = []
    for start in range(0, len(queries), chunk):
        q = torch.nn.functional.normalize(queries[start:start + chunk].float(), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        if multilabel:
            neighbour = bank_labels[idx].float()  # (q, k, C)
            scores = (weights.unsqueeze(-1) * neighbour).sum(1) / weights.sum(1, keepdim=True)
        else:
            scores = torch.zeros(len(q), num_classes, dtype=weights.dtype, device=weights.device)
            scores.scatter_add_(1, bank_labels[idx], weights)
        out.append(scores.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), np.float32)


def knn_eval(backbone: EvalBackbone, splits: LabelledSplits, config: KnnConfig,
             out_dir: Path | None = None) -> dict[str, Any]:
    """kNN with the training split as the bank; val is scored and recorded too (nothing is selected on it)."""
    started = time.time()
    device = resolve_device(config.device)
    transform = eval_transform(splits, config.image_size, backbone.model).to(device)
    feats = split_features(backbone, splits, transform, device, cache=config.cache_features)
    bank = torch.from_numpy(feats["train"]).to(device)
    bank_labels = torch.from_numpy(np.ascontiguousarray(splits.train.labels)).to(device)

    def scores(name: str) -> np.ndarray:
        return knn_scores(bank, bank_labels, torch.from_numpy(feats[name]).to(device), k=config.k,
                          temperature=config.temperature, num_classes=splits.num_classes,
                          multilabel=splits.multilabel)

    val = evaluate(scores("val"), splits.val.labels, splits.class_names).value
    run = SeedRun(0, scores("test"), val, None)
    settings = {**asdict(config), "image_size_used": transform.image_size}
    record = summarize("knn", [run], splits, settings=settings, backbone=backbone.record(),
                       wall_time_s=time.time() - started)
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", record)
    return record
