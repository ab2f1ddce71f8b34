"""hpt: Hierarchical PreTraining (Base -> Source -> Target self-supervised pretraining)."""

__version__ = "0.1.0"
