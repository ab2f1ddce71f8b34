#!/usr/bin/env bash
# Issue 5's studies again at the paper's HPT settings (lr 0.03, temperature 0.2) for every stage, since the base's
# own lr 0.06 / temperature 0.1 collapse a new head on it (docs/RESULTS.md, "Why HPT lost"). Re-runs reuse work.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
E=configs/experiments
run() { echo "== $*"; /usr/bin/time -f "wall %e s, max RSS %M KB" "$@"; }
run hpt experiment compare     $E/fashion_paper.yaml
run hpt experiment convergence $E/fashion_paper.yaml
run hpt experiment compare     $E/mnist_paper.yaml
run hpt experiment convergence $E/mnist_paper.yaml
run hpt experiment bases       $E/fashion_paper.yaml budgets.hpt=50
run hpt experiment datasize    $E/fashion_paper.yaml budgets.hpt=50 budgets.hpt_bn=50 budgets.target=200
run hpt experiment augment     $E/fashion_paper.yaml budgets.hpt=50 budgets.target=200
echo ALL DONE
