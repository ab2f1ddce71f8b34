#!/usr/bin/env bash
# Everything behind docs/RESULTS.md, most important first, so that a stopped run leaves the main results done:
# the FashionMNIST comparison and convergence, the source ranking and sequential chains (issues 5 and 7), the
# CKA / depth / stop analyses (issue 7), then the rest of issue 5 (MNIST, bases, data size, augmentation), then
# issue 5's studies and the sequential chains again at the paper's HPT settings (lr 0.03, temperature 0.2).
# Re-running reuses every finished stage and evaluation.
. "$(dirname "$0")/common.sh"
run hpt experiment compare     $E/fashion.yaml
run hpt experiment convergence $E/fashion.yaml
bash $E/run_sources.sh
bash $E/run_issue7.sh
bash $E/run_issue5.sh
bash $E/run_issue5.sh _paper
bash $E/run_sources.sh _paper
