#!/usr/bin/env bash
# The side virtual environment of the peer benchmarks (bench/peers/): the PyPI build of torch with torchvision and
# lightly, and hpt itself installed editable, so that both sides of a comparison run on the same torch build.
#
# The project's own environment uses the CPU build of torch, beside which torchvision (and so lightly) does not
# import; the PyPI build runs on the CPU too. Usage:
#   bash bench/peers/setup_env.sh            # creates .venv-peers/ (once; a few GB, a few minutes)
#   .venv-peers/bin/python bench/peers/lightly_moco.py --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV=${PEERS_ENV:-.venv-peers}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/pip" install -q --upgrade pip
# torch pinned in the same command as lightly, so that lightly's requirements cannot move it
"$ENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 lightly
"$ENV/bin/pip" install -q torch==2.14.1 -e . pytest
"$ENV/bin/python" - <<'PY'
import importlib.metadata as md

import kornia, lightly, torch, torchvision  # noqa: E401,F401
import hpt  # noqa: F401

print("peers env: torch", torch.__version__, "| torchvision", torchvision.__version__, "| lightly",
      lightly.__version__, "| kornia", kornia.__version__, "| hpt", md.version("hpt"))
PY
