from __future__ import annotations

import torch

from hpt.methods.mocov2 import MocoV2, MocoV2Config, auto_queue_size
from hpt.models import build_resnet


def tiny_moco(queue: int = 32, **kw: object) -> MocoV2:
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", small_stem=True, width=8)
    return MocoV2(backbone, MocoV2Config(dim=16, **kw), queue_size=queue)  # type: ignore[arg-type]


def test_auto_queue_size_is_bounded_by_the_stage_and_the_data() -> None:
    assert auto_queue_size(5000, 256, 1_000_000)[0] == 65536
    size, reason = auto_queue_size(50, 256, 1_000_000)
    assert size == 6400 and "keys this stage produces" in reason
    size, reason = auto_queue_size(5000, 256, 4708)
    assert size == 2304 and "half of the 4,708 images" in reason
    assert auto_queue_size(1, 256, 100)[0] == 256  # never below one batch


def test_forward_gives_a_finite_loss_and_fills_the_queue() -> None:
    model = tiny_moco(queue=32)
    x = torch.randn(8, 3, 16, 16)
    before = model.queue.clone()
    out = model(x, x + 0.01 * torch.randn_like(x))
    assert torch.isfinite(out.loss) and 0 <= float(out.logged["moco_acc"]) <= 1
    assert int(model.queue_ptr) == 8
    assert not torch.allclose(model.queue[:, :8], before[:, :8]) and torch.equal(model.queue[:, 8:], before[:, 8:])
    assert torch.allclose(model.queue[:, :8].norm(dim=0), torch.ones(8), atol=1e-5)
    out.loss.backward()
    assert model.backbone.conv1.weight.grad is not None and model.backbone_k.conv1.weight.grad is None


def test_momentum_update_moves_keys_towards_queries() -> None:
    model = tiny_moco(momentum=0.9)
    with torch.no_grad():
        model.backbone.conv1.weight.add_(1.0)
    key_before = model.backbone_k.conv1.weight.clone()
    model.momentum_update()
    expected = 0.9 * key_before + 0.1 * model.backbone.conv1.weight
    assert torch.allclose(model.backbone_k.conv1.weight, expected)


def test_shuffled_keys_come_back_in_order() -> None:
    model = tiny_moco()
    model.set_bn_splits(1)
    model.eval()  # per-sample computation: shuffling must not change a key
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(model.head_k(model.backbone_k.forward_features(x)), dim=1)
        shuffled = model.encode_keys(x)
    assert torch.allclose(plain, shuffled, atol=1e-5)


def test_loss_decreases_once_the_queue_holds_real_keys() -> None:
    """Two alternating batches and a queue of one batch: the negatives are always the other batch's keys."""
    model = tiny_moco(queue=16, momentum=0.5)
    model.set_bn_splits(2)
    optim = torch.optim.SGD([p for p in model.query_parameters() if p.requires_grad], lr=0.01, momentum=0.9)  # larger steps collapse this width-8 net
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 3, 16, 16, generator=gen) for _ in range(2)]
    with torch.no_grad():
        model(batches[1], batches[1])  # fill the queue with real keys
    losses = []
    for step in range(40):
        x = batches[step % 2]
        out = model(x, x + 0.05 * torch.randn(x.shape, generator=gen))
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(out.loss.item())
    assert sum(losses[-4:]) < 0.6 * sum(losses[4:8])


def test_head_batchnorm_groups_are_the_contiguous_chunks_of_the_batch() -> None:
    """The projection head's BatchNorm with 4 groups is 4 BatchNorms on the 4 contiguous chunks (the backbone's
    shuffle-BN groups), in the output and in the mean running statistics."""
    from torch import nn

    from hpt.methods.mocov2 import SplitBatchNorm1d

    torch.manual_seed(0)
    split = SplitBatchNorm1d(5)
    split.num_splits = 4
    bns = [nn.BatchNorm1d(5) for _ in range(4)]
    x = torch.randn(8, 5) + torch.arange(8.0).view(8, 1)  # chunks differ in mean
    expected = torch.cat([bn(chunk) for bn, chunk in zip(bns, x.chunk(4))])
    torch.testing.assert_close(split(x), expected, rtol=1e-5, atol=1e-5)
    mean = torch.stack([bn.running_mean for bn in bns]).mean(0)
    torch.testing.assert_close(split.running_mean, mean, rtol=1e-5, atol=1e-6)
