"""Depth probes: the linear-separability protocol on features pooled after each stage of a frozen backbone.

For each depth (:func:`hpt.analysis.layers.depth_names`: a ResNet's stem and layer1..layer4; a ViT's embedding,
the blocks at quarter depths and its pooled features; a ConvNeXt's stem, stage0..stage3 and pooled features)
the output is pooled to one value per channel (a spatial average, or a ViT's mean over the patch tokens), and a
linear classifier is trained on it with exactly the ``hpt eval linear`` recipe
(:func:`hpt.eval.linear.train_linear_head` with a :class:`~hpt.eval.linear.LinearConfig`: SGD, lr drops at 1/3
and 2/3, val selects the step, test reports) and summarised by :func:`hpt.eval.result.summarize` (95%
bootstrap interval over the test images). The last row (a ResNet's layer4, the others' ``pooled``) is the
``hpt eval linear`` setting itself.

"Best" is the depth with the highest val score (choosing a depth to truncate at is a selection, so test only
reports); a depth is "within noise of best" when the paired bootstrap interval of its difference to the best one over
the same test images holds 0 (:mod:`hpt.eval.paired`; for AUROC: when their intervals overlap). For a ResNet
whose shallowest depth within noise is layer1..layer3, the record names ``hpt export --truncate`` for it
(``truncate_hint``); truncated exports exist for ResNets only.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.analysis.cka import extract_pooled
from hpt.analysis.layers import RESNET_DEPTHS, depth_names, depth_note, pooled_stages
from hpt.atomic import atomic_text_file
from hpt.device import resolve_device
from hpt.errors import HptError
from hpt.eval.common import milestones
from hpt.eval.curve import save_figure, write_json
from hpt.eval.features import EvalBackbone, eval_transform
from hpt.eval.linear import LinearConfig, few_threads, train_linear_head
from hpt.eval.metrics import Interval, differs
from hpt.eval.paired import mean_outcomes, paired_difference_interval
from hpt.eval.result import summarize
from hpt.eval.splits import LabelledSplits
from hpt.models.families import family_of

log = logging.getLogger("hpt")

#: A ResNet's depths (other families: :func:`hpt.analysis.layers.depth_names`).
DEPTHS = RESNET_DEPTHS
#: The depths `hpt export --truncate` can stop after.
TRUNCATABLE = ("layer1", "layer2", "layer3")


def stage_features(backbone: EvalBackbone, splits: LabelledSplits, image_size: int | None,
                   device: torch.device) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """split -> depth -> (N, C) pooled features; each underlying data set is encoded once. Also the image size."""
    transform = eval_transform(splits, image_size)
    by_dataset: dict[int, dict[str, np.ndarray]] = {}
    result: dict[str, dict[str, np.ndarray]] = {}
    for name in ("train", "val", "test"):
        view = getattr(splits, name)
        ds = view.dataset
        if id(ds) not in by_dataset:
            log.info("depth: encoding %d images of %s", len(ds), ds.spec.describe())
            by_dataset[id(ds)] = extract_pooled(backbone.model, lambda idx, ds=ds: ds.get_batch(idx)[0], len(ds),
                                                transform, device, pooled_stages)
        result[name] = {depth: feats[view.indices] for depth, feats in by_dataset[id(ds)].items()}
    return result, transform.image_size


def depth_probe(backbone: EvalBackbone, splits: LabelledSplits, config: LinearConfig | None = None,
                out_dir: Path | None = None) -> dict[str, Any]:
    """One linear-protocol result per depth, the best depth, and which depths are within noise of it.

    Returns the record; with `out_dir`, writes depth.json, depth.csv and depth.png there."""
    config = config or LinearConfig()
    if config.augmented:
        raise HptError("the depth probe trains on cached features; the augmented linear variant is not supported")
    started = time.time()
    device = resolve_device(config.device)
    feats, image_size = stage_features(backbone, splits, config.image_size, device)
    train_y = torch.from_numpy(np.ascontiguousarray(splits.train.labels))
    n = len(splits.train)
    batch = min(config.batch_size, n)
    settings = {**asdict(config), "milestones": milestones(config.steps), "batch_size_used": batch,
                "image_size_used": image_size, "weight_decay": 0.0, "init": "N(0, 0.01)",
                "features": depth_note(backbone.model)}
    rows = []
    for depth in depth_names(backbone.model):
        depth_started = time.time()
        train_x = torch.from_numpy(feats["train"][depth]).to(device)
        val_x = torch.from_numpy(feats["val"][depth]).to(device)
        test_x = torch.from_numpy(feats["test"][depth]).to(device)

        def batches(step: int, rng: np.random.Generator,
                    train_x: torch.Tensor = train_x) -> tuple[torch.Tensor, torch.Tensor]:
            idx = rng.choice(n, size=batch, replace=False)
            return train_x[idx], train_y[idx]

        runs = []
        with few_threads(device.type == "cpu"):
            for i in range(config.seeds):
                runs.append(train_linear_head(batches, train_x.shape[1], splits, val_x, test_x, config,
                                              config.seed + i, device))
        summary = summarize("linear", runs, splits, settings=settings, backbone=backbone.record(),
                            wall_time_s=time.time() - depth_started, bootstrap_seed=config.seed)
        rows.append({"depth": depth, "dim": int(train_x.shape[1]), "test": summary["test"],
                     "interval": summary["interval"], "val": float(np.mean([r.val for r in runs])),
                     "steps_selected": [r.step for r in runs], "seeds": summary["seeds"],
                     "excluded_classes": summary["excluded_classes"],
                     "test_correct": summary.get("test_correct")})
        log.info("depth %s: test %.4f [%.4f, %.4f]", depth, summary["test"], *summary["interval"])
    best = max(rows, key=lambda r: r["val"])  # chosen on val: test only reports (a truncation is a choice)
    best_index = rows.index(best)
    for row in rows:
        row["vs_best"] = "best" if row is best else (
            "below best" if _differs(row, best, len(splits.test.labels)) else "within noise of best")
    shallower = [r["depth"] for r in rows[:best_index] if r["vs_best"] == "within noise of best"]
    record: dict[str, Any] = {
        "kind": "analysis",
        "analysis": "depth",
        "protocol": "linear",
        "metric": summary["metric"],
        "interval_kind": summary["interval_kind"],
        "data": splits.spec.describe(),
        "splits": splits.record(),
        "backbone": backbone.record(),
        "settings": settings,
        "rows": rows,
        "best": {"depth": best["depth"], "test": best["test"], "interval": best["interval"]},
        "within_noise_of_best": [r["depth"] for r in rows if r["vs_best"] == "within noise of best"],
        "shallower_within_noise": shallower,
        "shallowest_within_noise": shallower[0] if shallower else best["depth"],
        "truncate_hint": truncate_hint(backbone, shallower[0] if shallower else best["depth"]),
        "wall_time_s": round(time.time() - started, 2),
    }
    if out_dir is not None:
        write_depth(Path(out_dir), record)
    return record


def truncate_hint(backbone: EvalBackbone, depth: str) -> str | None:
    """The `hpt export --truncate` command that keeps the backbone up to `depth`: ResNets only (the other families
    have no truncated export), for a file, and only for layer1..layer3 (layer4 is the whole backbone)."""
    if family_of(backbone.model) != "resnet" or depth not in TRUNCATABLE or backbone.format == "random":
        return None
    return f"hpt export {backbone.source} --truncate {depth} --out <file>"


def _differs(a: dict[str, Any], b: dict[str, Any], n: int) -> bool:
    """Beyond the test set's noise: paired over the same n test images (top-1), else intervals apart (AUROC)."""
    if a.get("test_correct") and b.get("test_correct"):
        paired = paired_difference_interval(mean_outcomes(a["test_correct"], n), mean_outcomes(b["test_correct"], n))
        return paired.low > 0 or paired.high < 0
    return differs(a["test"], Interval(*a["interval"]), b["test"], Interval(*b["interval"]))


