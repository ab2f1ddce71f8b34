#!/usr/bin/env bash
# CKA similarity, depth probe and convergence stop with the 12,000-step CIFAR-10 base, on FashionMNIST (docs/results.md).
# Needs the compare runs of run_fashion_mnist_studies.sh (the Base, HPT, HPT-BN and Target backbones); run from the
# repository root.
. "$(dirname "$0")/common.sh"
D=$(realpath ../shared/data)
OUT=runs/results/fashion
backbone() {  # the backbone of one compare variant, from the experiment's rows
  python -c "import json,sys; rows=[json.loads(l) for l in open('$OUT/experiments/compare.jsonl')]; \
r=[r for r in rows if r['variant']=='$1'][0]; print('$OUT/'+r['eval_dir'].split('/eval/')[0]+'/'+r['stages'].split('(')[0].split(' -> ')[-1]+'/backbone.safetensors')"
}
run hpt analyze similarity "$BASE" "$(backbone HPT)" "$(backbone HPT-BN)" "$(backbone Target)" \
    --name Base --name HPT --name HPT-BN --name Target --data "npz:$D/fashionmnist_28.npz" --out runs/results/similarity
run hpt analyze depth "$BASE" --data "npz:$D/fashionmnist_28.npz" --out runs/results/depth_fashion_base
run hpt analyze depth "$(backbone HPT)" --data "npz:$D/fashionmnist_28.npz" --out runs/results/depth_fashion_hpt
# The convergence stop with its default margin (one standard error of the probe's val score), 400-step budget.
run hpt run configs/studies/stop_fashion.yaml --out runs/results/stop
echo ALL DONE
