"""Backbones (ResNet with torchvision keys; ViT and ConvNeXt with timm keys) and strict checkpoint loading,
saving and export."""

from hpt.models.checkpoints import (
    CheckpointInfo,
    build_backbone,
    inspect_checkpoint,
    load_backbone,
)
from hpt.models.convnext import CONVNEXT_ARCHS, ConvNeXt, build_convnext
from hpt.models.families import FAMILIES, arch_of, build_random, family_of
from hpt.models.formats import (
    FORMATS,
    BackboneSpec,
    extract_backbone,
    infer_spec,
    read_state_dict,
)
from hpt.models.named import (
    NAMED_WEIGHTS,
    NamedWeight,
    default_cache_dir,
    resolve_named,
)
from hpt.models.resnet import (
    ARCHS,
    ResNet,
    SplitBatchNorm2d,
    build_resnet,
    set_bn_splits,
)
from hpt.models.saving import (
    EXPORT_FORMATS,
    export_backbone,
    file_sha256,
    save_backbone,
    weights_sha256,
)
from hpt.models.vit import VIT_CONFIGS, VisionTransformer, VitConfig, build_vit

__all__ = [
    "ARCHS",
    "CONVNEXT_ARCHS",
    "EXPORT_FORMATS",
    "FAMILIES",
    "FORMATS",
    "NAMED_WEIGHTS",
    "VIT_CONFIGS",
    "BackboneSpec",
    "CheckpointInfo",
    "ConvNeXt",
    "NamedWeight",
    "ResNet",
    "SplitBatchNorm2d",
    "VisionTransformer",
    "VitConfig",
    "arch_of",
    "build_backbone",
    "build_convnext",
    "build_random",
    "build_resnet",
    "build_vit",
    "default_cache_dir",
    "export_backbone",
    "extract_backbone",
    "family_of",
    "infer_spec",
    "inspect_checkpoint",
    "load_backbone",
    "read_state_dict",
    "resolve_named",
    "save_backbone",
    "set_bn_splits",
    "file_sha256",
    "weights_sha256",
]
