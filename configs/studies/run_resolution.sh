#!/usr/bin/env bash
# Is a higher input resolution a lever? The 12,000-step CIFAR-10 base (small-image stem, trained at 32 px) and random
# weights of the same shape, on FashionMNIST resized to 28 (its own), 32 (the base's), 56 and 84 px: the linear
# protocol on the full test set. Writes runs/results/resolution/<backbone>_<size>/results.json; re-runs reuse them.
. "$(dirname "$0")/common.sh"
D=$(realpath ../shared/data)
for size in 28 32 56 84; do
  for backbone in base random; do
    out=runs/results/resolution/${backbone}_$size
    [[ -f $out/results.json ]] && { echo "== $out: done before"; continue; }
    spec=$BASE; [[ $backbone == random ]] && spec="random --arch resnet18 --small-stem --width 16"
    # shellcheck disable=SC2086
    run hpt eval linear --backbone $spec --data "npz:$D/fashionmnist_28.npz" --image-size "$size" --out "$out"
  done
done
echo ALL DONE
