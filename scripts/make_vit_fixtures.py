"""Write the reference fixtures for hpt's ViT into tests/fixtures/reference/ (run in the reference environment).

    bash scripts/reference_env.sh                       # once: .venv-reference with timm and torchvision
    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2   # optional: the official DINOv2 code
    .venv-reference/bin/python scripts/make_vit_fixtures.py --dinov2-repo /tmp/dinov2

This script does not import hpt: every output comes from the reference implementations themselves. Each model
is tiny (embed 32, depth 2, 2 heads, 32 px images), built with a fixed seed, and every parameter is then
redrawn at a useful scale (LayerNorm weights around 1, LayerScale around 0.5-1, Linear weights ~1/sqrt(fan_in),
tokens and positions ~0.5) so that a wrong key, transpose or token order changes the outputs.

Written files:

* ``vit_timm_token.safetensors`` - timm ViT, class-token pooling, patch 4, no head;
* ``vit_timm_reg_ls.safetensors`` - timm ViT, 2 registers (timm's default: they have positions), LayerScale,
  patch 8;
* ``vit_timm_avg.safetensors`` - timm ViT, ``global_pool="avg"`` (``fc_norm``), no qkv bias, mlp_ratio 2, a
  10-class ``head``;
* ``vit_torchvision.safetensors`` - ``torchvision.models.VisionTransformer`` with its 10-class ``heads``;
* ``vit_dinov2.safetensors`` - the official DINOv2 ``DinoVisionTransformer`` (hub layout: LayerScale,
  ``mask_token``, no registers, unchunked), imported from ``--dinov2-repo``;
* ``vit_dinov2_reg_chunked.safetensors`` - the same with 2 registers and ``block_chunks=2`` (training layout);
* ``vit_mae_pretrain.pth`` - MAE's pre-training checkpoint layout ``{"model": ...}``: the weights of
  ``vit_timm_token`` plus MAE's ``mask_token`` and ``decoder_*`` keys (random). MAE's code is not imported (its
  ``models_mae`` needs timm 0.3's ``Block(qk_scale=...)``); MAE's encoder *is* timm's ViT, so its reference
  output is ``vit_timm_token``'s;
* ``vit_reference_io.safetensors`` - the inputs ``x32`` (3, 3, 32, 32) and ``x48`` (2, 3, 48, 48) and, per model,
  ``<name>.out32`` / ``<name>.out48``: the pooled features (class token after ``norm``, or timm's avg pool
  after ``fc_norm``) at the built size and at 48 px. At 48 px timm runs with ``dynamic_img_size=True``
  (``resample_abs_pos_embed``), DINOv2 with its ``interpolate_pos_encoding`` (offset 0.1), torchvision on a
  48 px model loaded from ``interpolate_embeddings(48, 4, state)``. ``vit_timm_avg.logits32`` holds its
  head's output.

Without ``--dinov2-repo`` the two DINOv2 files are not written (the tests then skip them).
Each weights file's metadata holds ``keys`` (JSON: the reference's ``[key, shape]`` list in its state-dict
order, which safetensors does not keep) and ``config`` (JSON: the constructor arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"
DIM, DEPTH, HEADS = 32, 2, 2


def perturb(model: nn.Module, seed: int) -> None:
    """Redraw every parameter at a scale where each one visibly changes the output (see the docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif p.dim() == 1 and name.endswith("bias"):
                p.copy_(0.1 * r)
            elif p.dim() == 1:
                p.copy_(1.0 + 0.2 * r)
            elif p.dim() == 3 or name.endswith("mask_token"):
                p.copy_(0.5 * r)
            else:
                p.copy_(r / math.sqrt(p[0].numel()))


def save_weights(name: str, state: dict[str, Tensor], config: dict[str, Any]) -> None:
    """``state`` as safetensors with its key order and the constructor arguments in the metadata."""
    keys = [[k, list(v.shape)] for k, v in state.items()]
    meta = {"keys": json.dumps(keys), "config": json.dumps(config), "torch": torch.__version__}
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(OUT / f"{name}.safetensors"),
              metadata=meta)


def timm_models(io: dict[str, Tensor], x32: Tensor, x48: Tensor) -> dict[str, Tensor]:
    """The three timm fixtures; returns the token model's state (reused for the MAE layout)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    common = {"img_size": 32, "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "dynamic_img_size": True}
    variants = {
        "vit_timm_token": {"patch_size": 4, "num_classes": 0},
        "vit_timm_reg_ls": {"patch_size": 8, "num_classes": 0, "reg_tokens": 2, "init_values": 1e-5},
        "vit_timm_avg": {"patch_size": 4, "num_classes": 10, "global_pool": "avg", "qkv_bias": False,
                         "mlp_ratio": 2.0},
    }
    states = {}
    for i, (name, extra) in enumerate(variants.items()):
        torch.manual_seed(i)
        cfg = {**common, **extra}
        model = VisionTransformer(**cfg).eval()
        perturb(model, 100 + i)
        with torch.no_grad():
            io[f"{name}.out32"] = model.forward_head(model.forward_features(x32), pre_logits=True)
            io[f"{name}.out48"] = model.forward_head(model.forward_features(x48), pre_logits=True)
            if cfg["num_classes"]:
                io[f"{name}.logits32"] = model(x32)
        states[name] = model.state_dict()
        save_weights(name, states[name], {**cfg, "timm": timm.__version__})
    return states["vit_timm_token"]


def torchvision_model(io: dict[str, Tensor], x32: Tensor, x48: Tensor) -> None:
    """torchvision's ViT; its 48 px output comes from a 48 px model loaded via ``interpolate_embeddings``."""
    import torchvision
    from torchvision.models.vision_transformer import (
        VisionTransformer,
        interpolate_embeddings,
    )

    cfg = {"image_size": 32, "patch_size": 4, "num_layers": DEPTH, "num_heads": HEADS, "hidden_dim": DIM,
           "mlp_dim": 4 * DIM, "num_classes": 10}
    torch.manual_seed(3)
    model = VisionTransformer(**cfg).eval()  # type: ignore[arg-type]
    perturb(model, 103)
    state = model.state_dict()
    save_weights("vit_torchvision", state, {**cfg, "torchvision": torchvision.__version__})
    model.heads = nn.Identity()  # type: ignore[assignment]
    big = VisionTransformer(**{**cfg, "image_size": 48}).eval()  # type: ignore[arg-type]
    big.load_state_dict(interpolate_embeddings(48, 4, dict(state)))  # type: ignore[arg-type]
    big.heads = nn.Identity()  # type: ignore[assignment]
    with torch.no_grad():
        io["vit_torchvision.out32"] = model(x32)
        io["vit_torchvision.out48"] = big(x48)


