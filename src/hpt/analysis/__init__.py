"""Analyses beyond the paper's protocols: layer-by-layer similarity (linear CKA) and linear probes by depth."""

from hpt.analysis.cka import layer_similarity, linear_cka, similarity_table
from hpt.analysis.depth import DEPTHS, depth_probe, depth_table

__all__ = ["DEPTHS", "depth_probe", "depth_table", "layer_similarity", "linear_cka", "similarity_table"]
