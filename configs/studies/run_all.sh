#!/usr/bin/env bash
# Everything behind docs/results.md, most important first, so that a stopped run leaves the main results done:
# the FashionMNIST comparison and convergence, the source ranking and sequential chains, the CKA / depth / stop
# analyses, then the MNIST, bases, data size and augmentation studies, then those studies and the sequential
# chains again at the paper's HPT settings (lr 0.03, temperature 0.2).
# Re-running reuses every finished stage and evaluation.
. "$(dirname "$0")/common.sh"
run hpt experiment compare     $E/fashion.yaml
run hpt experiment convergence $E/fashion.yaml
bash $E/run_sources.sh
bash $E/run_fashion_similarity_depth_stop.sh
bash $E/run_fashion_mnist_studies.sh
bash $E/run_fashion_mnist_studies.sh _paper
bash $E/run_sources.sh _paper
