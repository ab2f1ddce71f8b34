"""Vision Transformer backbone with timm's exact state-dict keys, shapes, numerics and default initialisation.

The model is ``timm.models.vision_transformer.VisionTransformer`` (pre-norm blocks, learned absolute position
embedding, class token, optional registers and LayerScale) restricted to what published ViT backbones use:

* keys: ``cls_token``, ``reg_token`` (registers), ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.norm1``,
  ``.attn.qkv``, ``.attn.proj``, ``.ls1.gamma``, ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``, ``.ls2.gamma``, then
  ``norm`` (``global_pool="token"``) or ``fc_norm`` (``global_pool="avg"``), and ``head`` when ``num_classes``
  is given; in timm's order, so a state dict loads strictly in either direction;
* ``pos_embed``: timm's default has positions for the class token *and the registers* (``1 + R + h*w``);
  ``no_embed_class=True`` (timm's flag, used for DINOv2 with registers) has positions for the patches only;
* numerics: LayerNorm eps 1e-6, exact GELU, ``F.scaled_dot_product_attention``; ``"token"`` pooling takes the
  class token after ``norm``; ``"avg"`` averages the patch tokens (registers and class token excluded), then
  applies ``fc_norm`` (timm's ``global_pool="avg"``, also MAE's fine-tuning layout);
* other image sizes: the patch part of ``pos_embed`` is resampled bicubically on the fly with timm's numerics
  (``resample_abs_pos_embed``, as timm's ``dynamic_img_size=True``), or DINOv2's with ``pos_interp="dinov2"``;
* initialisation, as timm's default (``weight_init=""``): ``pos_embed`` trunc-normal std .02; ``cls_token`` and
  ``reg_token`` normal std 1e-6; every Linear trunc-normal std .02 with zero bias; LayerScale ``init_values``;
  the patch-embedding conv and LayerNorms keep PyTorch's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpt.errors import HptError
from hpt.models.vit_posembed import POS_INTERP_METHODS, resample_patch_pos

VIT_POOLS = ("token", "avg")
_FORWARD_INTERP = ("timm", "dinov2")
_LN_EPS = 1e-6


@dataclass(frozen=True)
class VitConfig:
    """Everything that fixes a ViT backbone's keys and shapes (plus pooling and interpolation)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    reg_tokens: int = 0
    init_values: float | None = None  # LayerScale when not None
    global_pool: str = "token"
    no_embed_class: bool = False
    num_classes: int | None = None
    drop_path_rate: float = 0.0
    pos_interp: str = "timm"
    in_chans: int = 3  # input channels (patch_embed.proj.weight's second dimension)

    @property
    def grid(self) -> int:
        """Patches per side at ``img_size``."""
        return self.img_size // self.patch_size

    def timm_kwargs(self) -> dict[str, Any]:
        """Arguments for ``timm.models.vision_transformer.VisionTransformer`` giving the same keys and outputs
        (``num_classes=0`` when this model has no head; ``dynamic_img_size=True`` for other image sizes)."""
        return {"img_size": self.img_size, "patch_size": self.patch_size, "embed_dim": self.embed_dim,
                "depth": self.depth, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "reg_tokens": self.reg_tokens, "init_values": self.init_values,
                "global_pool": self.global_pool, "no_embed_class": self.no_embed_class,
                "num_classes": self.num_classes or 0, "dynamic_img_size": True, "in_chans": self.in_chans}


# name -> (embed_dim, depth, num_heads); mlp_ratio 4, qkv_bias, patch 16, 224 px unless overridden
VIT_CONFIGS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv: (N, C, H, W) -> (N, D, H/p, W/p)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """The patch-embedding map (not flattened)."""
        out: Tensor = self.proj(x)
        return out


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear (q, k, v then heads along the output)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, D) -> (N, T, D)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        result: Tensor = self.proj(out.transpose(1, 2).reshape(n, t, d))
        return result


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (CaiT / DINOv2), initialised to ``init_values``."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        """``x * gamma``."""
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample in training (timm's ``DropPath``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        """Identity in eval mode or with p == 0."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float | None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, D) -> (N, T, D)."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        result: Tensor = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return result