def dinov2_models(io: dict[str, Tensor], x32: Tensor, x48: Tensor, repo: Path) -> None:
    """The official DINOv2 model code, imported from a checkout outside this repository."""
    os.environ["XFORMERS_DISABLED"] = "1"  # the plain-PyTorch attention path, on the CPU
    sys.path.insert(0, str(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dinov2.layers import MemEffAttention  # type: ignore[import-not-found]
        from dinov2.layers import NestedTensorBlock as Block
        from dinov2.models import vision_transformer as vits  # type: ignore[import-not-found]
    variants = {
        "vit_dinov2": {"num_register_tokens": 0, "block_chunks": 0},
        "vit_dinov2_reg_chunked": {"num_register_tokens": 2, "block_chunks": 2},
    }
    for i, (name, extra) in enumerate(variants.items()):
        cfg = {"img_size": 32, "patch_size": 4, "init_values": 1.0, "ffn_layer": "mlp",
               "interpolate_antialias": False, "interpolate_offset": 0.1, **extra}
        torch.manual_seed(4 + i)
        # as dinov2's vit_small/vit_base/vit_large build it, with tiny dimensions
        block_fn = partial(Block, attn_class=MemEffAttention)
        model = vits.DinoVisionTransformer(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=4,
                                           block_fn=block_fn, **cfg).eval()
        perturb(model, 104 + i)
        with torch.no_grad():
            io[f"{name}.out32"] = model(x32)
            io[f"{name}.out48"] = model(x48)
        code = "facebookresearch/dinov2 dinov2/models/vision_transformer.py"
        save_weights(name, model.state_dict(),
                     {**cfg, "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "dinov2_code": code})


def mae_file(token_state: dict[str, Tensor], io: dict[str, Tensor]) -> None:
    """MAE's pre-training checkpoint layout around the timm token model's encoder weights."""
    g = torch.Generator().manual_seed(7)
    dec, grid = 16, 8

    def r(*shape: int) -> Tensor:
        return 0.1 * torch.randn(shape, generator=g)

    model = dict(token_state)
    model["mask_token"] = r(1, 1, dec)
    model.update({"decoder_embed.weight": r(dec, DIM), "decoder_embed.bias": r(dec),
                  "decoder_pos_embed": r(1, grid * grid + 1, dec)})
    for name, shape in (("norm1.weight", (dec,)), ("norm1.bias", (dec,)), ("attn.qkv.weight", (3 * dec, dec)),
                        ("attn.qkv.bias", (3 * dec,)), ("attn.proj.weight", (dec, dec)), ("attn.proj.bias", (dec,)),
                        ("norm2.weight", (dec,)), ("norm2.bias", (dec,)), ("mlp.fc1.weight", (4 * dec, dec)),
                        ("mlp.fc1.bias", (4 * dec,)), ("mlp.fc2.weight", (dec, 4 * dec)), ("mlp.fc2.bias", (dec,))):
        model[f"decoder_blocks.0.{name}"] = r(*shape)
    model.update({"decoder_norm.weight": r(dec), "decoder_norm.bias": r(dec),
                  "decoder_pred.weight": r(4 * 4 * 3, dec), "decoder_pred.bias": r(4 * 4 * 3)})
    torch.save({"model": {k: v.clone() for k, v in model.items()}}, OUT / "vit_mae_pretrain.pth")
    io["vit_mae_pretrain.out32"] = io["vit_timm_token.out32"]
    io["vit_mae_pretrain.out48"] = io["vit_timm_token.out48"]


def main() -> None:
    """Build every reference model and write the fixtures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dinov2-repo", type=Path, default=None,
                        help="a facebookresearch/dinov2 checkout (the directory holding dinov2/)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x32, x48 = torch.randn(3, 3, 32, 32, generator=g), torch.randn(2, 3, 48, 48, generator=g)
    io: dict[str, Tensor] = {"x32": x32, "x48": x48}
    token_state = timm_models(io, x32, x48)
    torchvision_model(io, x32, x48)
    if args.dinov2_repo is not None:
        dinov2_models(io, x32, x48, args.dinov2_repo.resolve())
    else:
        print("no --dinov2-repo: the DINOv2 fixtures are not written", file=sys.stderr)
    mae_file(token_state, io)
    save_file({k: v.contiguous() for k, v in io.items()}, str(OUT / "vit_reference_io.safetensors"))
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:>8} {path.name}")


if __name__ == "__main__":
    main()
