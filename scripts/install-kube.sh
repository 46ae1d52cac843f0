#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd from their Go modules (tools/kube) into ./.kube-bin, once
# per machine: the Kubernetes-mode tests start them. The first build takes about 7 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.kube-bin"
stamp="$bin/.built-from"
want=$(sha256sum tools/kube/go.mod tools/kube/go.sum | sha256sum | cut -d' ' -f1)
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
mkdir -p "$bin"
echo "building kube-apiserver and etcd into $bin (first time: several minutes)" >&2
cd tools/kube
go build -trimpath -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -o "$bin/etcd" go.etcd.io/etcd/server/v3
echo "$want" > "$stamp"
