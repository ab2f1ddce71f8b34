# Sourced by the run_*.sh scripts: strict mode, the repository root, the virtual environment, and `run`, which
# echoes a command and reports its wall time and peak memory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. .venv/bin/activate
E=configs/experiments
run() { echo "== $*"; /usr/bin/time -f "wall %e s, max RSS %M KB" "$@"; }