class VisionTransformer(nn.Module):
    """A timm-compatible ViT backbone (optionally with a ``head`` classifier); see the module docstring."""

    config: VitConfig
    feature_dim: int
    num_prefix_tokens: int
    head: nn.Linear | None

    def __init__(self, config: VitConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = replace(config or VitConfig(), **overrides) if overrides else (config or VitConfig())
        check_config(cfg)
        self.config = cfg
        d = cfg.embed_dim
        self.feature_dim = self.embed_dim = d
        self.patch_size, self.img_size, self.grid_size = cfg.patch_size, cfg.img_size, (cfg.grid, cfg.grid)
        self.num_prefix_tokens = 1 + cfg.reg_tokens
        self.global_pool, self.pos_interp = cfg.global_pool, cfg.pos_interp
        self.patch_embed = PatchEmbed(cfg.patch_size, d, cfg.in_chans)
        # registration order = state-dict order = timm's: cls_token, reg_token, pos_embed, then submodules
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d)) if cfg.reg_tokens else None
        n_pos = cfg.grid * cfg.grid + (0 if cfg.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, d))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # timm's linear rule
        self.blocks = nn.Sequential(*[
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.init_values, rates[i]) for i in range(cfg.depth)
        ])
        avg = cfg.global_pool == "avg"
        self.norm: nn.Module = nn.Identity() if avg else nn.LayerNorm(d, eps=_LN_EPS)
        self.fc_norm: nn.Module = nn.LayerNorm(d, eps=_LN_EPS) if avg else nn.Identity()
        self.head = nn.Linear(d, cfg.num_classes) if cfg.num_classes is not None else None
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's default init (see the module docstring)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _check_input(self, x: Tensor) -> tuple[int, int]:
        if x.dim() != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise HptError(f"expected images of shape (N, {self.patch_embed.proj.in_channels}, H, W), "
                           f"got {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        p = self.patch_size
        if h % p or w % p:
            raise HptError(f"image size {h}x{w} is not a multiple of the patch size {p}; resize or crop the images "
                           f"to a multiple of {p} (the model was built for {self.img_size} px)")
        return h // p, w // p

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """``pos_embed`` for a patch grid: itself at the built grid, else resampled (``self.pos_interp``)."""
        prefix = 0 if self.config.no_embed_class else self.num_prefix_tokens
        return resample_patch_pos(self.pos_embed, grid, num_prefix_tokens=prefix, old_grid=self.grid_size,
                                  method=self.pos_interp)

    def embed(self, x: Tensor) -> Tensor:
        """Images -> tokens before the first block: (N, 1 + registers + h*w, D), position embedding added."""
        grid = self._check_input(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        pos = self.pos_embed_for(grid)
        prefix = [self.cls_token.expand(tokens.shape[0], -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(tokens.shape[0], -1, -1))
        if self.config.no_embed_class:
            return torch.cat([*prefix, tokens + pos], dim=1)
        return torch.cat([*prefix, tokens], dim=1) + pos

    def forward_tokens(self, x: Tensor) -> Tensor:
        """All tokens after the blocks and the final ``norm`` (identity for ``"avg"`` pooling): (N, T, D)."""
        out: Tensor = self.norm(self.blocks(self.embed(x)))
        return out

    def pool(self, tokens: Tensor) -> Tensor:
        """(N, T, D) -> (N, D): the class token (``"token"``) or the mean patch token then ``fc_norm`` (``"avg"``)."""
        if self.global_pool == "avg":
            out: Tensor = self.fc_norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))
            return out
        return tokens[:, 0]

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features (N, feature_dim): timm's ``forward_head(forward_features(x), pre_logits=True)``."""
        return self.pool(self.forward_tokens(x))

    def forward(self, x: Tensor) -> Tensor:
        """``head(features)`` if the model has a head, else the pooled features."""
        feats = self.forward_features(x)
        return self.head(feats) if self.head is not None else feats

    def stage_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Per-layer representations for layer-wise analyses (e.g. CKA): ``"embed"`` (tokens after the position
        embedding) and ``"block0"`` .. ``"block{depth-1}"`` (the residual stream after each block, before the final
        norm), each as the (N, D) mean over the *patch* tokens (class token and registers excluded: the class
        token's embedding is the same for every image). This is the ViT analogue of ResNet's average-pooled
        stage maps; it is already pooled (2-D), so callers must not average-pool it again."""
        outs: dict[str, Tensor] = {}
        h = self.embed(x)
        outs["embed"] = h[:, self.num_prefix_tokens:].mean(dim=1)
        for i, block in enumerate(self.blocks):
            h = block(h)
            outs[f"block{i}"] = h[:, self.num_prefix_tokens:].mean(dim=1)
        return outs


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_config(cfg: VitConfig) -> None:
    """Raise HptError (naming the fix) for a configuration that cannot build a ViT."""
    for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size"):
        value = getattr(cfg, name)
        if not _is_int(value, 1):
            raise HptError(f"{name} must be a positive integer, got {value!r}")
    if cfg.embed_dim % cfg.num_heads:
        raise HptError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}; choose num_heads "
                       f"dividing it (published ViTs use embed_dim // 64 = {max(1, cfg.embed_dim // 64)})")
    if cfg.img_size % cfg.patch_size:
        raise HptError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}; use img_size "
                       f"{cfg.img_size // cfg.patch_size * cfg.patch_size or cfg.patch_size} or another patch size")
    if not isinstance(cfg.mlp_ratio, (int, float)) or isinstance(cfg.mlp_ratio, bool) or cfg.mlp_ratio <= 0 \
            or int(cfg.embed_dim * cfg.mlp_ratio) < 1:
        raise HptError(f"mlp_ratio must be a positive number (4 for published ViTs), got {cfg.mlp_ratio!r}")
    if not isinstance(cfg.qkv_bias, bool):
        raise HptError(f"qkv_bias must be True or False, got {cfg.qkv_bias!r}")
    if not _is_int(cfg.reg_tokens, 0):
        raise HptError(f"reg_tokens must be an integer >= 0 (4 for DINOv2 with registers), got {cfg.reg_tokens!r}")
    if cfg.init_values is not None and (not isinstance(cfg.init_values, (int, float))
                                        or isinstance(cfg.init_values, bool) or cfg.init_values <= 0):
        raise HptError(f"init_values (LayerScale) must be a positive number or None for no LayerScale, "
                       f"got {cfg.init_values!r}")
    if cfg.global_pool not in VIT_POOLS:
        raise HptError(f"unknown global_pool {cfg.global_pool!r}; choose one of: {', '.join(VIT_POOLS)}")
    if not isinstance(cfg.no_embed_class, bool):
        raise HptError(f"no_embed_class must be True or False, got {cfg.no_embed_class!r}")
    if cfg.num_classes is not None and not _is_int(cfg.num_classes, 1):
        raise HptError(f"num_classes must be a positive integer or None, got {cfg.num_classes!r}")
    if not isinstance(cfg.drop_path_rate, (int, float)) or not 0 <= cfg.drop_path_rate < 1:
        raise HptError(f"drop_path_rate must be in [0, 1), got {cfg.drop_path_rate!r}")
    if cfg.pos_interp not in _FORWARD_INTERP:
        extra = " ('torchvision' is for resample_pos_embed only)" if cfg.pos_interp in POS_INTERP_METHODS else ""
        raise HptError(f"unknown pos_interp {cfg.pos_interp!r}; choose one of: {', '.join(_FORWARD_INTERP)}{extra}")


def build_vit(name: str | None = "vit_small", **overrides: Any) -> VisionTransformer:
    """Build a randomly initialised ViT from a named config (:data:`VIT_CONFIGS`) plus keyword overrides.

    Overrides are :class:`VitConfig` fields (``patch_size``, ``img_size``, ``depth``, ``embed_dim``, ``num_heads``,
    ``mlp_ratio``, ``reg_tokens``, ``init_values``, ``global_pool``, ``qkv_bias``, ``no_embed_class``,
    ``num_classes``, ``drop_path_rate``, ``pos_interp``). With ``name=None`` the dimensions come from the
    overrides alone (``num_heads`` then defaults to ``embed_dim // 64``, at least 1).
    """
    known = {f.name for f in fields(VitConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise HptError(f"unknown ViT option(s) {', '.join(unknown)}; valid ones: {', '.join(sorted(known))}")
    if name is None:
        dim = overrides.get("embed_dim", VitConfig.embed_dim)
        base = VitConfig(num_heads=max(1, dim // 64) if _is_int(dim, 1) else 1)
    elif name in VIT_CONFIGS:
        dim, depth, heads = VIT_CONFIGS[name]
        base = VitConfig(embed_dim=dim, depth=depth, num_heads=heads)
    else:
        raise HptError(f"unknown ViT {name!r}; choose one of: {', '.join(VIT_CONFIGS)} (or name=None with "
                       "embed_dim/depth/num_heads)")
    return VisionTransformer(replace(base, **overrides))
