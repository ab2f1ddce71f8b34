"""Experiments: the paper's studies expanded into shared, content-addressed stage runs and evaluations."""

from hpt.experiments.config import ExperimentConfig, load_experiment, parse_experiment
from hpt.experiments.plan import KINDS, Variant, expand
from hpt.experiments.runner import ExperimentResult, run_experiment

__all__ = ["KINDS", "ExperimentConfig", "ExperimentResult", "Variant", "expand", "load_experiment",
           "parse_experiment", "run_experiment"]
