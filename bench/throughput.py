"""Training throughput of hpt against the compute limit, and of the data path alone.

    python bench/throughput.py [--arch resnet18 --small-stem --width 16 --res 32 --batch 256 --precision fp32
                               --device cpu --steps 20 --warmup 3 --data npz|folder|SPEC --compile --channels-last]

Measures, on the same model, resolution, batch and precision:
 1. compute limit: query encoder forward+backward plus key encoder forward on ready tensors, nothing else;
 2. full step: the MoCo-v2 step exactly as `hpt pretrain` runs it (loader, augmentation, momentum update,
    queue, loss, optimizer), read from the stage's own per-step metrics after the warm-up steps;
 3. data path: read + decode + two augmented views, in images/s;
and prints images/s for each, the ratio 2/1, the ratio 3/2 and the peak resident memory. Results are for
docs/benchmarks.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpt.augment import AugmentConfig, MocoAugment
from hpt.config import from_dict
from hpt.data import channel_stats, make_loader, open_any
from hpt.methods.mocov2 import MocoV2, MocoV2Config
from hpt.models import build_resnet
from hpt.pretrain.config import StageConfig
from hpt.pretrain.stage import run_stage


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--res", type=int, default=32, help="side of the augmented views")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=20, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data", default="npz", help="npz (synthetic, in memory), folder (synthetic PNG files) or a spec")
    p.add_argument("--images", type=int, default=4096, help="images in the synthetic data set")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compute limit and full step)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    return p.parse_args()


def synthetic_data(kind: str, res: int, n: int, folder: Path) -> str:
    """A data spec of n random RGB images of side res (noise images: decode cost is realistic for PNG)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8)
    if kind == "npz":
        path = folder / "bench.npz"
        np.savez(path, train_images=images)
        return f"npz:{path}"
    from PIL import Image

    root = folder / "images"
    root.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"{i:06d}.png")
    return f"folder:{root}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def compute_limit(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of query forward+backward and key forward on ready tensors."""
    backbone = build_resnet(args.arch, small_stem=args.small_stem, width=args.width)
    model = MocoV2(backbone, MocoV2Config(), queue_size=args.batch).to(device).train()
    model.set_bn_splits(MocoV2Config().bn_splits)  # the same split BatchNorm as the stage (shuffle-BN on one device)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    query = lambda x: model.head(model.backbone.forward_features(x))  # noqa: E731
    key = lambda x: model.head_k(model.backbone_k.forward_features(x))  # noqa: E731
    if args.compile:
        query, key = torch.compile(query), torch.compile(key)
    x_q = torch.randn(args.batch, 3, args.res, args.res, device=device).contiguous(memory_format=memory)
    x_k = torch.randn_like(x_q)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with autocast(device, args.precision):
            q = query(x_q)
            with torch.no_grad():
                key(x_k)
        q.float().square().mean().backward()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return args.batch * len(times) / sum(times)


def full_step(args: argparse.Namespace, spec: str, out: Path, **settings: Any) -> float:
    """Images/s of `hpt pretrain`'s step, from the stage's per-step metrics after the warm-up; `settings`: further
    keys of the stage's config (moco={"queue_size": 4096}, say)."""
    config = from_dict(StageConfig, {
        "name": "bench", "data": spec, "steps": args.warmup + args.steps, "batch_size": args.batch,
        "precision": args.precision, "device": args.device, "channels_last": args.channels_last,
        "log_every": 1, "checkpoint_every": 10**9, "workers": args.workers, "compile": args.compile,
        "augment": {"image_size": args.res}, **settings,
    })
    backbone = build_resnet(args.arch, small_stem=args.small_stem, width=args.width)
    run_stage(config, backbone, out)
    with (out / "bench" / "metrics.csv").open(newline="") as handle:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(handle)][args.warmup:]
    return args.batch * len(rates) / sum(args.batch / r for r in rates)


def data_path(args: argparse.Namespace, spec: str, device: torch.device) -> float:
    """Images/s of reading, decoding and producing two augmented views, without a model."""
    dataset = open_any(spec)
    mean, std = channel_stats(dataset)
    augment = MocoAugment(AugmentConfig(image_size=args.res), mean, std, args.res).to(device)
    loader = iter(make_loader(dataset, args.batch, workers=args.workers, device_type=device.type))
    count, start = 0, 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        images, _ = next(loader)
        images = images.to(device, non_blocking=True)
        augment(images), augment(images)
        count += images.shape[0] if i >= args.warmup else 0
    sync(device)
    return count / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = synthetic_data(args.data, args.res, args.images, folder) if args.data in ("npz", "folder") else args.data
        limit = compute_limit(args, device)
        step = full_step(args, spec, folder / "run")
        data = data_path(args, spec, device)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "compute_limit_img_s": round(limit, 1), "full_step_img_s": round(step, 1), "data_path_img_s": round(data, 1),
        "full_over_limit": round(step / limit, 3), "data_over_full": round(data / step, 2),
        "peak_rss_mib": round(peak_mib, 1),
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(f"compute limit {limit:9.1f} img/s   (query fwd+bwd + key fwd on ready tensors)")
    print(f"full step     {step:9.1f} img/s   = {step / limit:.2f} x the compute limit (goal >= 0.85)")
    print(f"data path     {data:9.1f} img/s   = {data / step:.1f} x the full step (goal >= 3)")
    print(f"peak RSS      {peak_mib:9.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