def write_depth(out: Path, record: dict[str, Any]) -> None:
    """depth.csv (one row per depth), depth.png (score against depth with interval bars), depth.json."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_text_file(out / "depth.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["depth", "dim", "test", "low", "high", "val", "vs_best"])
        for r in record["rows"]:
            writer.writerow([r["depth"], r["dim"], f"{r['test']:.6f}", f"{r['interval'][0]:.6f}",
                             f"{r['interval'][1]:.6f}", f"{r['val']:.6f}", r["vs_best"]])
    plot_depth(out / "depth.png", record)
    record["files"] = {"json": "depth.json", "csv": "depth.csv", "png": "depth.png"}
    write_json(out / "depth.json", record)


def plot_depth(path: Path, record: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    x = np.arange(len(rows))
    y = np.array([100 * r["test"] for r in rows])
    low = y - np.array([100 * r["interval"][0] for r in rows])
    high = np.array([100 * r["interval"][1] for r in rows]) - y
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=120)
    ax.errorbar(x, y, yerr=np.vstack([low, high]), marker="o", capsize=4, color="C0", label="test (95% CI)")
    best = next(i for i, r in enumerate(rows) if r["vs_best"] == "best")
    ax.plot([best], [y[best]], marker="*", markersize=14, color="C3", linestyle="none", label="best")
    ax.set_xticks(x, [f"{r['depth']}\n({r['dim']})" for r in rows], fontsize=8)
    ax.set_xlabel("features pooled after (channels)", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)" if record["metric"] == "top1" else "mean AUROC (%)")
    name = Path(record["backbone"]["path"]).name
    ax.set_title(f"linear probe by depth - {name} on {record['data']}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def depth_table(record: dict[str, Any]) -> str:
    """The printed table and a verdict line."""
    metric = "top-1" if record["metric"] == "top1" else "mean AUROC"
    width = max(8, *(len(r["depth"]) for r in record["rows"]))
    header = f"{'depth':<{width}} {'dim':>5} {'test ' + metric:>16} {'95% CI':>17}  vs best"
    lines = [header, "-" * len(header)]
    for r in record["rows"]:
        low, high = r["interval"]
        lines.append(f"{r['depth']:<{width}} {r['dim']:>5} {100 * r['test']:>15.2f}% "
                     f"[{100 * low:6.2f}, {100 * high:6.2f}]  {r['vs_best']}")
    best = record["best"]
    verdict = f"best depth: {best['depth']} ({100 * best['test']:.2f}%)"
    shallower = record["shallower_within_noise"]
    if shallower:
        verdict += f"; shallower depths within noise of it: {', '.join(shallower)} (shallowest: {shallower[0]})"
    elif best["depth"] != record["rows"][0]["depth"]:
        verdict += "; every shallower depth is below it beyond noise"
    lines.append(verdict)
    if record.get("truncate_hint"):
        lines.append(f"to ship the backbone up to {record['shallowest_within_noise']}: {record['truncate_hint']}")
    return "\n".join(lines)
