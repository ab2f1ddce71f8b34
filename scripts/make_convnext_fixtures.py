"""Write the ConvNeXt / ConvNeXt-V2 reference fixtures of tests/models/test_convnext.py, computed with timm.

Run in the reference environment (it has timm; hpt is deliberately not imported, so the fixtures are
independent of the code they test)::

    bash scripts/reference_env.sh              # once: creates .venv-reference/
    .venv-reference/bin/python scripts/make_convnext_fixtures.py

Files written to tests/fixtures/reference/:

* ``convnext_v1_timm.safetensors``: a tiny timm ConvNeXt V1 (depths 1,1,2,1; dims 8,16,24,32; patch 2, hence
  timm's stage-0 downsample; LayerScale; Linear MLP; a 5-class ``head.fc``), timm's keys.
* ``convnext_v2_timm.safetensors``: a tiny timm ConvNeXt-V2 (GRN, no LayerScale, patch 1, ``conv_mlp=True`` as
  timm's atto..nano, so 1x1-conv MLP weights; no classifier), timm's keys.
* ``convnext_v1_official.safetensors`` / ``convnext_v2_official.safetensors``: tiny timm models (depths 1,1,1,1;
  patch 4; Linear MLP; 5-class head) whose state dicts are rewritten into the facebookresearch/ConvNeXt and
  ConvNeXt-V2 key layouts by the inverse of timm's ``checkpoint_filter_fn`` (GRN parameters reshaped to
  (1, 1, 1, C)). The official repositories are not pip-installable, so their layout is produced this way;
  released official files additionally wrap the dict in ``{"model": ...}``, which the tests add.
* ``convnext_reference_outputs.safetensors``: the fixed input batch ``input`` (2, 3, 32, 32) and, per model,
  timm's pooled features ``<name>.pooled`` (``forward_head(forward_features(x), pre_logits=True)``), logits
  ``<name>.logits`` where the model has a classifier, and the four stage outputs ``<name>.stage{i}``
  (``forward_intermediates``), all in eval mode.
* ``convnext_timm_keys.json``: for each named timm ConvNeXt (``num_classes=0``), the number of state-dict entries
  and a SHA-256 of its sorted ``key:shape`` lines, plus the full key -> shape listing for convnext_atto and
  convnextv2_tiny.

Every parameter is randomised (seeded) so LayerScale, GRN, LayerNorm affine and biases all affect the outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"
SEED = 1234
NAMED = (
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small",
    "convnext_base", "convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano",
    "convnextv2_tiny", "convnextv2_small", "convnextv2_base",
)
LISTED = ("convnext_atto", "convnextv2_tiny")

# name -> (timm ConvNeXt kwargs, layout to save)
MODELS: dict[str, tuple[dict[str, object], str]] = {
    "convnext_v1_timm": ({"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32), "patch_size": 2, "ls_init_value": 1e-6,
                              "conv_mlp": False, "use_grn": False, "num_classes": 5}, "timm"),
    "convnext_v2_timm": ({"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32), "patch_size": 1, "ls_init_value": None,
                              "conv_mlp": True, "use_grn": True, "num_classes": 0}, "timm"),
    "convnext_v1_official": ({"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "patch_size": 4, "ls_init_value": 1e-6,
                                  "conv_mlp": False, "use_grn": False, "num_classes": 5}, "official"),
    "convnext_v2_official": ({"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "patch_size": 4, "ls_init_value": None,
                                  "conv_mlp": False, "use_grn": True, "num_classes": 5}, "official"),
}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Replace every parameter with seeded values of a sensible scale (LayerScale/GRN far from their init)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)  # LayerScale in [0.5, 1.5)
            elif ".grn." in name:
                p.copy_(0.5 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(noise / fan_in**0.5)


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys -> facebookresearch ConvNeXt(-V2) keys (the inverse of timm's checkpoint_filter_fn)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("stem."):
            key = "downsample_layers.0." + key[len("stem."):]
        elif key.startswith("head.norm."):
            key = key[len("head."):]
        elif key.startswith("head.fc."):
            key = "head." + key[len("head.fc."):]
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        if ".mlp.grn." in key:
            key = key.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
            value = value.reshape(1, 1, 1, -1)
        out[key] = value.contiguous()
    return out


def key_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the sorted ``key:shape`` lines of a state dict."""
    lines = sorted(f"{k}:{list(v.shape)}" for k, v in state.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def main() -> None:
    """Build, randomise and run each tiny model; write the fixtures."""
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    outputs: dict[str, torch.Tensor] = {"input": x}
    meta = {"timm": timm.__version__, "torch": torch.__version__, "seed": str(SEED)}
    for name, (kwargs, layout) in MODELS.items():
        torch.manual_seed(SEED)
        model = ConvNeXt(**kwargs).eval()  # type: ignore[arg-type]
        randomise(model, gen)
        with torch.no_grad():
            outputs[f"{name}.pooled"] = model.forward_head(model.forward_features(x), pre_logits=True)
            if kwargs["num_classes"]:
                outputs[f"{name}.logits"] = model(x)
            for i, t in enumerate(model.forward_intermediates(x, intermediates_only=True)):
                outputs[f"{name}.stage{i}"] = t
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if layout == "official":
            state = to_official(state)
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        save_file(state, str(OUT / f"{name}.safetensors"),
                  metadata={**meta, "layout": layout, "timm_kwargs": json.dumps(config)})
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(OUT / "convnext_reference_outputs.safetensors"),
              metadata=meta)

    keys: dict[str, object] = {"timm": timm.__version__}
    for arch in NAMED:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        state = model.state_dict()
        entry: dict[str, object] = {"count": len(state), "sha256": key_digest(state)}
        if arch in LISTED:
            entry["shapes"] = {k: list(v.shape) for k, v in state.items()}
        keys[arch] = entry
    (OUT / "convnext_timm_keys.json").write_text(json.dumps(keys, indent=1) + "\n")
    for path in sorted(OUT.glob("convnext_*")):
        print(f"{path.relative_to(OUT.parent.parent.parent)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
