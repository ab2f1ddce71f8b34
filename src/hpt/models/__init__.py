"""ResNet backbones with torchvision-compatible keys, and strict checkpoint loading/saving/export."""

from hpt.models.checkpoints import (
    EXPORT_FORMATS,
    CheckpointInfo,
    build_backbone,
    export_backbone,
    inspect_checkpoint,
    load_backbone,
    save_backbone,
    weights_sha256,
)
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

__all__ = [
    "ARCHS",
    "EXPORT_FORMATS",
    "FORMATS",
    "NAMED_WEIGHTS",
    "BackboneSpec",
    "CheckpointInfo",
    "NamedWeight",
    "ResNet",
    "SplitBatchNorm2d",
    "build_backbone",
    "build_resnet",
    "default_cache_dir",
    "export_backbone",
    "extract_backbone",
    "infer_spec",
    "inspect_checkpoint",
    "load_backbone",
    "read_state_dict",
    "resolve_named",
    "save_backbone",
    "set_bn_splits",
    "weights_sha256",
]
