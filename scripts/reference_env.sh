#!/usr/bin/env bash
# A side virtual environment with the reference implementations (timm, torchvision) used to make test fixtures.
#
# The project's own environment uses the CPU build of torch, beside which timm and torchvision do not import;
# this one takes the PyPI build of torch (it runs on the CPU too). Usage:
#   bash scripts/reference_env.sh            # creates .venv-reference/ (once; a few minutes)
#   .venv-reference/bin/python scripts/make_vit_fixtures.py
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${REFERENCE_ENV:-.venv-reference}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$ENV/bin/pip" install -q timm safetensors numpy
"$ENV/bin/python" -c "import timm, torch, torchvision; print('reference env:', 'torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__)"
