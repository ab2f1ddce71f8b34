"""hpt in Python: pretrain, evaluate, compare, load and export backbones without the shell.

Each function is one command of `hpt`, with the command's options as keywords (snake_case, same defaults), and
returns a frozen result object; bad input raises hpt.errors.HptError with a message naming the fix. The commands
are thin layers over these functions. A walk-through: docs/api.md.

    pretrain(base, data, steps, ...)        -> PretrainResult   `hpt pretrain`
    evaluate(backbone, data, protocol, ...) -> EvalResult       `hpt eval linear|finetune|knn`
    compare(evaluations, names)             -> Comparison       `hpt eval compare`
    load_backbone(backbone, arch=...)       -> torch.nn.Module  (eval mode)
    export(source, out, format, truncate)   -> ExportResult     `hpt export`
"""

from hpt.api.backbones import ExportResult, export, load_backbone
from hpt.api.comparison import Comparison, ComparisonRow, compare
from hpt.api.evaluation import EvalResult, evaluate
from hpt.api.pretraining import PretrainResult, pretrain

__all__ = [
    "Comparison", "ComparisonRow", "EvalResult", "ExportResult", "PretrainResult", "compare", "evaluate", "export",
    "load_backbone", "pretrain",
]
