#!/usr/bin/env bash
# Which targets separate a trained encoder from random weights? The linear protocol, random weights against the
# CIFAR-10 base at step 1,900, on CIFAR-10, FashionMNIST and MNIST at 32 px (docs/results.md, "Evaluation protocols
# on real data"). BASE as in scripts/eval_protocols_random_vs_early_base.sh.
# Outputs: runs/eval4/targets/<data>-<backbone>/.
set -euo pipefail
cd "$(dirname "$0")/.." && . .venv/bin/activate
export OMP_NUM_THREADS=2
D=$(realpath ../shared/data)
R="--backbone random --arch resnet18 --small-stem --width 16"
P="--backbone ${BASE:-runs/eval4/base_cifar10_step1900.pt}"
for d in cifar10_32 fashionmnist_28 mnist_28; do
  for b in random base; do
    args=$R; [ $b = base ] && args=$P
    # shellcheck disable=SC2086
    /usr/bin/time -f "wall %e s" hpt eval linear $args --data npz:$D/$d.npz --image-size 32 --out runs/eval4/targets/$d-$b 2>&1 | grep -v "seed 0"
  done
done
echo ALL DONE
