"""Self-supervised methods a stage can train with, one file each: MoCo-v2 (the paper's), SimCLR, BYOL, MoCo v3,
DINO (momentum.py: what the last two share).

base.py: what a method gives the training loop (Method, StepOutput); registry.py: the methods by name.
"""

from __future__ import annotations

from hpt.methods.base import Method, StepOutput, TrainingSize
from hpt.methods.byol import BYOL, BYOLConfig
from hpt.methods.dino import DINO, DinoConfig
from hpt.methods.mocov2 import MocoV2, MocoV2Config
from hpt.methods.mocov3 import MocoV3, MocoV3Config
from hpt.methods.registry import METHODS, build_method
from hpt.methods.simclr import SimCLR, SimCLRConfig

__all__ = ["BYOL", "DINO", "METHODS", "BYOLConfig", "DinoConfig", "Method", "MocoV2", "MocoV2Config", "MocoV3",
           "MocoV3Config", "SimCLR", "SimCLRConfig", "StepOutput", "TrainingSize", "build_method"]
