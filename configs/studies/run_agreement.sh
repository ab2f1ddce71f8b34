#!/usr/bin/env bash
# The guard's agreement with the start (linear CKA of the signal's features with the stage's start), measured
# next to the kNN signal on labelled targets, to set the floor of unlabelled stages (docs/results.md, "Agreement
# with the Base"). HPT from the shipped base at the demo's settings: a healthy stage (the demo's lr)
# and three that may harm the Base (the base's own recipe, lr 0.06 and temperature 0.1; lr 0.2; lr 0.6), each guarded by
# kNN with no agreement floor (the agreement is recorded, never acted on), so each runs until kNN falls beyond
# noise; every reading also records the effective rank of the same features. Then the same stages guarded by the
# unlabelled default (--guard-signal rank, its floors at their defaults).
# Re-running reuses every finished stage. The records: OUT/<stage>/summary.json, "guard".
. "$(dirname "$0")/common.sh"
D=../shared/data
A=src/hpt/assets
SHIPPED=$A/base_cifar10_w16.safetensors
DEMO=(--base $SHIPPED --batch-size 128 --image-size 28 --remove-aug gaussian_blur --checkpoint-every 25
      --set moco.momentum=0.99 --guard --guard-every 25)
for t in fashion_demo:$A/fashion_demo.npz mnist:$D/mnist_28.npz pneumonia:$D/pneumoniamnist_28.npz; do
  name=${t%%:*}; data=npz:$PWD/${t#*:}
  out=runs/results/agreement_$name
  for signal in knn rank; do
    floor=$([ $signal = knn ] && echo 0 || echo auto)
    common=(--data $data --out $out --guard-signal $signal --set guard.agreement_floor=$floor "${DEMO[@]}")
    run hpt pretrain "${common[@]}" --name healthy_$signal --steps 200 --lr 0.03 --set moco.temperature=0.2
    run hpt pretrain "${common[@]}" --name base_recipe_$signal --steps 200 --lr 0.06 --set moco.temperature=0.1
    run hpt pretrain "${common[@]}" --name lr0.2_$signal --steps 200 --lr 0.2 --set moco.temperature=0.2
    run hpt pretrain "${common[@]}" --name lr0.6_$signal --steps 200 --lr 0.6 --set moco.temperature=0.2
  done
done
.venv/bin/python scripts/guard_agreement_table.py runs/results/agreement_*
.venv/bin/python scripts/score_rank_guarded.py runs/results/agreement_*
