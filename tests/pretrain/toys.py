"""Small backbones with the key layouts of timm's ViT and ConvNeXt (and the members the methods use: feature_dim,
forward_features), and helpers that compare state dicts bit for bit."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: BatchNorm running statistics: they move in any training step (the forward in train mode), whatever trains.
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


class Attention(nn.Module):
    """Single-head self-attention with timm's names: qkv, proj."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.proj(weights @ v)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ToyViT(nn.Module):
    """timm ViT keys: patch_embed.proj, blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm."""

    def __init__(self, dim: int = 16, depth: int = 2, patch: int = 4) -> None:
        super().__init__()
        self.feature_dim = dim
        self.patch_embed = PatchEmbed(dim, patch)
        self.blocks = nn.ModuleList(ViTBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward_features(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_features(images)


class LayerNorm2d(nn.Module):
    """A channels-first LayerNorm written by hand (no nn.LayerNorm subclass): found as a norm by its class name."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """timm ConvNeXt block keys: conv_dw (depthwise), norm (channels-last nn.LayerNorm), mlp.fc1 / mlp.fc2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    def __init__(self, cin: int, dim: int, depth: int) -> None:
        super().__init__()
        self.downsample = nn.Identity() if cin == dim else nn.Sequential(LayerNorm2d(cin), nn.Conv2d(cin, dim, 2, 2))
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ToyConvNeXt(nn.Module):
    """timm ConvNeXt keys: stem.0 / stem.1 (LayerNorm2d), stages.{i}.downsample, stages.{i}.blocks.{j}.*, norm."""

    def __init__(self, dims: tuple[int, ...] = (8, 16), depths: tuple[int, ...] = (2, 1)) -> None:
        super().__init__()
        self.feature_dim = dims[-1]
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        cins = (dims[0], *dims[:-1])
        self.stages = nn.ModuleList(ConvNeXtStage(c, d, n) for c, d, n in zip(cins, dims, depths))
        self.norm = nn.LayerNorm(dims[-1])

    def forward_features(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x.mean(dim=(2, 3)))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_features(images)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer by state-dict key, cloned."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def changed_keys(before: dict[str, Tensor], after: dict[str, Tensor]) -> set[str]:
    """The keys whose tensors are not bit-identical (torch.equal); the key sets must be the same."""
    assert list(before) == list(after), (sorted(set(before) ^ set(after)))
    return {key for key in before if not torch.equal(before[key], after[key])}
