#!/usr/bin/env bash
# Which targets separate a trained encoder from random weights? Linear protocol, random vs CIFAR-10 base at step 1900.
cd /work/main && . .venv/bin/activate
export OMP_NUM_THREADS=2
while pgrep -f measure.sh > /dev/null; do sleep 10; done
R="--backbone random --arch resnet18 --small-stem --width 16"
P="--backbone runs/eval4/base_cifar10_step1900.pt"
for d in cifar10_32 fashionmnist_28 mnist_28; do
  for b in random base; do
    args=$R; [ $b = base ] && args=$P
    /usr/bin/time -f "wall %e s" hpt eval linear $args --data npz:/work/shared/data/$d.npz --image-size 32 --out runs/eval4/targets/$d-$b 2>&1 | grep -v "seed 0"
  done
done
echo ALL DONE
