#!/usr/bin/env bash
# Linear and few-label fine-tuning protocols, random weights against the CIFAR-10 base at step 1,900, on
# PneumoniaMNIST and mnist4 (docs/results.md, "Evaluation protocols on real data"). Run from anywhere; BASE is the
# early base's file (default: runs/eval4/base_cifar10_step1900.pt, the resume state of
# `hpt run configs/examples/base_cifar10.yaml --out runs/base_cifar10` at step 1,900).
# Outputs: runs/eval4/<data>-<backbone>-<protocol>/.
set -euo pipefail
cd "$(dirname "$0")/.." && . .venv/bin/activate
export OMP_NUM_THREADS=2
D=$(realpath ../shared/data)
R="--backbone random --arch resnet18 --small-stem --width 16"
P="--backbone ${BASE:-runs/eval4/base_cifar10_step1900.pt}"
PN=npz:$D/pneumoniamnist_28.npz
ML=npz:$D/mnist4_multilabel_56.npz
for d in pn ml; do
  data=$PN; [ $d = ml ] && data=$ML
  steps=300; [ $d = ml ] && steps=150
  for b in random base; do
    args=$R; [ $b = base ] && args=$P
    # shellcheck disable=SC2086
    /usr/bin/time -f "wall %e s, max RSS %M KB" hpt eval linear $args --data $data --out runs/eval4/$d-$b-linear
    # shellcheck disable=SC2086
    /usr/bin/time -f "wall %e s, max RSS %M KB" hpt eval finetune $args --data $data --labels 1000 --steps $steps --eval-every 50 --out runs/eval4/$d-$b-finetune1000
  done
done
echo ALL DONE
