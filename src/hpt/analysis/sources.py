"""Which source helps this target? Rank candidate source sets by how close their images are to the target's in the
base model's feature space, and say how far the target lies from the base's own domain.

Distances are the Frechet distance between Gaussian fits of pooled features (the FID formula, on the base's
features instead of Inception's) and an RBF-kernel MMD^2 with the median heuristic. Each data set is normalised with
its own channel statistics, as a stage training on it would be.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.atomic import atomic_write_text
from hpt.augment import EvalTransform
from hpt.data import DataSpec, channel_stats, open_dataset, parse_data_spec
from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.features import EvalBackbone, extract_features
from hpt.eval.splits import SplitView
from hpt.models.families import image_size_problem

log = logging.getLogger("hpt")
FAR_RATIO = 0.5  # target at least half as far from the base domain as noise images are: warn


@dataclass
class SourceScore:
    source: str
    frechet: float
    mmd2: float
    probe: float | None = None  # target val score after a short HPT run on the source (optional)


@dataclass
class Ranking:
    target: str
    scores: list[SourceScore]  # best first
    ranked_by: str
    base_domain: dict[str, Any] | None = None  # distances of the target from the base's own domain
    notes: list[str] = field(default_factory=list)

    def recommendation(self) -> str:
        best = self.scores[0]
        text = (f"recommended source: {best.source} (closest to the target by {self.ranked_by}); closeness is not a "
                "measured gain: check that B+S+T beats B+T (no source) with `hpt experiment sequential`")
        if self.base_domain and self.base_domain["far"]:
            text += ("; warning: the target is far from the base's domain "
                     f"({self.base_domain['ratio']:.2f} of the distance to noise images), so HPT may not help: "
                     "compare it with Target-only pretraining (`hpt experiment compare`)")
        return text


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (rows are samples).

    Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), from the eigenvalues of symmetric positive
    semi-definite matrices: exact, and stable where dead (all-zero) features make the covariances singular."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_covmean)
    return max(value, 0.0)


def mmd2_rbf(a: np.ndarray, b: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Biased MMD^2 with an RBF kernel whose bandwidth is the median pairwise distance of the pooled sample."""
    rng = np.random.default_rng(seed)
    a = a[rng.permutation(len(a))[:max_points]].astype(np.float64)
    b = b[rng.permutation(len(b))[:max_points]].astype(np.float64)
    both = np.concatenate([a, b])
    sq = (both ** 2).sum(1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * both @ both.T, 0.0)
    bandwidth2 = np.median(dist2[np.triu_indices(len(both), k=1)]) or 1.0
    kernel = np.exp(-dist2 / bandwidth2)
    n = len(a)
    return float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())


def pooled_features(backbone: EvalBackbone, spec: str, images: int, size: int, device: torch.device,
                    seed: int = 0) -> np.ndarray:
    """Features of a seeded sample of up to `images` training images, normalised with the set's own statistics."""
    ds = open_dataset(_train(spec))
    mean, std = channel_stats(ds)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), size=min(images, len(ds)), replace=False))
    return extract_features(backbone.model, SplitView(ds, idx), EvalTransform(mean, std, size), device)


def noise_features(backbone: EvalBackbone, n: int, size: int, device: torch.device) -> np.ndarray:
    """Features of uniform-noise images: the far end of the scale for 'how far from the base domain'."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    transform = EvalTransform((0.5,), (0.29,), size).to(device)
    backbone.model.eval().to(device)
    with torch.no_grad():
        return torch.cat([backbone.model(transform(images[i:i + 256].to(device))).cpu()
                          for i in range(0, n, 256)]).numpy()


def rank_sources(backbone: EvalBackbone, target: str, sources: list[str], *, base_data: str | None = None,
                 images: int = 2000, image_size: int | None = None, device: torch.device | None = None
                 ) -> Ranking:
    """Rank sources by Frechet distance to the target (MMD^2 reported beside it); optionally place the target
    between the base's own domain (base_data) and noise images."""
    if not sources:
        raise HptError("give at least one candidate source data set")
    device = device or torch.device("cpu")
    size = image_size or open_dataset(_train(target)).image_size[0]
    problem = image_size_problem(backbone.model, size)  # a ViT's patch size, a ConvNeXt's least size
    if problem:
        raise HptError(f"cannot compare features at {size} px: {problem}; set --image-size")
    feats = {spec: pooled_features(backbone, spec, images, size, device) for spec in [target, *sources]}
    scores = [SourceScore(spec, frechet_distance(feats[target], feats[spec]), mmd2_rbf(feats[target], feats[spec]))
              for spec in sources]
    scores.sort(key=lambda s: s.frechet)
    ranking = Ranking(target, scores, "Frechet distance of base features")
    if base_data is not None:
        home = pooled_features(backbone, base_data, images, size, device)
        noise = noise_features(backbone, min(images, 1000), size, device)
        to_target, to_noise = frechet_distance(home, feats[target]), frechet_distance(home, noise)
        ratio = to_target / max(to_noise, 1e-12)
        ranking.base_domain = {"data": base_data, "frechet_to_target": to_target, "frechet_to_noise": to_noise,
                               "ratio": ratio, "far": ratio >= FAR_RATIO}
    else:
        ranking.notes.append("no --base-data given: the target's distance from the base's own domain is not scored")
    return ranking


