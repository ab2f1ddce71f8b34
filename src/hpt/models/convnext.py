"""ConvNeXt (V1) and ConvNeXt-V2 backbones with timm's exact state-dict keys, shapes and numerics.

The module tree mirrors ``timm.models.convnext.ConvNeXt`` (timm 1.0) with its default ``stem_type="patch"``,
``head_norm_first=False``, kernel size 7, MLP ratio 4 and ``output_stride=32``:

* ``stem.0`` (Conv2d, kernel = stride = ``patch_size``) and ``stem.1`` (LayerNorm over channels, NCHW);
* ``stages.{i}.downsample.{0,1}``: LayerNorm (NCHW) then Conv2d 2x2 stride 2, for ``i > 0``; stage 0 has one
  too exactly when ``patch_size == 2`` (timm's rule ``stride = 2 if curr_stride == 2 or i > 0``, so a 2x2 stem is
  followed by a second 2x2 downsample: total stride 4 before stage 0, as with ``patch_size=4``);
* ``stages.{i}.blocks.{j}``: ``conv_dw`` (7x7 depthwise), ``norm``, ``mlp.fc1`` / ``mlp.fc2`` (``nn.Linear`` on
  channels-last tensors, or 1x1 ``nn.Conv2d`` with ``conv_mlp=True`` as timm's atto..nano use), V2's
  ``mlp.grn.weight`` / ``mlp.grn.bias`` (Global Response Norm, shape (C,)), and the LayerScale ``gamma`` (C,)
  when ``ls_init_value`` is not None (V1 default 1e-6; V2 default None);
* ``head.norm``: the final LayerNorm, applied after global average pooling (timm's ``NormMlpClassifierHead``),
  and ``head.fc`` only when ``num_classes`` is given.

The pooled features (``forward_features``) are ``head.norm(mean over H, W)``, which is what timm returns from
``forward_head(forward_features(x))`` with ``num_classes=0``.

Weight initialisation is timm's ``_init_weights``: every Conv2d and Linear weight is drawn from a normal with
std 0.02 truncated to [-2, 2] (absolute bounds, as ``timm.layers.trunc_normal_``), every such bias is zero;
LayerNorm weights are 1 and biases 0; GRN weight and bias are 0; LayerScale ``gamma`` is ``ls_init_value``.
``drop_path_rate`` gives timm's stage-wise linear stochastic-depth schedule (identity in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpt.errors import HptError

KERNEL_SIZE = 7
MLP_RATIO = 4
LN_EPS = 1e-6
DEFAULT_LS_INIT = 1e-6


@dataclass(frozen=True)
class ConvNeXtSpec:
    """Everything that decides a ConvNeXt's state-dict keys and shapes."""

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    patch_size: int = 4
    v2: bool = False  # Global Response Norm in the MLP
    layer_scale: bool = True  # a ``gamma`` per block
    conv_mlp: bool = False  # 1x1 convs (4-D fc weights) instead of Linear
    in_chans: int = 3

    def __str__(self) -> str:
        kind = "ConvNeXt-V2" if self.v2 else "ConvNeXt"
        return (f"{kind} (depths={list(self.depths)}, dims={list(self.dims)}, patch_size={self.patch_size}, "
                f"layer_scale={self.layer_scale}, conv_mlp={self.conv_mlp}, in_chans={self.in_chans})")


# name -> (depths, dims, v2, conv_mlp), as timm registers them.
_NAMED: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int], bool, bool]] = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320), False, True),
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384), False, True),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512), False, True),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640), False, True),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), False, False),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768), False, False),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024), False, False),
    "convnextv2_atto": ((2, 2, 6, 2), (40, 80, 160, 320), True, True),
    "convnextv2_femto": ((2, 2, 6, 2), (48, 96, 192, 384), True, True),
    "convnextv2_pico": ((2, 2, 6, 2), (64, 128, 256, 512), True, True),
    "convnextv2_nano": ((2, 2, 8, 2), (80, 160, 320, 640), True, True),
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), True, False),
    "convnextv2_small": ((3, 3, 27, 3), (96, 192, 384, 768), True, False),
    "convnextv2_base": ((3, 3, 27, 3), (128, 256, 512, 1024), True, False),
}
CONVNEXT_ARCHS = tuple(_NAMED)


