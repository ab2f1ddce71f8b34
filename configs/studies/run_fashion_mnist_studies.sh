#!/usr/bin/env bash
# The compare and convergence studies on FashionMNIST and MNIST, then the bases, data size and augmentation
# studies on FashionMNIST (docs/results.md), on ../shared/data and 2 CPU cores: run from the repository root after
#   hpt run configs/examples/base_cifar10.yaml --out runs/base_cifar10 --resume             (the base of every study)
#   hpt run configs/examples/base_cifar10_long.yaml --out runs/base_cifar10_long --resume   (the bases study uses its backbones)
# Every command can be killed and re-run: finished stages and evaluations are reused.
#   bash configs/studies/run_fashion_mnist_studies.sh          fashion.yaml, mnist.yaml (lr 0.06, temperature 0.1)
#   bash configs/studies/run_fashion_mnist_studies.sh _paper   fashion_paper.yaml, mnist_paper.yaml (the paper's HPT settings)
. "$(dirname "$0")/common.sh"
S=${1:-}
run hpt experiment compare     $E/fashion$S.yaml
run hpt experiment convergence $E/fashion$S.yaml
run hpt experiment compare     $E/mnist$S.yaml
run hpt experiment convergence $E/mnist$S.yaml
# the sequential chains (mnist4 via MNIST, PneumoniaMNIST via FashionMNIST) run in run_sources.sh, among
# the other candidate sources of its ranking validation
# robustness studies at smaller budgets (HPT 50 steps, Target 200)
run hpt experiment bases       $E/fashion$S.yaml budgets.hpt=50
run hpt experiment datasize    $E/fashion$S.yaml budgets.hpt=50 budgets.hpt_bn=50 budgets.target=200
run hpt experiment augment     $E/fashion$S.yaml budgets.hpt=50 budgets.target=200
echo ALL DONE
