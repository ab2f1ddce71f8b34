#!/usr/bin/env bash
# Baselines that learn and a guarded HPT (docs/results.md, "Baselines that learn, and a guarded HPT"):
# compare with Target's own recipe and HPT's guard on the demo's FashionMNIST subset (three seeds), MNIST,
# PneumoniaMNIST and the whole FashionMNIST training split (20,000 images); then the Base anchor swept at the demo's settings, with 50 and with 200 HPT steps.
# Re-running reuses every finished stage and evaluation.
. "$(dirname "$0")/common.sh"
D=../shared/data
run hpt experiment compare $E/guarded_compare.yaml
run hpt experiment compare $E/guarded_compare.yaml target=npz:$PWD/$D/mnist_28.npz --out runs/results/guarded_mnist
run hpt experiment compare $E/guarded_compare.yaml target=npz:$PWD/$D/pneumoniamnist_28.npz \
    --out runs/results/guarded_pneumonia
run hpt experiment compare $E/guarded_compare.yaml target=npz:$PWD/$D/fashionmnist_28.npz \
    --out runs/results/guarded_fashion
run hpt experiment sweep $E/demo_anchor.yaml
run hpt experiment sweep $E/demo_anchor.yaml budgets.hpt=200 --out runs/results/demo_anchor_200
# Target with the stages' defaults instead of its recipe (one seed; the other variants' runs are reused)
for t in fashion_demo:src/hpt/assets/fashion_demo.npz mnist:$D/mnist_28.npz pneumonia:$D/pneumoniamnist_28.npz; do
  name=${t%%:*}; data=${t#*:}
  run hpt experiment compare $E/guarded_compare.yaml 'recipes.target={}' 'seeds=[0]' target=npz:$PWD/$data \
      stages_dir=$PWD/runs/results/guarded_$name/stages --out runs/results/default_target_$name
done
# A longer anchored and guarded HPT on the demo's data: 800 steps, weights 0 and 10
run hpt experiment sweep $E/demo_anchor.yaml budgets.hpt=800 'sweep.values=[0.0, 10.0]' \
    'recipes.hpt={guard: {every: 100, keep: best}}' --out runs/results/demo_anchor_800
# A multi-label target (mean AUROC; the guard's kNN signal then has no per-image outcomes): one seed
run hpt experiment compare $E/guarded_compare.yaml target=npz:$PWD/$D/mnist4_multilabel_56.npz 'seeds=[0]' \
    defaults.augment.image_size=32 --out runs/results/guarded_mnist4
