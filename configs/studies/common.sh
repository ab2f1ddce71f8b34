# Sourced by the run_*.sh scripts: strict mode, the repository root, the virtual environment, and `run`, which
# echoes a command and reports its wall time and peak memory; BASE, the base of the recorded results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. .venv/bin/activate
E=configs/studies
run() { echo "== $*"; /usr/bin/time -f "wall %e s, max RSS %M KB" "$@"; }
# The 12,000-step CIFAR-10 base (62.5% CIFAR-10 linear) that the recorded results were measured with, written by
#   hpt run configs/examples/base_cifar10.yaml --out runs/base_cifar10
BASE=runs/base_cifar10/base/backbone.safetensors
