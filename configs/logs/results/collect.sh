#!/usr/bin/env bash
# Copies the small outputs of configs/experiments/run_all.sh (runs/results, not committed) into this folder.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=runs/results; L=configs/logs/results
for f in run_all.out run_paper.out resolution.out chain2.out stop.out validate_ranking.txt; do [[ -f $R/$f ]] && cp $R/$f $L/; done
cp $R/similarity/similarity.csv $L/similarity.csv
cp $R/depth_fashion_base/depth.csv $L/depth_fashion_base.csv
cp $R/depth_fashion_hpt/depth.csv $L/depth_fashion_hpt.csv
for d in $R/*/; do
  name=$(basename "$d")
  [[ -f $d/results.csv ]] && cp "$d/results.csv" "$L/results_$name.csv"
  [[ -f $d/ranking.json ]] && cp "$d/ranking.json" "$L/$name.json"
done
mkdir -p $L/resolution
for d in $R/resolution/*/; do [[ -f $d/results.json ]] && cp "$d/results.json" "$L/resolution/$(basename "$d").json"; done
ls $L
