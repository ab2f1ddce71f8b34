"""ResNet-18/34/50 with torchvision's exact state-dict keys, shapes and weight initialisation.

Differences from ``torchvision.models.resnet`` (none of which change a key or a shape):

* every BatchNorm is a :class:`SplitBatchNorm2d` (emulates per-GPU BatchNorm for MoCo's shuffle-BN);
* ``small_stem=True`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 conv (28-64 px images);
* ``width`` scales every layer (64 is torchvision's);
* ``in_chans`` sets conv1's input channels (3, torchvision's, by default; see hpt.models.stem for N channels);
* without ``num_classes`` the model has no ``fc`` (and no ``fc.*`` keys) and returns pooled features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpt.errors import HptError

ARCHS = ("resnet18", "resnet34", "resnet50")

# arch -> (block type, blocks per layer)
_LAYOUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed per group of the batch.

    With ``num_splits = G`` the batch falls into G groups of strided samples (group ``g`` is samples
    ``g, g+G, g+2G, ...``); each group is normalised with its own mean/variance, and the running statistics
    become the mean of the G per-group updates (as the MoCo CIFAR demo's ``SplitBatchNorm`` does). Strided groups
    are a view of the batch as (N/G, G*C, H, W), so no layer copies its input or output. A :class:`ResNet` reorders
    its input once (:func:`chunks_to_strided`) so that its groups are the batch's G contiguous chunks
    ``[g*N/G, (g+1)*N/G)``, as DDP would place them on G GPUs: this emulates per-GPU BatchNorm for MoCo's
    shuffle-BN on one device. Parameters, buffers and keys are exactly ``nn.BatchNorm2d``'s; ``num_splits`` is a
    plain attribute.

    ``num_splits == 1``, eval mode, or a batch size not divisible by G: exactly ``nn.BatchNorm2d``.
    """

    num_splits: int

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.num_splits = int(num_splits)

    def extra_repr(self) -> str:
        """Add ``num_splits`` to the usual BatchNorm repr."""
        base: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return base + f", num_splits={self.num_splits}"

    def groups_for(self, batch: int) -> int:
        """The groups a batch of `batch` samples is normalised in: num_splits in training when it divides the batch,
        else 1 (plain BatchNorm)."""
        g = self.num_splits
        return g if g > 1 and self.training and batch % g == 0 else 1

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` (N, C, H, W); see the class docstring for the split behaviour."""
        g = self.groups_for(input.shape[0])
        if g == 1 or input.dim() != 4:
            return super().forward(input)
        self._check_input_dim(input)
        n, c, h, w = input.shape
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # (N, C, H, W) -> (N/G, G*C, H, W), a view of a contiguous batch: channel g*C + c is group g's channel c.
        x = input.reshape(n // g, g * c, h, w)
        running_mean = running_var = None
        if self.running_mean is not None and self.running_var is not None:
            running_mean = self.running_mean.repeat(g)
            running_var = self.running_var.repeat(g)
        weight = self.weight.repeat(g) if self.weight is not None else None
        bias = self.bias.repeat(g) if self.bias is not None else None
        out = F.batch_norm(x, running_mean, running_var, weight, bias, True, factor, self.eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(g, c).mean(dim=0))  # type: ignore[union-attr]
                self.running_var.copy_(running_var.view(g, c).mean(dim=0))  # type: ignore[union-attr]
        return out.reshape(n, c, h, w)


def chunks_to_strided(x: Tensor, groups: int) -> Tensor:
    """`x` (N, ...) reordered so that its `groups` contiguous chunks become the strided groups ``x[g::groups]`` that
    :class:`SplitBatchNorm2d` normalises together: sample j of chunk g moves to position ``j * groups + g``."""
    return x.reshape(groups, x.shape[0] // groups, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def strided_to_chunks(x: Tensor, groups: int) -> Tensor:
    """The inverse of :func:`chunks_to_strided`: the batch back in its original order."""
    return x.reshape(x.shape[0] // groups, groups, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def set_bn_splits(module: nn.Module, num_splits: int) -> int:
    """Set ``num_splits`` on every :class:`SplitBatchNorm2d` inside ``module``; return how many."""
    count = 0
    for m in module.modules():
        if isinstance(m, SplitBatchNorm2d):
            m.num_splits = int(num_splits)
            count += 1
    return count


def _in_place_is_free(x: Tensor) -> bool:
    """Whether an in-place op on `x` costs nothing extra: always, except on a view that autograd tracks (a split
    BatchNorm's output in training), whose gradient autograd would then route through copies of the whole batch."""
    return x._base is None or not (x.requires_grad and torch.is_grad_enabled())


def _relu(x: Tensor) -> Tensor:
    """ReLU, in place where that is free (:func:`_in_place_is_free`)."""
    return F.relu(x, inplace=_in_place_is_free(x))


def _add(out: Tensor, identity: Tensor) -> Tensor:
    """The residual sum, into `out` where that is free (:func:`_in_place_is_free`), as torchvision's ``out +=``."""
    return out.add_(identity) if _in_place_is_free(out) else out + identity


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = SplitBatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = SplitBatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Residual block forward."""
        identity = x if self.downsample is None else self.downsample(x)
        out = _relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(_add(out, identity))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, as torchvision's "ResNet v1.5") -> 1x1 x4 with a residual (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = SplitBatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = SplitBatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = SplitBatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Residual block forward."""
        identity = x if self.downsample is None else self.downsample(x)
        out = _relu(self.bn1(self.conv1(x)))
        out = _relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(_add(out, identity))


class ResNet(nn.Module):
    """A torchvision-compatible ResNet backbone (optionally with an ``fc`` classifier)."""

    arch: str
    small_stem: bool
    width: int
    in_chans: int
    feature_dim: int
    fc: nn.Linear | None

    def __init__(
        self,
        arch: str = "resnet50",
        *,
        small_stem: bool = False,
        width: int = 64,
        num_classes: int | None = None,
        zero_init_residual: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        _check_args(arch, width, num_classes)
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise HptError(f"in_chans must be a positive integer (3 for RGB), got {in_chans!r}")
        self.in_chans = in_chans
        kind, depths = _LAYOUTS[arch]
        block: type[BasicBlock | Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.small_stem, self.width = arch, bool(small_stem), int(width)
        self.feature_dim = 8 * width * block.expansion
        if small_stem:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = SplitBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if small_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = width
        self.layer1 = self._make_layer(block, width, depths[0])
        self.layer2 = self._make_layer(block, width * 2, depths[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, depths[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes is not None else None
        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._inplanes, planes * block.expansion, stride),
                SplitBatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's init: kaiming-normal (fan_out) convs, BN weight 1 / bias 0, default Linear."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _stem(self, x: Tensor) -> Tensor:
        out: Tensor = self.maxpool(_relu(self.bn1(self.conv1(x))))
        return out

    def bn_groups(self, batch: int) -> int:
        """The BatchNorm groups of a batch of `batch` images: num_splits in training when it divides the batch, else
        1 (every BatchNorm of the model shares bn1's num_splits: set_bn_splits)."""
        return self.bn1.groups_for(batch) if isinstance(self.bn1, SplitBatchNorm2d) else 1

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally average-pooled features after layer4: (N, feature_dim).

        With BatchNorm groups (training with num_splits > 1) the batch is reordered once on the way in and the
        features once on the way out, so that every BatchNorm's groups are the contiguous chunks of `x`."""
        groups = self.bn_groups(x.shape[0])
        if groups > 1:
            x = chunks_to_strided(x, groups)
        x = self._stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(x), 1)
        return strided_to_chunks(features, groups) if groups > 1 else features

    def forward(self, x: Tensor) -> Tensor:
        """``fc(features)`` if the model has an fc, else the pooled features."""
        feats = self.forward_features(x)
        return self.fc(feats) if self.fc is not None else feats

    def stage_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Feature maps after the stem (conv1/bn1/relu/maxpool) and after each of layer1..layer4."""
        groups = self.bn_groups(x.shape[0])
        if groups > 1:  # the BatchNorm groups are the contiguous chunks of x (forward_features)
            x = chunks_to_strided(x, groups)
        outs: dict[str, Tensor] = {}
        x = outs["stem"] = self._stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = outs[name] = getattr(self, name)(x)
        if groups > 1:
            return {name: strided_to_chunks(out, groups) for name, out in outs.items()}
        return outs


def _check_args(arch: str, width: int, num_classes: int | None) -> None:
    if arch not in _LAYOUTS:
        raise HptError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 8 or width % 8 != 0:
        raise HptError(f"width must be a multiple of 8 and at least 8 (64 is torchvision's), got {width!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise HptError(f"num_classes must be a positive integer or None, got {num_classes!r}")


def build_resnet(
    arch: str = "resnet50",
    *,
    small_stem: bool = False,
    width: int = 64,
    num_classes: int | None = None,
    zero_init_residual: bool = False,
    in_chans: int = 3,
) -> ResNet:
    """Build a randomly initialised ResNet; ``num_classes=None`` gives a backbone without ``fc``."""
    return ResNet(arch, small_stem=small_stem, width=width, num_classes=num_classes,
                  zero_init_residual=zero_init_residual, in_chans=in_chans)
