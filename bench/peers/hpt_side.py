"""hpt's side of the peer benchmarks: the MoCo-v2 step exactly as `hpt pretrain` runs it (bench/throughput.py's
full step: loader, kornia augmentation in the training process, shuffle-BN, momentum update, queue, loss, SGD),
read from the stage's own per-step metrics after the warm-up steps."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for throughput.py

import throughput
from memory import children_private_mib

from hpt.methods.mocov2 import MocoV2Config
from hpt.models import build_resnet


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of hpt's full step on the npz at args.data with a queue of args.queue keys."""
    settings = argparse.Namespace(
        arch="resnet18", small_stem=True, width=args.width, res=args.res, batch=args.batch, precision="fp32",
        device="cpu", steps=args.steps, warmup=args.warmup, workers=None, compile=False, channels_last=False)
    with tempfile.TemporaryDirectory() as tmp:
        rate = throughput.full_step(settings, f"npz:{args.data}", Path(tmp), moco={"queue_size": args.queue},
                                    seed=0)
        workers, workers_mib = children_private_mib()  # loader workers (none on in-memory npz data)
    backbone = build_resnet("resnet18", small_stem=True, width=args.width)
    defaults = MocoV2Config()
    return {
        "img_s": rate,
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "workers": workers, "workers_private_mib": workers_mib,
        "what": f"hpt resnet18 width {args.width} small stem, MoCo-v2 queue {args.queue}, temperature "
                f"{defaults.temperature}, momentum {defaults.momentum}, shuffle-BN in {defaults.bn_splits} groups, "
                "kornia augmentation and the in-memory npz batches in the training process (no loader workers)",
    }
