#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests against a real Envoy, and the
# Kubernetes-mode tests against a real kube-apiserver and etcd. Installs Envoy into ./.venv and
# builds the API server into ./.kube-bin first when they are not there (the first build takes
# several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-envoy.sh
scripts/install-kube.sh
cargo test "$@"
