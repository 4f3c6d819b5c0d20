#!/usr/bin/env bash
# Install cssl's dependencies from a wheelhouse (scripts/wheelhouse.py), without any network:
#   bash scripts/install_offline.sh [WHEELHOUSE]          (default: $CSSL_WHEELHOUSE, else ./wheelhouse)
#   PYTHON=/path/to/venv/bin/python bash scripts/install_offline.sh wheelhouse
# cssl itself then runs from this checkout with PYTHONPATH=. (or: pip install --no-index --no-deps -e .,
# where setuptools is installed).
set -euo pipefail
WHEELHOUSE=${1:-${CSSL_WHEELHOUSE:-wheelhouse}}
PYTHON=${PYTHON:-python}
if [ ! -f "$WHEELHOUSE/requirements.txt" ]; then
  echo "error: $WHEELHOUSE/requirements.txt does not exist; write the wheelhouse with python scripts/wheelhouse.py on a machine with internet and copy it here" >&2
  exit 2
fi
exec "$PYTHON" -m pip install --no-index --find-links "$WHEELHOUSE" -r "$WHEELHOUSE/requirements.txt"
