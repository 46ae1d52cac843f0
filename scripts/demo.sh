#!/usr/bin/env bash
# Runs the main job on this machine: sluice, a stock Envoy and the example backends, serving
# examples/manifests. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-envoy.sh
cargo build --release --bin sluice --example backend

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

backend() { target/release/examples/backend --port "$1" --message "$2" >/dev/null & pids+=($!); }
backend 9101 "Hello Go Sample v1!"
backend 9102 "Hello from blue!"
backend 9103 "Hello from green!"
backend 9104 "Hello blue!"
backend 9105 "Hello green!"

cat <<'TRY'
Try, once Envoy is up:
  curl -H 'Host: helloworld-go.default.example.com' http://127.0.0.1:8080
  for i in $(seq 20); do curl -s -H 'Host: blue-green.default.example.com' http://127.0.0.1:8080; done | sort | uniq -c
  curl -H 'Host: helloworld-go.default.svc.cluster.local' http://127.0.0.1:8081   # ClusterLocal: internal listener only
  target/release/sluice rollout hello -n hello-test -p hello-00001=90% -p hello-00002=10%
  for i in $(seq 20); do curl -s -H 'Host: hello.hello-test.example.com' http://127.0.0.1:8080; done | sort | uniq -c
  target/release/sluice get route -n hello-test
  target/release/sluice get ingress
  curl http://127.0.0.1:9091/debug/proxies
Edit a file under examples/manifests and the change is served at once.
TRY
target/release/sluice up --dir examples/manifests --listen-address 127.0.0.1 "$@"
