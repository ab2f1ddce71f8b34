"""Train only the Target stage of configs/studies/fashion_paper_long_target.yaml (8,000 steps), before the rest.

    python scripts/train_fashion_paper_long_target_first.py

Run from the repository root; `hpt experiment convergence configs/studies/fashion_paper_long_target.yaml` then
reuses this stage, trains HPT and probes every point.
"""
import logging
from pathlib import Path

from hpt import distributed
from hpt.eval.suite import EvalSuite
from hpt.experiments import load_experiment
from hpt.experiments.plan import expand
from hpt.experiments.runner import run_variant

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
cfg = load_experiment("configs/studies/fashion_paper_long_target.yaml")
variants = expand("convergence", cfg)
full = [v for v in variants if v.series == "Target" and v.snapshot is None and v.stages]
assert len(full) == 1, full
out = Path(cfg.out)
info = distributed.init_distributed(cfg.defaults.get("device", "auto"))
rows = run_variant(full[0], out, EvalSuite(cfg.eval, out), info, Path(cfg.stages_dir))
print(rows[0]["test"], rows[0]["low"], rows[0]["high"], rows[0]["result_id"])
