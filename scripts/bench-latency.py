#!/usr/bin/env python3
"""Time from a file change to the first 200 through Envoy, at several fleet sizes.

For each size N it writes N ingresses (each with its own Service and Endpoints) into a fresh
directory, starts `sluice serve` and a stock Envoy, waits until all of them are served, then
R times renames a file with a new ingress into the directory and polls the new host through
Envoy until it answers 200. Prints p50/p90/max per size and mode, with sluice's RSS and Envoy's
heap in use (its /memory `allocated`) and RSS once all are served.

    scripts/bench-latency.py [--sizes 1,1000,5000] [--rounds 20] [--delta] [--eager-stats]

`--eager-stats` bootstraps Envoy with `sluice bootstrap --eager-stats` (every cluster's traffic
stats created with the cluster, Envoy's default) instead of on first use.

Everything runs on loopback with free ports, and only the processes it started are stopped.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.path.join(ROOT, "target", "release", "sluice")
BACKEND = os.path.join(ROOT, "target", "release", "examples", "backend")
ENVOY = os.environ.get("SLUICE_ENVOY", os.path.join(ROOT, ".venv", "bin", "envoy"))
CLASS = "sluice.ingress.networking.knative.dev"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(name, backend_port):
    return f"""apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations: {{networking.knative.dev/ingress.class: {CLASS}}}
spec:
  rules:
  - hosts: [{name}.default.example.com]
    http:
      paths:
      - splits:
        - {{serviceName: {name}, servicePort: 80, appendHeaders: {{Knative-Serving-Revision: {name}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {backend_port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: default}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {backend_port}}}]
"""


def write_world(work, size, procs):
    """Starts the backend (added to procs) and writes `size` ingress files into work/manifests;
    returns that directory and the backend's port."""
    manifests = os.path.join(work, "manifests")
    os.mkdir(manifests)
    backend_port = free_port()
    procs.append(subprocess.Popen([BACKEND, "--port", str(backend_port), "--message", "hi"],
                                  stdout=subprocess.DEVNULL))
    for i in range(size):
        with open(os.path.join(manifests, f"svc-{i}.yaml"), "w") as f:
            f.write(manifest(f"svc-{i}", backend_port))
    return manifests, backend_port


def status(port, host, timeout=2.0, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def wait_200(port, host, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if status(port, host) == 200:
            return True
        time.sleep(0.0005)
    return False


def rss(pid):
    """Resident memory of a process in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def envoy_allocated(admin_port):
    """Envoy's heap in use (its /memory `allocated`) in MiB."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        conn.request("GET", "/memory")
        return int(json.loads(conn.getresponse().read())["allocated"]) / 2**20
    except (OSError, ValueError, KeyError):
        return float("nan")
    finally:
        conn.close()


def run(size, rounds, delta, eager_stats):
    procs = []
    try:
        with tempfile.TemporaryDirectory() as work:
            manifests, backend_port = write_world(work, size, procs)
            xds, admin, http_port, internal = (free_port() for _ in range(4))
            log = open(os.path.join(work, "sluice.log"), "w")
            procs.append(subprocess.Popen(
                [SLUICE, "serve", "--dir", manifests, "--xds-addr", f"127.0.0.1:{xds}",
                 "--admin-addr", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1",
                 "--http-port", str(http_port), "--internal-http-port", str(internal),
                 "--https-port", str(free_port()), "--internal-https-port", str(free_port())],
                stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"}))
            envoy_admin = free_port()
            args = [SLUICE, "bootstrap", "--xds-addr", f"127.0.0.1:{xds}", "--node-id", "bench",
                    "--admin-addr", f"127.0.0.1:{envoy_admin}"] + (["--delta"] if delta else [])
            args += ["--eager-stats"] if eager_stats else []
            bootstrap = os.path.join(work, "envoy.yaml")
            with open(bootstrap, "w") as f:
                f.write(subprocess.check_output(args, text=True))
            envoy_log = open(os.path.join(work, "envoy.log"), "w")
            procs.append(subprocess.Popen(
                [ENVOY, "-c", bootstrap, "--disable-hot-restart", "--log-level", "warn"],
                stdout=envoy_log, stderr=envoy_log))
            started = time.monotonic()
            last = f"svc-{size - 1}.default.example.com"
            if not wait_200(http_port, last, 120):
                sys.exit(f"size {size}: the initial config was not served within 120 s")
            startup = time.monotonic() - started
            cpu = (cpu_seconds(procs[1].pid), cpu_seconds(procs[2].pid))
            rss_mib = rss(procs[1].pid)
            envoy_mib = envoy_allocated(envoy_admin)
            envoy_rss = rss(procs[2].pid)
            samples = []
            for r in range(rounds):
                name = f"new-{r}"
                staging = os.path.join(work, f"{name}.yaml")
                with open(staging, "w") as f:
                    f.write(manifest(name, backend_port))
                begin = time.monotonic()
                os.rename(staging, os.path.join(manifests, f"{name}.yaml"))
                if not wait_200(http_port, f"{name}.default.example.com", 30):
                    sys.exit(f"size {size}: {name} was not served within 30 s")
                samples.append((time.monotonic() - begin) * 1000)
            samples.sort()
            return startup, cpu, rss_mib, (envoy_mib, envoy_rss), samples
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()


def cpu_seconds(pid):
    """User and system CPU time a process has used, in seconds, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        # The fields after the command name, which is in parentheses and may hold spaces.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,1000,5000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--eager-stats", action="store_true")
    args = parser.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--bin", "sluice",
                           "--example", "backend"], cwd=ROOT)
    mode = "delta" if args.delta else "SotW"
    print("| ingresses | mode | startup to all served | CPU until then: sluice | Envoy | sluice RSS "
          "| Envoy allocated | Envoy RSS | file change → first 200 p50 | p90 | max |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        startup, (sluice_cpu, envoy_cpu), rss_mib, (envoy_mib, envoy_rss), samples = run(
            size, args.rounds, args.delta, args.eager_stats)
        p90 = samples[int(len(samples) * 0.9) - 1] if len(samples) >= 10 else samples[-1]
        print(f"| {size} | {mode} | {startup:.2f} s | {sluice_cpu:.2f} s | {envoy_cpu:.2f} s "
              f"| {rss_mib:.0f} MiB | {envoy_mib:.0f} MiB | {envoy_rss:.0f} MiB "
              f"| {statistics.median(samples):.1f} ms "
              f"| {p90:.1f} ms | {samples[-1]:.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
