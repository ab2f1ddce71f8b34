"""Evaluation protocols on a backbone and labelled data: linear separability, few-label fine-tuning, kNN."""

from hpt.eval.features import EvalBackbone, check_unchanged, load_eval_backbone
from hpt.eval.finetune import FinetuneConfig, finetune_eval
from hpt.eval.knn import KnnConfig, knn_eval
from hpt.eval.linear import LinearConfig, linear_eval
from hpt.eval.result import headline
from hpt.eval.splits import LabelledSplits, load_splits

__all__ = [
    "EvalBackbone", "FinetuneConfig", "KnnConfig", "LabelledSplits", "LinearConfig", "check_unchanged",
    "finetune_eval", "headline", "knn_eval", "linear_eval", "load_eval_backbone", "load_splits",
]
