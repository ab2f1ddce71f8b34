"""ResNet: torchvision key/shape compatibility, stems, widths, SplitBatchNorm2d."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hpt.errors import HptError
from hpt.models import ARCHS, ResNet, SplitBatchNorm2d, build_resnet, set_bn_splits
from hpt.models.resnet import BasicBlock, Bottleneck

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "torchvision_resnet_keys.json"


@pytest.fixture(scope="module")
def torchvision_keys() -> dict[str, list[list[object]]]:
    data: dict[str, list[list[object]]] = json.loads(FIXTURE.read_text())
    return data


def _block(layer: nn.Sequential, i: int) -> BasicBlock | Bottleneck:
    block = layer[i]
    assert isinstance(block, (BasicBlock, Bottleneck))
    return block


def _t(x: Tensor | None) -> Tensor:
    """Narrow an optional tensor (BN buffers, grads) for the type checker."""
    assert x is not None
    return x


@pytest.mark.parametrize("arch", ARCHS)
def test_keys_and_shapes_match_torchvision(arch: str, torchvision_keys: dict[str, list[list[object]]]) -> None:
    model = build_resnet(arch, num_classes=1000)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == torchvision_keys[arch]  # same keys, same shapes, same order


def test_no_fc_without_num_classes() -> None:
    model = build_resnet("resnet18", width=8)
    assert model.fc is None
    assert not any(k.startswith("fc.") for k in model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, model.feature_dim)


def test_every_bn_is_split_bn() -> None:
    model = build_resnet("resnet50", width=8)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is SplitBatchNorm2d for m in bns)
    assert set_bn_splits(model, 4) == len(bns)
    assert all(m.num_splits == 4 for m in bns)


@pytest.mark.parametrize("size", [32, 28])
def test_small_stem(size: int) -> None:
    model = build_resnet("resnet18", small_stem=True, width=8, num_classes=10)
    assert model.small_stem and tuple(model.conv1.weight.shape) == (8, 3, 3, 3)
    assert model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, size, size)
    assert model(x).shape == (2, 10)
    stages = model.stage_outputs(x)
    assert list(stages) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert stages["stem"].shape[-1] == size  # no downsampling in the small stem


def test_stage_outputs_and_features_standard_stem() -> None:
    model = build_resnet("resnet18", width=8).eval()
    x = torch.randn(1, 3, 64, 64)
    stages = model.stage_outputs(x)
    assert [tuple(t.shape) for t in stages.values()] == [
        (1, 8, 16, 16), (1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2)
    ]
    torch.testing.assert_close(model.forward_features(x), stages["layer4"].mean(dim=(2, 3)))


@pytest.mark.parametrize(("arch", "width", "dim"), [("resnet18", 16, 128), ("resnet34", 8, 64), ("resnet50", 8, 256), ("resnet50", 64, 2048)])
def test_width_and_feature_dim(arch: str, width: int, dim: int) -> None:
    model = build_resnet(arch, width=width)
    assert model.feature_dim == dim and model.width == width and model.arch == arch
    assert tuple(model.conv1.weight.shape) == (width, 3, 7, 7)
    assert _block(model.layer1, 0).conv1.weight.shape[0] == width
    last = _block(model.layer4, -1)
    out_bn = last.bn3 if isinstance(last, Bottleneck) else last.bn2
    assert out_bn.weight.shape[0] == dim


def test_forward_features_shape_resnet50_small() -> None:
    model = build_resnet("resnet50", width=8, small_stem=True)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 256)


@pytest.mark.parametrize("width", [0, 4, 12, 63, -8])
def test_bad_width(width: int) -> None:
    with pytest.raises(HptError, match="multiple of 8"):
        build_resnet("resnet18", width=width)


def test_unknown_arch_lists_archs() -> None:
    with pytest.raises(HptError, match="resnet18, resnet34, resnet50"):
        build_resnet("resnet101")


def test_init_like_torchvision() -> None:
    model = build_resnet("resnet18", width=16, num_classes=5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = _block(model.layer2, 0).conv1.weight  # kaiming normal, fan_out = 32 * 3 * 3
    assert abs(w.std().item() - (2.0 / (32 * 9)) ** 0.5) < 0.01
    z = build_resnet("resnet18", width=8, zero_init_residual=True)
    assert all(bool(torch.all(b.bn2.weight == 0)) for b in z.modules() if isinstance(b, BasicBlock))


def test_is_resnet_instance() -> None:
    assert isinstance(build_resnet("resnet18", width=8), ResNet)


# ---------------------------------------------------------------- SplitBatchNorm2d


def _pair(c: int = 6, **kw: object) -> tuple[nn.BatchNorm2d, SplitBatchNorm2d]:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(c, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    split = SplitBatchNorm2d(c, **kw)  # type: ignore[arg-type]
    split.load_state_dict(bn.state_dict())
    return bn, split


def test_split_bn_same_keys_as_bn() -> None:
    bn, split = _pair()
    assert list(bn.state_dict()) == list(split.state_dict())
    assert split.num_splits == 1 and "num_splits" not in split.state_dict()


def test_split_bn_one_split_equals_bn() -> None:
    bn, split = _pair()
    for _ in range(3):
        x = torch.randn(8, 6, 5, 5) * 3 + 1
        assert torch.equal(bn(x), split(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), getattr(split, name))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_split_bn_four_splits_equals_four_bns(momentum: float | None) -> None:
    bn, split = _pair(momentum=momentum)
    split.num_splits = 4
    bns = [copy.deepcopy(bn) for _ in range(4)]
    for _ in range(2):  # two steps: running stats keep following the mean of the group updates
        x = torch.randn(8, 6, 5, 5) * 2 + torch.arange(8.0).view(8, 1, 1, 1)  # groups differ in mean
        out = split(x)
        expected = torch.empty_like(x)
        for g, b in enumerate(bns):  # group g: the strided samples g, g+4
            expected[g::4] = b(x[g::4])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(split.running_mean, torch.stack([_t(b.running_mean) for b in bns]).mean(0))
        torch.testing.assert_close(split.running_var, torch.stack([_t(b.running_var) for b in bns]).mean(0))
        for b in bns:  # the 4 "GPUs" start each step from the shared (averaged) running stats
            _t(b.running_mean).copy_(_t(split.running_mean))
            _t(b.running_var).copy_(_t(split.running_var))
    assert int(_t(split.num_batches_tracked)) == 2
    # Chunk statistics really are per chunk: differs from plain BN over the whole batch.
    assert not torch.allclose(split(x), bn(x), atol=1e-3)


def test_split_bn_gradients_match_chunked_bns() -> None:
    bn, split = _pair()
    split.num_splits = 2
    bns = [copy.deepcopy(bn) for _ in range(2)]
    x = torch.randn(4, 6, 3, 3)
    split(x).square().sum().backward()
    sum(b(x[g::2]).square().sum() for g, b in enumerate(bns)).backward()
    torch.testing.assert_close(split.weight.grad, _t(bns[0].weight.grad) + _t(bns[1].weight.grad))
    torch.testing.assert_close(split.bias.grad, _t(bns[0].bias.grad) + _t(bns[1].bias.grad))


def test_resnet_bn_groups_are_the_contiguous_chunks_of_its_batch() -> None:
    """A ResNet with 4 BatchNorm groups computes, in training, what 4 copies of it compute on the 4 contiguous
    chunks of the batch (the per-GPU blocks shuffle-BN emulates): features, stage outputs, gradients, and
    running statistics (the mean of the copies'), although each of its BatchNorms groups strided samples."""
    from hpt.models.resnet import chunks_to_strided, strided_to_chunks

    torch.manual_seed(0)
    model = build_resnet("resnet18", small_stem=True, width=8).train()
    copies = [copy.deepcopy(model) for _ in range(4)]
    set_bn_splits(model, 4)
    x = torch.randn(8, 3, 12, 12) + torch.arange(8.0).view(8, 1, 1, 1)  # chunks differ in mean
    assert torch.equal(strided_to_chunks(chunks_to_strided(x, 4), 4), x)
    features = model.forward_features(x)
    expected = torch.cat([c.forward_features(chunk) for c, chunk in zip(copies, x.chunk(4))])
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    features.square().sum().backward()
    expected.square().sum().backward()
    grad = sum(_t(c.conv1.weight.grad) for c in copies)
    torch.testing.assert_close(model.conv1.weight.grad, grad, rtol=1e-4, atol=1e-5)
    mean = torch.stack([_t(c.layer1[0].bn1.running_mean) for c in copies]).mean(0)
    torch.testing.assert_close(_t(model.layer1[0].bn1.running_mean), mean, rtol=1e-5, atol=1e-6)
    stages = model.stage_outputs(x)
    for name, out in stages.items():
        chunks = torch.cat([c.stage_outputs(chunk)[name] for c, chunk in zip(copies, x.chunk(4))])
        torch.testing.assert_close(out, chunks, rtol=1e-5, atol=1e-5, msg=name)
    set_bn_splits(model, 1)  # BatchNorm over the whole batch differs: the groups matter
    assert not torch.allclose(model.forward_features(x), features.detach(), atol=1e-3)


def test_split_bn_eval_ignores_splits_and_indivisible_batch_falls_back() -> None:
    bn, split = _pair()
    split.num_splits = 4
    with torch.no_grad():
        _t(bn.running_mean).uniform_(-1, 1)
        _t(bn.running_var).uniform_(0.5, 2)
    split.load_state_dict(bn.state_dict())
    x = torch.randn(8, 6, 4, 4)
    bn.eval(), split.eval()
    assert torch.equal(bn(x), split(x))
    bn.train(), split.train()
    y = torch.randn(6, 6, 4, 4)  # 6 not divisible by 4: plain BN for this call
    assert torch.equal(bn(y), split(y))
    assert torch.equal(_t(bn.running_mean), _t(split.running_mean))
    assert torch.equal(_t(bn.running_var), _t(split.running_var))


def test_resnet_with_splits_trains() -> None:
    model = build_resnet("resnet18", width=8, small_stem=True)
    set_bn_splits(model, 2)
    out = model(torch.randn(4, 3, 16, 16))
    out.sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize(("arch", "small_stem"), [("resnet18", True), ("resnet50", False)])
def test_inference_copy_folds_every_bn_and_keeps_outputs(arch: str, small_stem: bool) -> None:
    from hpt.models.inference import inference_copy

    torch.manual_seed(0)
    model = build_resnet(arch, small_stem=small_stem, width=8)
    for m in model.modules():  # statistics and affine parameters far from the identity, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    model.train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 40, 40)
    fused = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        expected = model.eval()(x)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    # folding reorders float32 arithmetic: compare against the output's own scale, not a fixed 1e-5
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    model.train()
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())



def _graph_nodes(root: torch.autograd.graph.Node) -> Counter[str]:
    """How many nodes of each type the autograd graph below `root` holds."""
    seen: set[int] = set()
    counts: Counter[str] = Counter()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        counts[type(node).__name__] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return counts


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_split_bn_training_graph_copies_no_activation(arch: str) -> None:
    """With BatchNorm groups, no in-place op lands on a BatchNorm output autograd tracks as a view (autograd would
    route its gradient through copies of the batch: CopySlices), and no BatchNorm copies its input or output: the one
    copy is the pooled features' reorder (the input's needs no gradient)."""
    model = build_resnet(arch, small_stem=True, width=8).train()
    set_bn_splits(model, 2)
    nodes = _graph_nodes(model.forward_features(torch.randn(4, 3, 16, 16)).grad_fn)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert nodes["NativeBatchNormBackward0"] == batch_norms
    assert nodes["CopySlices"] == 0 and nodes["AsStridedBackward0"] == 0
    assert nodes["TransposeBackward0"] == 1 and nodes["CloneBackward0"] == 1
