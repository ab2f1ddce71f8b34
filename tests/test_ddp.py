"""Two processes with gloo on the CPU train to identical weights on both ranks, and MoCo's shuffle-BN and queue
behave on two ranks as on one process that emulates them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .helpers import write_hierarchy

PER_RANK = 8  # images per rank; the one-process run takes both ranks' images as one global batch of 16
QUEUE = 32  # two steps fill it: the second step's keys land behind the first's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_ends_with_identical_weights(tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "h.yaml", [
        {"name": "t", "data": f"npz:{tiny_npz}", "steps": 3, "train": "all"},
        {"name": "bn", "data": f"npz:{tiny_npz}", "steps": 2, "train": "bn"},
    ])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "hpt", "run", str(config), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("t", "bn"):
        summary = json.loads((tmp_path / "out" / name / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_batch"] == 16
        checksums = summary["rank_checksums"]
        assert len(checksums) == 2 and checksums[0] == checksums[1] == summary["backbone_sha256"]
    assert "global batch 16 = 8 per process x 2" in done.stderr


def _moco(start: Path) -> Any:
    from hpt.methods.mocov2 import MocoV2, MocoV2Config
    from hpt.models import build_resnet

    model = MocoV2(build_resnet("resnet18", small_stem=True, width=8), MocoV2Config(dim=16, bn_splits=2), QUEUE)
    model.load_state_dict(torch.load(start, weights_only=True))
    return model


def _two_steps(start: Path, batches: Path, rank: int, world: int) -> dict[str, Any]:
    """Two MoCo steps as the stage loop runs them (DDP across ranks, BatchNorm split into bn_splits // world
    groups per process); the images of this rank are its slice of each global batch."""
    from torch import nn

    model = _moco(start).train()
    model.set_bn_splits(2 // world)
    train_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    images = torch.load(batches, weights_only=True)
    mine = slice(rank * 2 * PER_RANK // world, (rank + 1) * 2 * PER_RANK // world)
    record: dict[str, Any] = {"loss": [], "queue": []}
    for step, (im_q, im_k) in enumerate(images):
        # a seed per rank and step, as the stage's step_seed: the shuffle must use rank 0's permutation everywhere
        torch.manual_seed(100 + step + 1000 * rank)
        out = train_model(im_q[mine], im_k[mine])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        record["loss"].append(out.loss.item())
        record["queue"].append(model.queue.clone())
        if step == 0:
            record["bn1_running_mean"] = model.backbone.bn1.running_mean.clone()
    record["weights"] = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    return record


def _rank_worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        record = _two_steps(Path(folder) / "start.pt", Path(folder) / "batches.pt", rank, world)
        torch.save(record, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_shuffle_bn_and_queue_match_one_process_emulating_them(tmp_path: Path) -> None:
    """One process with BatchNorm split in two groups of 8 (the ranks' blocks of the batch) is what two ranks of 8
    images compute: the same shuffle permutation (rank 0's is broadcast; the one process draws the same one from
    the same seed) puts the same keys in each BatchNorm group, the keys are gathered in rank order into the queue,
    and DDP's averaged gradients equal the one process's gradient of the mean loss. So losses, queue contents and
    order, and weights agree to float rounding. What cannot agree by design: each rank's BatchNorm running
    statistics come from its own 8 images (only their mean over the ranks is the one process's, checked after
    step 1), and from step 2 on DDP overwrites rank 1's buffers with rank 0's before each forward."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    _save_fresh(tmp_path / "start.pt")
    batches = [(torch.randn(2 * PER_RANK, 3, 16, 16), torch.randn(2 * PER_RANK, 3, 16, 16)) for _ in range(2)]
    torch.save(batches, tmp_path / "batches.pt")
    mp.spawn(_rank_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one = _two_steps(tmp_path / "start.pt", tmp_path / "batches.pt", 0, 1)

    for step in range(2):  # the one process's loss is the mean over the global batch: the mean of the ranks'
        assert sum(r["loss"][step] for r in ranks) / 2 == pytest.approx(one["loss"][step], abs=1e-5)
        for r in ranks:  # every rank holds the whole global batch's keys, rank 0's images first
            torch.testing.assert_close(r["queue"][step], one["queue"][step], atol=1e-5, rtol=0)
    fresh = torch.load(tmp_path / "start.pt", weights_only=True)["queue"]
    assert not torch.allclose(one["queue"][0][:, :16], fresh[:, :16])  # step 1 wrote its 16 keys at the front
    torch.testing.assert_close(one["queue"][0][:, 16:], fresh[:, 16:])  # and left the rest alone
    torch.testing.assert_close(one["queue"][1][:, :16], one["queue"][0][:, :16])  # step 2 wrote behind them
    assert not torch.allclose(one["queue"][1][:, 16:], fresh[:, 16:])
    mean_bn = (ranks[0]["bn1_running_mean"] + ranks[1]["bn1_running_mean"]) / 2
    torch.testing.assert_close(mean_bn, one["bn1_running_mean"], atol=1e-6, rtol=0)
    assert not torch.allclose(ranks[0]["bn1_running_mean"], ranks[1]["bn1_running_mean"])  # per-rank statistics
    for key, value in one["weights"].items():
        for r in ranks:
            torch.testing.assert_close(r["weights"][key], value, atol=1e-5, rtol=1e-4, msg=key)


def _save_fresh(path: Path) -> Path:
    """A MoCo model's initial state (weights and random queue) from the current seed, for every process to load."""
    from hpt.methods.mocov2 import MocoV2, MocoV2Config
    from hpt.models import build_resnet

    model = MocoV2(build_resnet("resnet18", small_stem=True, width=8), MocoV2Config(dim=16, bn_splits=2), QUEUE)
    torch.save(model.state_dict(), path)
    return path
