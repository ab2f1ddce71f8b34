"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685) for any backbone.

A wrapped layer computes ``base(x) + scaling * B(A(dropout(x)))`` with the base weight frozen, ``A`` (``lora_a``,
rank x fan-in) initialised Kaiming-uniform with ``a=sqrt(5)`` and ``B`` (``lora_b``, out x rank) with zeros, as the
reference implementations (microsoft/loralib, huggingface/peft) do: at initialisation the layer's output is exactly
the base layer's. ``scaling = alpha / rank``.

Layers that take LoRA: ``nn.Linear`` (ViT ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; ConvNeXt
``mlp.fc1``/``fc2``) and ``nn.Conv2d`` with ``groups=1`` and zero padding, of any kernel size (a ResNet's convs; the
low-rank update of a k x k conv is ``B @ A`` reshaped to the kernel, as peft's Conv2d LoRA). Exactly these two types:
subclasses (MultiheadAttention's ``out_proj``, which is read by weight, not called) and depthwise convs are left
alone.

The wrapper registers the base layer's own ``weight`` and ``bias`` Parameters as its ``weight`` and ``bias``, so a
wrapped backbone's state dict holds the original keys (``blocks.0.attn.qkv.weight``) plus ``lora_a``/``lora_b``
ones. :func:`merge_lora` folds the update into the weight and puts plain layers back: the state dict keys are then
exactly the original ones. That is how a LoRA-trained backbone is saved and exported (:func:`merged_state_dict`
gives the same tensors without changing the module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpt.errors import HptError

DEFAULT_TARGETS = ("qkv", "attn.proj", "fc1", "fc2")


@dataclass
class LoRAConfig:
    """`lora:` of a stage (read with train: lora): the adapters' rank, alpha (scaling = alpha / rank), dropout on
    their input, and the layers they go on (names matched by their last components, see add_lora).

    alpha = rank (scaling 1): Hu et al. 2021, section 4.1, "we simply set alpha to the first r we try and do not tune
    it"; peft's defaults are r=8, lora_alpha=8. With SGD a scaling of 1 keeps the stage's lr the adapters' lr.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise HptError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise HptError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise HptError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets or any(not isinstance(t, str) or not t for t in self.targets):
            raise HptError(f"lora.targets must be a non-empty list of layer names (e.g. qkv, fc1), got {self.targets!r}")


class LoRALayer(nn.Module):
    """What a LoRA-wrapped layer holds: the frozen base ``weight``/``bias`` (the base layer's own Parameters),
    ``lora_a`` (rank x fan-in), ``lora_b`` (out x rank), ``scaling`` and the dropout on the LoRA path's input."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise HptError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise HptError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.rank, self.alpha, self.scaling = int(rank), float(alpha), float(alpha) / rank
        weight = base.weight
        self.register_parameter("weight", weight)
        self.register_parameter("bias", base.bias)
        # drawn on the CPU (where a generator lives), then moved to the weight's device and dtype
        lora_a = torch.empty(rank, weight[0].numel())
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=generator)
        self.lora_a = nn.Parameter(lora_a.to(device=weight.device, dtype=weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device, dtype=weight.dtype))
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> Tensor:
        """The update LoRA adds to the base weight: scaling * B @ A, in the weight's shape."""
        return ((self.lora_b @ self.lora_a) * self.scaling).view_as(self.weight)

    def merged_weight(self) -> Tensor:
        """The base weight with the update folded in (a new tensor; the module is unchanged)."""
        return self.weight + self.delta_weight()

    def plain(self) -> nn.Module:
        """The plain layer of the same type and settings over this module's weight and bias Parameters."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, weight={tuple(self.weight.shape)}"


class LoRALinear(LoRALayer):
    """nn.Linear with a LoRA update: ``x W^T + b + scaling * dropout(x) A^T B^T``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, generator)
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: Tensor) -> Tensor:
        """The base layer's output plus the low-rank update's. Without dropout, one product with the merged weight
        W + scaling * B A: the backward then keeps only x, as the plain layer's does (the two-path form also keeps
        activations of the update's size, which cost more memory than full training)."""
        if isinstance(self.dropout, nn.Identity):
            return F.linear(x, self.merged_weight(), self.bias)
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def plain(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight = self.weight
        layer.bias = self.bias  # type: ignore[assignment]
        return layer


class LoRAConv2d(LoRALayer):
    """nn.Conv2d (groups 1, zero padding) with a LoRA update: A is a conv of the base's kernel, stride, padding and
    dilation to `rank` channels, B a 1x1 conv back to the output channels."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        if base.groups != 1 or base.padding_mode != "zeros":
            raise HptError(f"LoRA takes Conv2d layers with groups=1 and zero padding only, not {base}")
        super().__init__(base, rank, alpha, dropout, generator)
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (base.kernel_size, base.stride, base.padding,
                                                                      base.dilation)

    def forward(self, x: Tensor) -> Tensor:
        """The base conv's output plus the low-rank update's (one conv with the merged kernel when without dropout,
        as LoRALinear)."""
        if isinstance(self.dropout, nn.Identity):
            return F.conv2d(x, self.merged_weight(), self.bias, self.stride, self.padding, self.dilation)
        base = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        kernel_a = self.lora_a.view(self.rank, self.in_channels, *self.kernel_size)
        low = F.conv2d(self.dropout(x), kernel_a, None, self.stride, self.padding, self.dilation)
        return base + F.conv2d(low, self.lora_b[:, :, None, None]) * self.scaling

    def plain(self) -> nn.Conv2d:
        layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, bias=self.bias is not None, device="meta")
        layer.weight = self.weight
        layer.bias = self.bias  # type: ignore[assignment]
        return layer


def _matches(name: str, targets: Sequence[str]) -> bool:
    """A target names a layer by its last name component(s): 'qkv' matches 'blocks.0.attn.qkv', and so does
    'attn.qkv'; 'downsample.0' matches 'layer2.0.downsample.0'."""
    return any(name == target or name.endswith("." + target) for target in targets)


def _takes_lora(module: nn.Module) -> bool:
    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1
                                         and module.padding_mode == "zeros")


def _short_name(name: str) -> str:
    """The name a target would use: the last component, or the last two where the last is an index ('0')."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def add_lora(module: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS,
             dropout: float = 0.0, generator: torch.Generator | None = None) -> list[str]:
    """Wrap every nn.Linear / nn.Conv2d (groups 1) of `module` whose name matches a target (by its last name
    components) in a LoRA layer, in place, with the base weight and bias frozen; return the wrapped names in module
    order. HptError when nothing matches, naming the layers that could take LoRA."""
    if not targets or any(not str(t) for t in targets):
        raise HptError(f"LoRA targets must be a non-empty list of layer names, got {list(targets)}")
    candidates = [(name, child) for name, child in module.named_modules() if name and _takes_lora(child)]
    chosen = [(name, child) for name, child in candidates if _matches(name, targets)]
    if not chosen:
        names = sorted({_short_name(name) for name, _ in candidates})
        raise HptError(f"the LoRA targets {', '.join(targets)} match no Linear or Conv2d layer of this "
                       f"{type(module).__name__}; its layers that can take LoRA are named "
                       f"{', '.join(names) or 'nothing (it has none)'}: set lora.targets to some of those")
    for name, child in chosen:
        wrapper_type = LoRALinear if isinstance(child, nn.Linear) else LoRAConv2d
        wrapper = wrapper_type(child, rank, alpha, dropout, generator)  # type: ignore[arg-type]
        wrapper.train(child.training)  # a model in eval mode keeps its adapters' dropout off
        wrapper.weight.requires_grad_(False)
        if wrapper.bias is not None:
            wrapper.bias.requires_grad_(False)
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent), leaf, wrapper)
    return [name for name, _ in chosen]


