"""Analyses beyond the paper's protocols: layer-by-layer similarity (linear CKA) and linear probes by depth."""

from hpt.analysis.cka import cka_matrix, layer_similarity, linear_cka, similarity_table
from hpt.analysis.cross import cross_similarity, similarity, similarity_report
from hpt.analysis.depth import DEPTHS, depth_probe, depth_table
from hpt.analysis.layers import depth_names, layer_names

__all__ = ["DEPTHS", "cka_matrix", "cross_similarity", "depth_names", "depth_probe", "depth_table", "layer_names",
           "layer_similarity", "linear_cka", "similarity", "similarity_report", "similarity_table"]
