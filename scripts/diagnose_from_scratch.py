"""Train MoCo-v2 from random weights (a Target stage) with the stage's settings and log why it learns or not.

Per logged step it writes one CSV row: the loss next to ln(queue + 1) (the loss of uniform logits, where the
positive key is no better than any negative), the positive-key accuracy, the embedding spread of queries and
keys, alignment and uniformity (Wang & Isola 2020), the mean cosine of the positive pair and of the negatives,
the spread of the backbone's pooled features, the backbone's gradient norm and the lr; every --probe-every steps
(and at step 0, the random weights) a kNN probe (k=20, T=0.07 on pooled features, eval mode) with a stratified
subset of the train split as memory and the val split as queries.

One thing at a time can be varied: lr, lr warm-up, temperature, key momentum, queue size, batch size, BatchNorm
groups of shuffle-BN, crop scale, colour jitter, and a projection head with BatchNorm after its hidden layer
(`moco.head_bn`, as the heads of solo-learn's MoCo-v2+, SimCLR and MoCo-v3; MoCo-v2's has none).

--augment-check measures instead which augmentations change a grayscale image (three identical channels) at all.

Examples (from the repository root, venv active):
  python scripts/diagnose_from_scratch.py --data src/hpt/assets/fashion_demo.npz --steps 400 \
      --out runs/diagnose/fashion_baseline.csv
  python scripts/diagnose_from_scratch.py --data src/hpt/assets/fashion_demo.npz --steps 400 --head-bn \
      --out runs/diagnose/fashion_head_bn.csv
  python scripts/diagnose_from_scratch.py --data src/hpt/assets/fashion_demo.npz --augment-check \
      --out runs/diagnose/augment_check.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpt.augment import (
    AUGMENTATIONS,
    AugmentConfig,
    EvalTransform,
    MocoAugment,
    to_float_rgb,
)
from hpt.data import channel_stats, make_loader, open_dataset
from hpt.data.base import stratified_choice
from hpt.eval.knn import knn_scores
from hpt.methods.collapse import alignment, embedding_spread, uniformity
from hpt.methods.mocov2 import MocoV2, MocoV2Config, auto_queue_size
from hpt.models import ResNet, build_backbone, save_backbone
from hpt.pretrain.batches import step_seed
from hpt.pretrain.schedule import scheduled_lr

COLUMNS = ["step", "loss", "uniform_logits_loss", "pos_acc", "spread_q", "spread_k", "alignment", "uniformity",
           "pos_cos", "neg_cos", "feature_spread", "grad_norm", "lr", "knn", "probe_feature_spread", "seconds"]


class ObservedMocoV2(MocoV2):
    """hpt's MoCo-v2, keeping the last keys (for alignment) and the query's pooled features."""

    def __init__(self, backbone: ResNet, config: MocoV2Config, queue_size: int) -> None:
        super().__init__(backbone, config, queue_size)
        self.last_keys: torch.Tensor | None = None
        self.last_features: torch.Tensor | None = None
        self.negatives_before: torch.Tensor | None = None
        backbone.avgpool.register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self.last_features = output.detach().flatten(1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        self.last_keys = keys.detach().clone()
        self.negatives_before = self.queue.clone()
        super().enqueue(keys)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="an .npz with train/val images and labels")
    p.add_argument("--out", required=True, type=Path, help="the CSV to write (with --augment-check: a JSON)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.03, help="lr for a batch of --lr-reference-batch (scaled linearly)")
    p.add_argument("--lr-reference-batch", type=int, default=256)
    p.add_argument("--lr-warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--sgd-momentum", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--momentum", type=float, default=0.99, help="key-encoder EMA")
    p.add_argument("--queue-size", type=int, default=None, help="default: hpt's auto_queue_size")
    p.add_argument("--bn-splits", type=int, default=8, help="BatchNorm groups per batch (shuffle-BN emulation)")
    p.add_argument("--head-bn", action="store_true", help="BatchNorm after the projection head's hidden layer")
    p.add_argument("--crop-scale", type=float, nargs=2, default=(0.2, 1.0))
    p.add_argument("--jitter", type=float, nargs=4, default=(0.4, 0.4, 0.4, 0.1),
                   metavar=("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"))
    p.add_argument("--jitter-p", type=float, default=0.8)
    p.add_argument("--grayscale-p", type=float, default=0.2)
    p.add_argument("--remove-aug", nargs="*", default=["gaussian_blur"], choices=AUGMENTATIONS)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument("--probe-labels", type=int, default=2000, help="train images (stratified) in the kNN memory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-backbone", type=Path, default=None,
                   help="also write the trained backbone (safetensors) for `hpt eval linear --backbone`")
    p.add_argument("--augment-check", action="store_true",
                   help="measure which augmentations change a grayscale image, then exit")
    return p


def augment_config(args: argparse.Namespace) -> AugmentConfig:
    return AugmentConfig(image_size=args.image_size, crop_scale=tuple(args.crop_scale), jitter=tuple(args.jitter),
                         jitter_p=args.jitter_p, grayscale_p=args.grayscale_p, remove=list(args.remove_aug))


class KnnProbe:
    """kNN (k=20, T=0.07) of pooled features: a stratified train subset as memory, the val split as queries."""

    def __init__(self, data: str, labels: int, mean: tuple[float, ...], std: tuple[float, ...], side: int,
                 seed: int) -> None:
        train = open_dataset(f"npz:{data}?split=train")
        val = open_dataset(f"npz:{data}?split=val")
        assert train.labels is not None and val.labels is not None
        pick = stratified_choice(train.labels, min(labels, len(train)), np.random.default_rng(seed))
        self.memory_images = torch.from_numpy(train.images[pick])
        self.memory_labels = torch.from_numpy(train.labels[pick]).long()
        self.query_images = torch.from_numpy(val.images)
        self.query_labels = torch.from_numpy(val.labels).long()
        self.num_classes = int(max(self.memory_labels.max(), self.query_labels.max()) + 1)
        self.transform = EvalTransform(mean, std, side)

    @torch.no_grad()
    def features(self, backbone: ResNet, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone.forward_features(self.transform(images[i:i + 500]))
                          for i in range(0, len(images), 500)])

    @torch.no_grad()
    def score(self, backbone: ResNet) -> tuple[float, float]:
        """(kNN top-1 on val, spread of the val features); the backbone is scored in eval mode, then restored."""
        was_training = backbone.training
        backbone.eval()
        bank = self.features(backbone, self.memory_images)
        queries = self.features(backbone, self.query_images)
        backbone.train(was_training)
        scores = knn_scores(bank, self.memory_labels, queries, k=20, temperature=0.07,
                            num_classes=self.num_classes, multilabel=False)
        top1 = float((torch.from_numpy(scores).argmax(1) == self.query_labels).float().mean())
        return top1, float(embedding_spread(queries))


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dataset = open_dataset(f"npz:{args.data}?split=train")
    mean, std = channel_stats(dataset)
    side = args.image_size
    probe = KnnProbe(args.data, args.probe_labels, mean, std, side, args.seed)
    torch.manual_seed(args.seed)  # as a stage's random base: the same weights as `hpt pretrain --base random`
    backbone, _ = build_backbone("random", arch=args.arch, small_stem=True, width=args.width)
    queue = args.queue_size or auto_queue_size(args.steps, args.batch_size, len(dataset))[0]
    torch.manual_seed(args.seed)  # the new head and queue, as the stage seeds them
    config = MocoV2Config(momentum=args.momentum, temperature=args.temperature, bn_splits=args.bn_splits,
                          head_bn=args.head_bn)
    model = ObservedMocoV2(backbone, config, queue)
    splits = max(g for g in range(1, args.bn_splits + 1) if args.batch_size % g == 0)
    model.set_bn_splits(splits)
    model.shuffle_keys = True
    model.train()
    params = [p for p in model.query_parameters() if p.requires_grad]
    lr = args.lr * args.batch_size / args.lr_reference_batch
    optimizer = torch.optim.SGD(params, lr=lr, momentum=args.sgd_momentum, weight_decay=args.weight_decay)
    augment = MocoAugment(augment_config(args), mean, std, side)
    loader = make_loader(dataset, args.batch_size, seed=args.seed, device_type="cpu")
    uniform_loss = math.log(queue + 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v))
                for k, v in vars(args).items()}
    settings.update(queue_size_used=queue, lr_used=lr, bn_splits_used=splits, num_images=len(dataset))
    args.out.with_suffix(".json").write_text(json.dumps(settings, indent=2))
    print(f"queue {queue} (uniform-logits loss {uniform_loss:.3f}) | lr {lr:.4g} | BN groups {splits} | "
          f"head BN {args.head_bn}", flush=True)
    started = time.perf_counter()
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        knn0, fspread0 = probe.score(backbone)
        writer.writerow({"step": 0, "uniform_logits_loss": uniform_loss, "knn": knn0, "probe_feature_spread": fspread0,
                         "seconds": 0.0})
        print(f"step 0 (random weights): kNN {knn0:.4f} feature spread {fspread0:.3f}", flush=True)
        iterator = iter(loader)
        for step in range(args.steps):
            images, _ = next(iterator)
            torch.manual_seed(step_seed(args.seed, step, 0))
            im_q, im_k = augment(images), augment(images)
            step_lr = scheduled_lr(lr, step, args.steps, args.lr_warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            out = model(im_q, im_k)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            done = step + 1
            row: dict[str, Any] = {}
            if done % args.log_every == 0 or done == args.steps or done == 1:
                grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.backbone.parameters()
                                                    if p.grad is not None]))
                q, k = out.embeddings, model.last_keys
                assert k is not None and model.negatives_before is not None and model.last_features is not None
                row = {"step": done, "loss": out.loss.item(), "uniform_logits_loss": uniform_loss,
                       "pos_acc": out.logged["moco_acc"].item(), "spread_q": embedding_spread(q).item(),
                       "spread_k": embedding_spread(k).item(), "alignment": alignment(q, k).item(),
                       "uniformity": uniformity(q).item(), "pos_cos": (q * k).sum(1).mean().item(),
                       "neg_cos": (q @ model.negatives_before).mean().item(),
                       "feature_spread": embedding_spread(model.last_features).item(),
                       "grad_norm": grad_norm.item(), "lr": step_lr}
            optimizer.step()
            if done % args.probe_every == 0 or done == args.steps:
                row.setdefault("step", done)
                row["knn"], row["probe_feature_spread"] = probe.score(backbone)
            if row:
                row["seconds"] = round(time.perf_counter() - started, 1)
                writer.writerow(row)
                handle.flush()
                if "knn" in row or done % (args.log_every * 10) == 0:
                    print(" ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                   for key, value in row.items()), flush=True)
    if args.save_backbone is not None:
        args.save_backbone.parent.mkdir(parents=True, exist_ok=True)
        save_backbone(backbone, args.save_backbone, {"stage": "diagnose_from_scratch", "step": str(args.steps),
                                                     "data": args.data})
    print(f"done in {time.perf_counter() - started:.0f} s: {args.out}", flush=True)


@torch.no_grad()
def augment_check(args: argparse.Namespace) -> dict[str, Any]:
    """Each augmentation alone (p=1) on a grayscale batch: the fraction of pixels it changes by more than 1/255,
    the mean absolute change (in [0, 1] intensity units), and whether the three channels stay identical."""
    torch.set_num_threads(args.threads)
    dataset = open_dataset(f"npz:{args.data}?split=train")
    mean, std = channel_stats(dataset)
    images = torch.from_numpy(dataset.images[:512])
    side = images.shape[-1]
    everything = list(AUGMENTATIONS)
    identity = MocoAugment(AugmentConfig(image_size=side, remove=everything), mean, std, side)
    std3 = identity.std
    reference = identity(images) * std3
    cases: dict[str, dict[str, Any]] = {
        "brightness 0.4": {"keep": "color_jitter", "jitter": (0.4, 0.0, 0.0, 0.0)},
        "contrast 0.4": {"keep": "color_jitter", "jitter": (0.0, 0.4, 0.0, 0.0)},
        "saturation 0.4": {"keep": "color_jitter", "jitter": (0.0, 0.0, 0.4, 0.0)},
        "hue 0.1": {"keep": "color_jitter", "jitter": (0.0, 0.0, 0.0, 0.1)},
        "color_jitter (0.4, 0.4, 0.4, 0.1)": {"keep": "color_jitter", "jitter": (0.4, 0.4, 0.4, 0.1)},
        "grayscale": {"keep": "grayscale"},
        "horizontal_flip": {"keep": "horizontal_flip"},
        "gaussian_blur": {"keep": "gaussian_blur"},
    }
    report: dict[str, Any] = {"data": args.data, "images": len(images), "input_channels": int(images.shape[1])}
    torch.manual_seed(args.seed)
    for name, case in cases.items():
        config = AugmentConfig(image_size=side, remove=[a for a in everything if a != case["keep"]],
                               jitter=case.get("jitter", (0.4, 0.4, 0.4, 0.1)), jitter_p=1.0, grayscale_p=1.0,
                               flip_p=1.0, blur_p=1.0)
        out = MocoAugment(config, mean, std, side)(images) * std3
        change = (out - reference).abs()
        channels_equal = bool(((out[:, 0] - out[:, 1]).abs().max() < 1e-5) and
                              ((out[:, 0] - out[:, 2]).abs().max() < 1e-5))
        report[name] = {"pixels_changed": round(float((change > 1 / 255).float().mean()), 4),
                        "mean_abs_change": round(float(change.mean()), 4),
                        "channels_stay_identical": channels_equal}
    rgb = to_float_rgb(images)
    report["input_channels_identical_after_expansion"] = bool(torch.equal(rgb[:, 0], rgb[:, 1]))
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.augment_check:
        report = augment_check(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
