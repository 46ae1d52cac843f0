#!/usr/bin/env python3
"""sluice's memory per connected Envoy, with real Envoys.

The fleet bench (`benches/fleet.rs`) opens a thousand streams from one process; this checks
its per-stream figure against stock Envoys, whose first request carries their whole node (a
list of every extension they were built with). It writes N ingresses as
`scripts/bench-latency.py` does, starts `sluice serve`, reads its RSS, starts K Envoys
bootstrapped by `sluice bootstrap` (one worker each), waits until sluice counts K connected
proxies and every Envoy has answered on its admin port, lets them settle, and reads sluice's
RSS again.

    scripts/bench-real-envoys.py [--envoys 100] [--size 1] [--delta] [--settle 10]

Everything runs on loopback with free ports, and only the processes it started are stopped.
"""

import argparse
import http.client
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
_spec = importlib.util.spec_from_file_location("bench_latency", os.path.join(HERE, "bench-latency.py"))
latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(latency)


def connected(admin_port):
    """How many Envoys sluice counts connected (its /metrics), or -1 if it does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
    try:
        conn.request("GET", "/metrics")
        for line in conn.getresponse().read().decode().splitlines():
            if line.startswith("sluice_xds_connected_proxies "):
                return int(float(line.split()[1]))
    except OSError:
        pass
    finally:
        conn.close()
    return -1


def envoy_ready(admin_port):
    return latency.status(admin_port, "localhost", path="/ready") == 200


def wait_for(what, predicate, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    sys.exit(f"gave up waiting for {what} after {limit} s")


def run(envoys, size, delta, settle):
    procs = []
    try:
        with tempfile.TemporaryDirectory() as work:
            manifests, _ = latency.write_world(work, size, procs)
            xds, admin = latency.free_port(), latency.free_port()
            log = open(os.path.join(work, "sluice.log"), "w")
            sluice = subprocess.Popen(
                [latency.SLUICE, "serve", "--dir", manifests, "--xds-addr", f"127.0.0.1:{xds}",
                 "--admin-addr", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1",
                 "--http-port", str(latency.free_port()),
                 "--internal-http-port", str(latency.free_port()),
                 "--https-port", str(latency.free_port()),
                 "--internal-https-port", str(latency.free_port())],
                stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
            procs.append(sluice)
            wait_for("sluice answering", lambda: connected(admin) == 0, 60)
            time.sleep(settle)
            before = latency.rss(sluice.pid)
            admins = []
            for i in range(envoys):
                envoy_admin = latency.free_port()
                admins.append(envoy_admin)
                args = [latency.SLUICE, "bootstrap", "--xds-addr", f"127.0.0.1:{xds}",
                        "--node-id", f"real-{i}", "--admin-addr", f"127.0.0.1:{envoy_admin}"]
                bootstrap = os.path.join(work, f"envoy-{i}.yaml")
                with open(bootstrap, "w") as f:
                    f.write(subprocess.check_output(args + (["--delta"] if delta else []), text=True))
                envoy_log = open(os.path.join(work, f"envoy-{i}.log"), "w")
                procs.append(subprocess.Popen(
                    [latency.ENVOY, "-c", bootstrap, "--disable-hot-restart", "--concurrency", "1",
                     "--log-level", "warn"],
                    stdout=envoy_log, stderr=envoy_log))
            wait_for(f"{envoys} Envoys connected", lambda: connected(admin) == envoys, 300)
            wait_for(f"{envoys} Envoys ready", lambda: all(envoy_ready(p) for p in admins), 300)
            time.sleep(settle)
            after = latency.rss(sluice.pid)
            return before, after
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envoys", type=int, default=100)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait before each RSS reading")
    opts = parser.parse_args()
    before, after = run(opts.envoys, opts.size, opts.delta, opts.settle)
    mode = "delta" if opts.delta else "SotW"
    per_envoy = (after - before) * 1024 / opts.envoys
    print("| ingresses | mode | Envoys | sluice RSS before | with the Envoys | per Envoy |")
    print("|---:|---|---:|---:|---:|---:|")
    print(f"| {opts.size} | {mode} | {opts.envoys} | {before:.1f} MiB | {after:.1f} MiB | "
          f"{per_envoy:.0f} KiB |")


if __name__ == "__main__":
    main()
