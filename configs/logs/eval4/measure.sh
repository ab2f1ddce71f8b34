#!/usr/bin/env bash
# Issue 4 measurements: linear and few-label fine-tuning, random vs CIFAR-10 base (step 1900), on two data sets.
cd /work/main && . .venv/bin/activate
export OMP_NUM_THREADS=2
R="--backbone random --arch resnet18 --small-stem --width 16"
P="--backbone runs/eval4/base_cifar10_step1900.pt"
PN=npz:/work/shared/data/pneumoniamnist_28.npz
ML=npz:/work/shared/data/mnist4_multilabel_56.npz
for d in pn ml; do
  data=$PN; [ $d = ml ] && data=$ML
  steps=300; [ $d = ml ] && steps=150
  for b in random base; do
    args=$R; [ $b = base ] && args=$P
    /usr/bin/time -f "wall %e s, max RSS %M KB" hpt eval linear $args --data $data --out runs/eval4/$d-$b-linear
    /usr/bin/time -f "wall %e s, max RSS %M KB" hpt eval finetune $args --data $data --labels 1000 --steps $steps --eval-every 50 --out runs/eval4/$d-$b-finetune1000
  done
done
echo ALL DONE
