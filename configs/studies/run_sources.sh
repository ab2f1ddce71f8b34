#!/usr/bin/env bash
# The validation of `hpt rank-sources`: for each target of ../shared/data, rank the other data sets as
# sources, then run the sequential study (B, B+T, and B+S, B+S+T for every candidate source) and see whether the
# top-ranked source gave the best B+S+T. Includes the two chains (mnist4 via MNIST, PneumoniaMNIST via
# FashionMNIST). Run from the repository root after the steps named in run_fashion_mnist_studies.sh; re-runs reuse
# finished work.
#   bash configs/studies/run_sources.sh          seq_<target>.yaml as written (lr 0.06, temperature 0.1)
#   bash configs/studies/run_sources.sh _paper   the same at the paper's HPT settings (lr 0.03, temperature 0.2),
#                                                    into runs/results/seq_<target>_paper
. "$(dirname "$0")/common.sh"
S=${1:-}
SETTINGS=()
[[ $S == _paper ]] && SETTINGS=(defaults.lr=0.03 defaults.moco.temperature=0.2)
[[ -n $S && $S != _paper ]] && { echo "unknown suffix '$S' (use _paper or nothing)" >&2; exit 2; }
D=$(realpath ../shared/data)
declare -A FILE=([fashionmnist]=fashionmnist_28 [mnist]=mnist_28 [mnist4]=mnist4_multilabel_56 [pneumoniamnist]=pneumoniamnist_28)
mkdir -p runs/results
for target in mnist4 pneumoniamnist fashionmnist mnist; do
  sources=()
  for s in mnist fashionmnist mnist4 pneumoniamnist; do [[ $s != "$target" ]] && sources+=("npz:$D/${FILE[$s]}.npz"); done
  run hpt rank-sources --base $BASE --target "npz:$D/${FILE[$target]}.npz" --base-data "npz:$D/cifar10_32.npz" \
      --image-size 32 --out "runs/results/rank_$target" "${sources[@]}"   # writes rank_$target/ranking.json
  run hpt experiment sequential "configs/studies/seq_$target.yaml" --out "runs/results/seq_$target$S" \
      ${SETTINGS[@]+"${SETTINGS[@]}"}
done
echo ALL DONE
