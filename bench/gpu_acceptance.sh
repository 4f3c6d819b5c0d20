#!/usr/bin/env bash
# The GPU acceptance run in one command (docs/performance.md), from a plain checkout and without a network:
#   bash bench/gpu_acceptance.sh [--out DIR] [--smoke] [--methods ...]
# When cssl's dependencies are missing they are installed from the wheelhouse $CSSL_WHEELHOUSE (default
# ./wheelhouse, written by scripts/wheelhouse.py); cssl runs from this checkout (PYTHONPATH), installed or not.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import hydra, omegaconf, kornia, sklearn, cssl.pretrain" 2>/dev/null; then
  echo "cssl's dependencies are missing: installing them from ${CSSL_WHEELHOUSE:-wheelhouse} (no index)"
  PYTHON="$PYTHON" bash scripts/install_offline.sh
fi
exec "$PYTHON" bench/gpu_acceptance.py "$@"
