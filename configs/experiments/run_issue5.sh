#!/usr/bin/env bash
# Issue 5's results on ../shared/data (docs/RESULTS.md), on 2 CPU cores: run from the repository root after
#   hpt run configs/base_cifar10_long.yaml --out runs/base_cifar10_long --resume   (the bases study uses its backbones;
#                                       configs/logs/base_long/keep.sh restore brings them back in a new work tree)
#   python configs/build_demo_assets.py --base runs/base_cifar10_long/base_long/backbone.safetensors   (the shipped base)
# Every command can be killed and re-run: finished stages and evaluations are reused.
#   bash configs/experiments/run_issue5.sh          fashion.yaml, mnist.yaml (lr 0.06, temperature 0.1)
#   bash configs/experiments/run_issue5.sh _paper   fashion_paper.yaml, mnist_paper.yaml (the paper's HPT settings)
. "$(dirname "$0")/common.sh"
S=${1:-}
run hpt experiment compare     $E/fashion$S.yaml
run hpt experiment convergence $E/fashion$S.yaml
run hpt experiment compare     $E/mnist$S.yaml
run hpt experiment convergence $E/mnist$S.yaml
# issue 5's sequential chains (mnist4 via MNIST, PneumoniaMNIST via FashionMNIST) run in run_sources.sh, among
# the other candidate sources of issue 7's ranking validation
# robustness studies at smaller budgets (HPT 50 steps, Target 200)
run hpt experiment bases       $E/fashion$S.yaml budgets.hpt=50
run hpt experiment datasize    $E/fashion$S.yaml budgets.hpt=50 budgets.hpt_bn=50 budgets.target=200
run hpt experiment augment     $E/fashion$S.yaml budgets.hpt=50 budgets.target=200
echo ALL DONE