def lora_layers(module: nn.Module) -> list[tuple[str, LoRALayer]]:
    """The LoRA-wrapped layers of `module`, by name, in module order."""
    return [(name, child) for name, child in module.named_modules() if isinstance(child, LoRALayer)]


@torch.no_grad()
def merge_lora(module: nn.Module) -> list[str]:
    """Fold every LoRA update into its base weight (W + scaling * B @ A) and put the plain layer back, in place;
    the state dict keys are then exactly those before add_lora. Returns the merged names (none: a no-op)."""
    merged = lora_layers(module)
    for name, layer in merged:
        if not name:
            raise ValueError("merge_lora merges the LoRA layers inside a module, not the module itself")
        layer.weight.copy_(layer.merged_weight())
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent), leaf, layer.plain().train(layer.training))
    return [name for name, _ in merged]


@torch.no_grad()
def merged_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """module.state_dict() as merge_lora would leave it (the same tensors, bit for bit), without changing `module`:
    each LoRA layer's weight with its update folded in, and no lora_a / lora_b keys."""
    state = module.state_dict()
    for name, layer in lora_layers(module):
        prefix = f"{name}." if name else ""
        state[prefix + "weight"] = layer.merged_weight().detach()
        del state[prefix + "lora_a"], state[prefix + "lora_b"]
    return state
