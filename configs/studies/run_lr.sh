#!/usr/bin/env bash
# Does HPT's learning rate decide whether it keeps the Base's score? The FashionMNIST convergence study again with
# HPT's stage at lr 0.03 (the paper's) and 0.01 instead of 0.06; the Base, Random and Target runs are shared with
# runs/results/fashion through stages_dir, so only the HPT runs and the evaluations are new.
. "$(dirname "$0")/common.sh"
for lr in 0.03 0.01; do
  run hpt experiment convergence $E/fashion.yaml budgets.hpt_lr=$lr stages_dir=../../runs/results/fashion/stages \
      --out runs/results/fashion_hpt_lr$lr
done
