#!/usr/bin/env bash
# Which targets and protocols tell a trained encoder from random weights? Random weights against the CIFAR-10 base
# at step 1,900 (docs/results.md, "Evaluation protocols on real data"):
#   1. linear and few-label fine-tuning on PneumoniaMNIST and mnist4 (outputs: runs/eval4/<data>-<backbone>-<protocol>/);
#   2. linear on CIFAR-10, FashionMNIST and MNIST at 32 px (outputs: runs/eval4/targets/<data>-<backbone>/).
# BASE is the early base's file; by default the backbone that
#   hpt run configs/examples/base_cifar10.yaml --out runs/base_cifar10
# keeps at step 1,900 (keep_backbones). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.." && . .venv/bin/activate
export OMP_NUM_THREADS=2
D=$(realpath ../shared/data)
RANDOM_WEIGHTS="--backbone random --arch resnet18 --small-stem --width 16"
EARLY_BASE="--backbone ${BASE:-runs/base_cifar10/base/backbone-step1900.safetensors}"
timed() { /usr/bin/time -f "wall %e s, max RSS %M KB" "$@"; }

PN=npz:$D/pneumoniamnist_28.npz
ML=npz:$D/mnist4_multilabel_56.npz
for d in pn ml; do
  data=$PN; [ $d = ml ] && data=$ML
  steps=300; [ $d = ml ] && steps=150
  for b in random base; do
    args=$RANDOM_WEIGHTS; [ $b = base ] && args=$EARLY_BASE
    # shellcheck disable=SC2086
    timed hpt eval linear $args --data $data --out runs/eval4/$d-$b-linear
    # shellcheck disable=SC2086
    timed hpt eval finetune $args --data $data --labels 1000 --steps $steps --eval-every 50 --out runs/eval4/$d-$b-finetune1000
  done
done

for d in cifar10_32 fashionmnist_28 mnist_28; do
  for b in random base; do
    args=$RANDOM_WEIGHTS; [ $b = base ] && args=$EARLY_BASE
    # shellcheck disable=SC2086
    timed hpt eval linear $args --data npz:$D/$d.npz --image-size 32 --out runs/eval4/targets/$d-$b
  done
done
echo ALL DONE