def stage0_downsamples(patch_size: int) -> bool:
    """Whether timm gives stage 0 a LayerNorm + 2x2/stride-2 downsample (only after a 2x2 stem)."""
    return patch_size == 2


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's ``LayerNorm2d``; eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = LN_EPS) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (N, C, H, W) over C."""
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN with timm's parameter names: ``x + bias + weight * x * N(x)``, N from spatial L2 norms."""

    def __init__(self, dim: int, channels_last: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.channels_last = channels_last
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """(N, H, W, C) when channels_last, else (N, C, H, W)."""
        spatial, channel, shape = ((1, 2), -1, (1, 1, 1, -1)) if self.channels_last else ((2, 3), 1, (1, -1, 1, 1))
        x_g = x.norm(p=2, dim=spatial, keepdim=True)
        x_n = x_g / (x_g.mean(dim=channel, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(shape), self.weight.view(shape), x * x_n)


class ConvNeXtMlp(nn.Module):
    """fc1 -> GELU -> [GRN] -> fc2 (timm's ``Mlp`` / ``GlobalResponseNormMlp`` keys: fc1, grn, fc2)."""

    grn: GlobalResponseNorm | None

    def __init__(self, dim: int, hidden: int, use_grn: bool, use_conv: bool) -> None:
        super().__init__()
        # registration order = timm's state-dict order: fc1, grn, fc2
        self.fc1: nn.Module = nn.Conv2d(dim, hidden, kernel_size=1) if use_conv else nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, channels_last=not use_conv) if use_grn else None
        self.fc2: nn.Module = nn.Conv2d(hidden, dim, kernel_size=1) if use_conv else nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Pointwise MLP on channels-last (Linear) or NCHW (1x1 conv) input."""
        x = self.act(self.fc1(x))
        if self.grn is not None:
            x = self.grn(x)
        out: Tensor = self.fc2(x)
        return out


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``, scaled by the keep probability); identity in eval."""

    def __init__(self, prob: float) -> None:
        super().__init__()
        self.prob = float(prob)

    def forward(self, x: Tensor) -> Tensor:
        """Zero whole samples with probability ``prob`` in training mode."""
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> MLP (x4) [-> LayerScale] + residual."""

    gamma: nn.Parameter | None

    def __init__(self, dim: int, *, use_grn: bool, ls_init_value: float | None, conv_mlp: bool,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.use_conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=KERNEL_SIZE, padding=KERNEL_SIZE // 2, groups=dim)
        self.norm: nn.Module = LayerNorm2d(dim) if conv_mlp else nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = ConvNeXtMlp(dim, MLP_RATIO * dim, use_grn, conv_mlp)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value is not None else None
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Residual block on (N, C, H, W)."""
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        out: Tensor = self.drop_path(x) + shortcut
        return out


class ConvNeXtStage(nn.Module):
    """Optional downsample (LayerNorm + 2x2 stride-2 conv) then a sequence of blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, *, downsample: bool, use_grn: bool,
                 ls_init_value: float | None, conv_mlp: bool, drop_paths: Sequence[float]) -> None:
        super().__init__()
        self.downsample: nn.Module = (
            nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2)) if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(dim, use_grn=use_grn, ls_init_value=ls_init_value, conv_mlp=conv_mlp, drop_path=p)
            for p in drop_paths
        ])

    def forward(self, x: Tensor) -> Tensor:
        """Downsample, then every block."""
        out: Tensor = self.blocks(self.downsample(x))
        return out


class ConvNeXtHead(nn.Module):
    """timm's head without pooling parameters: ``norm`` (LayerNorm of the pooled features) and optional ``fc``."""

    fc: nn.Linear | None

    def __init__(self, dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc = nn.Linear(dim, num_classes) if num_classes is not None else None


class ConvNeXt(nn.Module):
    """A ConvNeXt / ConvNeXt-V2 backbone with timm's keys (see the module docstring).

    ``arch`` names a configuration (one of :data:`CONVNEXT_ARCHS`, or None to give ``depths`` and ``dims``);
    ``depths``, ``dims``, ``patch_size``, ``ls_init_value``, ``v2`` and ``conv_mlp`` override it.
    ``ls_init_value="auto"`` is 1e-6 for V1 and None (no LayerScale) for V2, as timm; ``conv_mlp=None`` takes
    the named configuration's (True for atto..nano, as timm), else False. ``patch_size`` 4 is standard; use 1 or
    2 for 28-32 px images (2 adds a stage-0 downsample, as in timm).
    """

    spec: ConvNeXtSpec
    arch: str
    feature_dim: int

    def __init__(
        self,
        arch: str | None = "convnext_tiny",
        *,
        depths: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        patch_size: int = 4,
        ls_init_value: float | None | Literal["auto"] = "auto",
        v2: bool | None = None,
        conv_mlp: bool | None = None,
        in_chans: int = 3,
        num_classes: int | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        spec, ls_value = _resolve(arch, depths, dims, patch_size, ls_init_value, v2, conv_mlp, in_chans)
        _check_head(num_classes, drop_path_rate)
        self.spec, self.ls_init_value = spec, ls_value
        self.arch = named_arch(spec) or "convnext_custom"
        self.feature_dim = spec.dims[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_chans, spec.dims[0], kernel_size=spec.patch_size, stride=spec.patch_size),
            LayerNorm2d(spec.dims[0]),
        )
        rates = torch.linspace(0, drop_path_rate, sum(spec.depths), device="cpu").split(list(spec.depths))
        prev = spec.dims[0]
        stages = []
        for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims)):
            stages.append(ConvNeXtStage(
                prev, dim, depth, downsample=i > 0 or stage0_downsamples(spec.patch_size), use_grn=spec.v2,
                ls_init_value=ls_value, conv_mlp=spec.conv_mlp, drop_paths=rates[i].tolist(),
            ))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # no parameters; the pooling of forward_features
        self.head = ConvNeXtHead(self.feature_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's init: trunc-normal(std .02, bounds +-2) Conv2d/Linear weights, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def ordered_blocks(self) -> list[ConvNeXtBlock]:
        """Every residual block of every stage, input side first (for "unfreeze the last N blocks").

        The stem, the stages' downsample layers and ``head.norm`` belong to no block."""
        return [block for stage in self.stages for block in stage.blocks]  # type: ignore[union-attr]

    def block_names(self) -> list[str]:
        """State-dict prefixes of :meth:`ordered_blocks`, e.g. ``stages.2.blocks.5``."""
        return [f"stages.{i}.blocks.{j}" for i, depth in enumerate(self.spec.depths) for j in range(depth)]

    def stage_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """4-D feature maps after the stem (``"stem"``) and after each stage (``"stage0"`` .. ``"stage3"``)."""
        outs: dict[str, Tensor] = {}
        x = outs["stem"] = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = outs[f"stage{i}"] = stage(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally average-pooled last-stage features through ``head.norm``: (N, feature_dim)."""
        x = self.stages(self.stem(x))
        out: Tensor = self.head.norm(torch.flatten(self.avgpool(x), 1))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``head.fc(features)`` if the model has a classifier, else the pooled features."""
        feats = self.forward_features(x)
        return self.head.fc(feats) if self.head.fc is not None else feats


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _four(name: str, value: Sequence[int] | None, fix: str) -> tuple[int, int, int, int]:
    items = tuple(value) if isinstance(value, (list, tuple)) else None
    if items is None or len(items) != 4 or not all(_is_int(v) and v >= 1 for v in items):
        raise HptError(f"{name} must be 4 positive integers, one per stage ({fix}), got {value!r}")
    return items  # type: ignore[return-value]


def named_arch(spec: ConvNeXtSpec) -> str | None:
    """The timm name whose blocks ``spec`` has (any patch size and input channels), or None."""
    for name, (depths, dims, v2, conv_mlp) in _NAMED.items():
        if (depths, dims, v2, not v2, conv_mlp) == (spec.depths, spec.dims, spec.v2, spec.layer_scale, spec.conv_mlp):
            return name
    return None


def _resolve(
    arch: str | None, depths: Sequence[int] | None, dims: Sequence[int] | None, patch_size: int,
    ls_init_value: float | None | str, v2: bool | None, conv_mlp: bool | None, in_chans: int,
) -> tuple[ConvNeXtSpec, float | None]:
    """Check the constructor's arguments; return the spec and the LayerScale init value."""
    named = _NAMED.get(arch) if arch is not None else None
    if arch is not None and named is None:
        raise HptError(f"unknown ConvNeXt architecture {arch!r}; choose one of: {', '.join(CONVNEXT_ARCHS)} "
                       "(or pass arch=None with depths= and dims=)")
    if named is None and (depths is None or dims is None):
        raise HptError("a ConvNeXt without a named arch needs both depths= and dims= (e.g. depths=(3, 3, 9, 3), "
                       "dims=(96, 192, 384, 768)), or pass arch='convnext_tiny'")
    d = _four("depths", depths if depths is not None else named[0] if named else None, "blocks per stage, e.g. 3, 3, 9, 3")
    w = _four("dims", dims if dims is not None else named[1] if named else None, "channels per stage, e.g. 96, 192, 384, 768")
    if not _is_int(patch_size) or not 1 <= patch_size <= 16:
        raise HptError(f"patch_size must be an integer from 1 to 16 (4 is standard; 1 or 2 for 28-32 px images), "
                       f"got {patch_size!r}")
    if not _is_int(in_chans) or in_chans < 1:
        raise HptError(f"in_chans must be a positive integer (3 for RGB), got {in_chans!r}")
    for flag_name, flag in (("v2", v2), ("conv_mlp", conv_mlp)):
        if flag is not None and not isinstance(flag, bool):
            raise HptError(f"{flag_name} must be True, False or None (None: the named architecture's), got {flag!r}")
    is_v2 = bool(v2) if v2 is not None else bool(named and named[2])
    use_conv = bool(conv_mlp) if conv_mlp is not None else bool(named and named[3])
    if ls_init_value == "auto":
        ls: float | None = None if is_v2 else DEFAULT_LS_INIT
    elif ls_init_value is None:
        ls = None
    elif isinstance(ls_init_value, (int, float)) and not isinstance(ls_init_value, bool) \
            and math.isfinite(ls_init_value) and ls_init_value > 0:
        ls = float(ls_init_value)
    else:
        raise HptError(f"ls_init_value must be a positive number, None (no LayerScale) or 'auto' (1e-6 for V1, "
                       f"None for V2), got {ls_init_value!r}")
    return ConvNeXtSpec(d, w, int(patch_size), is_v2, ls is not None, use_conv, int(in_chans)), ls


def _check_head(num_classes: int | None, drop_path_rate: float) -> None:
    if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
        raise HptError(f"num_classes must be a positive integer or None (no classifier), got {num_classes!r}")
    if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
            or not 0.0 <= drop_path_rate < 1.0:
        raise HptError(f"drop_path_rate must be a number in [0, 1) (0.1 is typical for tiny), got {drop_path_rate!r}")


def build_convnext(arch: str | None = "convnext_tiny", **overrides: object) -> ConvNeXt:
    """Build a randomly initialised ConvNeXt; see :class:`ConvNeXt` for the keyword overrides."""
    return ConvNeXt(arch, **overrides)  # type: ignore[arg-type]


def convnext_from_spec(spec: ConvNeXtSpec, *, num_classes: int | None = None) -> ConvNeXt:
    """Build a randomly initialised ConvNeXt whose keys and shapes are those ``spec`` describes."""
    return ConvNeXt(None, depths=spec.depths, dims=spec.dims, patch_size=spec.patch_size,
                    ls_init_value=DEFAULT_LS_INIT if spec.layer_scale else None, v2=spec.v2,
                    conv_mlp=spec.conv_mlp, in_chans=spec.in_chans, num_classes=num_classes)