def _train(spec: str | DataSpec) -> DataSpec:
    return parse_data_spec(spec).train_split()


def probe_sources(backbone: EvalBackbone, ranking: Ranking, steps: int, out_dir: Any,
                  stage_settings: dict[str, Any] | None = None) -> Ranking:
    """Refine a ranking: a short HPT run (`steps`) on each source from the base, then a kNN probe on the
    target's val split (test is never used for the choice); sources are re-ranked by that score."""
    import copy

    from hpt.config import from_dict
    from hpt.eval.features import eval_transform, split_features
    from hpt.eval.knn import knn_scores
    from hpt.eval.metrics import evaluate
    from hpt.eval.splits import load_splits
    from hpt.models import weights_sha256
    from hpt.pretrain.config import StageConfig
    from hpt.pretrain.stage import run_stage

    splits = load_splits(ranking.target)
    device = resolve_device("auto")
    transform = eval_transform(splits, None, backbone.model)
    for i, score in enumerate(ranking.scores):
        model = copy.deepcopy(backbone.model)
        config = from_dict(StageConfig, {**(stage_settings or {}), "name": f"probe-{i}", "data": score.source,
                                         "steps": steps})
        run_stage(config, model, Path(out_dir) / "probes", resume=True)
        probed = EvalBackbone(model, score.source, "safetensors", weights_sha256(model))
        feats = split_features(probed, splits, transform, device)
        scores = knn_scores(torch.from_numpy(feats["train"]), torch.from_numpy(np.ascontiguousarray(splits.train.labels)),
                            torch.from_numpy(feats["val"]), k=20, temperature=0.07,
                            num_classes=splits.num_classes, multilabel=splits.multilabel)
        score.probe = evaluate(scores, splits.val.labels, splits.class_names).value
    ranking.scores.sort(key=lambda s: -(s.probe or 0.0))
    ranking.ranked_by = f"target val kNN score after {steps} HPT steps on each source"
    return ranking


def recommend_source(backbone: EvalBackbone, target: str, sources: list[str], out_dir: Path, *,
                     base_data: str | None = None, images: int = 2000, image_size: int | None = None,
                     probe_steps: int = 0, batch_size: int = 256) -> Ranking:
    """`hpt rank-sources`: rank the sources by closeness to the target (rank_sources), refine the ranking with
    probe_steps of HPT on each (probe_sources, global batch `batch_size`) when probe_steps > 0, and write
    OUT/ranking.json (ranking_record)."""
    ranking = rank_sources(backbone, target, sources, base_data=base_data, images=images, image_size=image_size)
    if probe_steps > 0:
        settings = {"batch_size": batch_size, **({"augment": {"image_size": image_size}} if image_size else {})}
        ranking = probe_sources(backbone, ranking, probe_steps, out_dir, settings)
    atomic_write_text(Path(out_dir) / "ranking.json", json.dumps(ranking_record(ranking), indent=2) + "\n")
    return ranking


def ranking_record(ranking: Ranking) -> dict[str, Any]:
    """The ranking as plain data, with its recommendation (OUT/ranking.json)."""
    return {**asdict(ranking), "recommendation": ranking.recommendation()}


def ranking_table(ranking: Ranking) -> str:
    """The ranking as a table (best first), the target's distance from the base's domain, notes, recommendation."""
    lines = [f"target: {ranking.target}   (ranked by {ranking.ranked_by})",
             f"{'rank':>4}  {'Frechet':>10}  {'MMD^2':>8}  {'probe':>7}  source"]
    for i, s in enumerate(ranking.scores, 1):
        probe = f"{100 * s.probe:6.2f}%" if s.probe is not None else "      -"
        lines.append(f"{i:>4}  {s.frechet:10.3f}  {s.mmd2:8.4f}  {probe}  {s.source}")
    if ranking.base_domain:
        d = ranking.base_domain
        lines.append(f"target from the base's domain ({d['data']}): Frechet {d['frechet_to_target']:.3f}, "
                     f"{d['ratio']:.2f} of the distance to noise images")
    lines += [f"note: {note}" for note in ranking.notes]
    lines.append(ranking.recommendation())
    return "\n".join(lines)
