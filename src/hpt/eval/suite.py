"""The `eval:` section of a hierarchy: the same protocols run on the Base and after every stage, reused when done.

Results go to OUT/eval/<name>/<protocol>/results.json and, one line each, to OUT/results.jsonl.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from hpt.data import DataSpec, moved_data, parse_data_spec
from hpt.errors import HptError
from hpt.eval.curve import write_json
from hpt.eval.features import EvalBackbone
from hpt.eval.finetune import FinetuneConfig, finetune_eval
from hpt.eval.knn import KnnConfig, knn_eval
from hpt.eval.linear import LinearConfig, linear_eval
from hpt.eval.result import headline
from hpt.eval.splits import LabelledSplits, load_splits
from hpt.metrics_log import append_result
from hpt.models import weights_sha256

log = logging.getLogger("hpt")
PROTOCOLS = ("linear", "finetune", "knn")


@dataclass
class EvalSuiteConfig:
    """Which protocols to run on which labelled data (default: the last stage's data), with their settings."""

    data: DataSpec | None = None
    protocols: list[str] = field(default_factory=lambda: ["linear"])
    start: bool = True  # also evaluate the backbone the chain starts from (the Base)
    image_size: int | None = None  # None: the last stage's augment.image_size, else the data's own
    device: str = "auto"
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)

    def __post_init__(self) -> None:
        self.data = None if self.data is None else parse_data_spec(self.data)
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise HptError(f"eval.protocols: unknown {', '.join(unknown) or '(empty list)'}; "
                           f"choose from {', '.join(PROTOCOLS)}")


class EvalSuite:
    """Runs the configured protocols on backbones of one hierarchy run; the data is opened once."""

    def __init__(self, config: EvalSuiteConfig, out_dir: Path) -> None:
        if config.data is None:
            raise HptError("eval.data is not set; name the labelled data to evaluate on")
        self.config = config
        self.out_dir = out_dir
        self._splits: LabelledSplits | None = None

    @property
    def splits(self) -> LabelledSplits:
        if self._splits is None:
            assert self.config.data is not None
            self._splits = load_splits(self.config.data)
            log.info("eval data %s: %s", self._splits.spec.describe(), self._splits.describe())
        return self._splits

    def evaluate(self, name: str, model: nn.Module, source: str, fmt: str,
                 out_dir: Path | None = None) -> list[dict[str, Any]]:
        """Every protocol on one backbone (copied, so the caller's model is never touched); finished ones reused.
        Results go under out_dir (default: the suite's)."""
        backbone = EvalBackbone(copy.deepcopy(model), source, fmt, weights_sha256(model))
        root = out_dir or self.out_dir
        return [self._one(name, protocol, backbone, root) for protocol in self.config.protocols]

    def _one(self, name: str, protocol: str, backbone: EvalBackbone, root: Path) -> dict[str, Any]:
        out = root / "eval" / _folder(name) / protocol
        settings = self._settings(protocol)
        done = _finished(out / "results.json", backbone.weights_sha256, settings)
        if done is not None:
            log.info("eval %s/%s: finished before, reused: %s", name, protocol, headline(done))
            return done
        if protocol == "linear":
            record = linear_eval(backbone, self.splits, self._linear_config(), out)
        elif protocol == "finetune":
            record = finetune_eval(backbone, self.splits, self._finetune_config(), out)
        else:
            record = knn_eval(backbone, self.splits, self._knn_config(), out)
        record = {**record, "stage": name, "suite_settings": settings}
        write_json(out / "results.json", record)
        append_result(root / "results.jsonl", record)
        log.info("eval %s/%s: %s", name, protocol, headline(record))
        return record

    def _settings(self, protocol: str) -> dict[str, Any]:
        cfg = {"linear": self._linear_config, "finetune": self._finetune_config, "knn": self._knn_config}[protocol]()
        return json.loads(json.dumps({"data": str(self.config.data), **asdict(cfg)}))  # as it reads back from JSON

    def _linear_config(self) -> LinearConfig:
        return _with(self.config.linear, **self._common())

    def _finetune_config(self) -> FinetuneConfig:
        return _with(self.config.finetune, **self._common())

    def _knn_config(self) -> KnnConfig:
        return _with(self.config.knn, **self._common())

    def _common(self) -> dict[str, Any]:
        return {"image_size": self.config.image_size, "device": self.config.device}


def _folder(name: str) -> str:
    """A variant name as a folder name ('HPT @ 0.1' -> 'HPT_at_0.1')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace(" @ ", "_at_"))


def _with(config: Any, **changes: Any) -> Any:
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def _finished(path: Path, sha: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved record if it was made with the same weights and settings, else None."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = record.get("backbone", {}).get("weights_sha256") == sha and _same_settings(record.get("suite_settings"),
                                                                                      settings, path)
    # top-1 records made before per-image outcomes were kept are redone, so that reports can compare them paired
    complete = record.get("metric") != "top1" or "test_correct" in record
    return record if same and complete else None


def _same_settings(saved: Any, settings: dict[str, Any], path: Path) -> bool:
    """Equal settings; data that was moved since (same name, old place gone) counts as the same data."""
    if saved == settings:
        return True
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), str) or not isinstance(settings["data"], str):
        return False
    if {**saved, "data": settings["data"]} != settings or not moved_data(saved["data"], settings["data"]):
        return False
    log.warning("eval in %s: its data %s no longer exists; taking %s, which has the same name, as that data moved",
                path.parent, saved["data"], settings["data"])
    return True
