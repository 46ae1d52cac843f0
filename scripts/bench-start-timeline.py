#!/usr/bin/env python3
"""Where one Envoy's start from `sluice serve` goes: phases, and each process's CPU in them.

For one size N it writes the same N ingresses as `scripts/bench-latency.py`, starts `sluice
serve` and a stock Envoy bootstrapped by `sluice bootstrap`, and polls the last host through
Envoy until it answers 200, as that script does. Meanwhile it samples every 50 ms the CPU time
of sluice and of Envoy (from /proc) and sluice's responses and ACKs per xDS type (its
`/metrics`). The phases come from the two logs (wall-clock timestamps):

  load      sluice started -> its first load translated (`applied source changes`)
  clusters  -> Envoy has every cluster warmed (`cm init: all clusters initialized`): CDS, EDS
  routes    -> Envoy's init manager is done (`starting workers`): LDS, SRDS, RDS
  serve     -> the last host answers 200 through Envoy

Per phase it prints the wall time, the CPU each process used and how busy each was (100% is
one core), and the responses sluice sent per type; `--samples` also prints the 50 ms samples.

    scripts/bench-start-timeline.py [--size 10000] [--delta] [--eager-stats] [--samples]

Everything runs on loopback with free ports, and only the processes it started are stopped.
"""

import argparse
import datetime
import http.client
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
_spec = importlib.util.spec_from_file_location("bench_latency", os.path.join(HERE, "bench-latency.py"))
latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(latency)

TYPES = ["CDS", "EDS", "LDS", "SRDS", "RDS"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SLUICE_MARKS = {"load": "applied source changes"}
ENVOY_MARKS = {"clusters": "cm init: all clusters initialized", "routes": "starting workers"}


def jiffies(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pushes(admin_port):
    """sluice's responses sent per xDS type so far."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}
    finally:
        conn.close()
    return {m[1]: int(m[2]) for m in re.finditer(r'^sluice_xds_pushes_total\{type="(\w+)"\} (\d+)', text, re.M)}


def marks(path, wanted, started_wall):
    """Seconds from the start at which each wanted log line first appears."""
    found = {}
    with open(path) as f:
        for line in f:
            line = ANSI.sub("", line)
            for phase, text in wanted.items():
                if phase not in found and text in line:
                    stamp = line.split()[0].rstrip("Z")
                    when = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)
                    found[phase] = when.timestamp() - started_wall
    return found


def at(samples, t, index):
    """A sampled counter at time t, interpolated between the samples around it."""
    before = max((s for s in samples if s[0] <= t), default=samples[0], key=lambda s: s[0])
    after = min((s for s in samples if s[0] >= t), default=samples[-1], key=lambda s: s[0])
    if after[0] == before[0]:
        return before[index]
    share = (t - before[0]) / (after[0] - before[0])
    return before[index] + share * (after[index] - before[index])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--eager-stats", action="store_true")
    parser.add_argument("--samples", action="store_true")
    args = parser.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--bin", "sluice",
                           "--example", "backend"], cwd=latency.ROOT)
    tick = os.sysconf("SC_CLK_TCK")
    procs = []
    try:
        with tempfile.TemporaryDirectory() as work:
            manifests, _backend_port = latency.write_world(work, args.size, procs)
            xds, admin, http_port, internal, envoy_admin = (latency.free_port() for _ in range(5))
            bootstrap = os.path.join(work, "envoy.yaml")
            command = [latency.SLUICE, "bootstrap", "--xds-addr", f"127.0.0.1:{xds}", "--node-id", "bench",
                       "--admin-addr", f"127.0.0.1:{envoy_admin}"]
            command += ["--delta"] if args.delta else []
            command += ["--eager-stats"] if args.eager_stats else []
            with open(bootstrap, "w") as f:
                f.write(subprocess.check_output(command, text=True))
            sluice_log = os.path.join(work, "sluice.log")
            envoy_log = os.path.join(work, "envoy.log")
            started_wall, started = time.time(), time.monotonic()
            with open(sluice_log, "w") as log:
                procs.append(subprocess.Popen(
                    [latency.SLUICE, "serve", "--dir", manifests, "--xds-addr", f"127.0.0.1:{xds}",
                     "--admin-addr", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1",
                     "--http-port", str(http_port), "--internal-http-port", str(internal),
                     "--https-port", str(latency.free_port()),
                     "--internal-https-port", str(latency.free_port())],
                    stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "info"}))
            with open(envoy_log, "w") as log:
                procs.append(subprocess.Popen(
                    [latency.ENVOY, "-c", bootstrap, "--disable-hot-restart", "--log-level", "info",
                     "--log-format", "%Y-%m-%dT%H:%M:%S.%fZ %l [%n] %v"], stdout=log, stderr=log))
            sluice, envoy = procs[1].pid, procs[2].pid
            samples = []
            done = threading.Event()

            def sample():
                while not done.is_set():
                    samples.append((time.monotonic() - started, jiffies(sluice) / tick,
                                    jiffies(envoy) / tick, pushes(admin)))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            last = f"svc-{args.size - 1}.default.example.com"
            served = latency.wait_200(http_port, last, 120)
            finished = time.monotonic() - started
            done.set()
            sampler.join()
            if not served:
                sys.exit(f"size {args.size}: the initial config was not served within 120 s")
            samples.append((finished, jiffies(sluice) / tick, jiffies(envoy) / tick, pushes(admin)))
            found = marks(sluice_log, SLUICE_MARKS, started_wall)
            found.update(marks(envoy_log, ENVOY_MARKS, started_wall))
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()
    mode = "delta" if args.delta else "SotW"
    load = os.getloadavg()[0]
    print(f"{args.size} ingresses, {mode}: start to all served {finished:.2f} s, sluice CPU "
          f"{samples[-1][1]:.2f} s, Envoy CPU {samples[-1][2]:.2f} s (load average {load:.1f})")
    print("| phase | from | to | wall | sluice CPU | busy | Envoy CPU | busy | responses sent |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    begin = 0.0
    for phase in ("load", "clusters", "routes", "serve"):
        end = found.get(phase, finished) if phase != "serve" else finished
        wall = max(end - begin, 1e-9)
        cpu = [at(samples, end, i) - at(samples, begin, i) for i in (1, 2)]
        sent = {t: round(at_pushes(samples, end, t) - at_pushes(samples, begin, t)) for t in TYPES}
        sent_text = ", ".join(f"{t} {n}" for t, n in sent.items() if n)
        print(f"| {phase} | {begin:.2f} s | {end:.2f} s | {wall:.2f} s | {cpu[0]:.2f} s | "
              f"{100 * cpu[0] / wall:.0f}% | {cpu[1]:.2f} s | {100 * cpu[1] / wall:.0f}% | {sent_text} |")
        begin = end
    if args.samples:
        print("\n| t | sluice busy | Envoy busy | " + " | ".join(TYPES) + " |")
        for previous, sample in zip(samples, samples[1:]):
            span = max(sample[0] - previous[0], 1e-9)
            counts = " | ".join(str(sample[3].get(t, 0)) for t in TYPES)
            print(f"| {sample[0]:.2f} | {100 * (sample[1] - previous[1]) / span:.0f}% "
                  f"| {100 * (sample[2] - previous[2]) / span:.0f}% | {counts} |")


def at_pushes(samples, t, type_url):
    """Responses of a type sent by time t (the last sample at or before it)."""
    before = [s for s in samples if s[0] <= t]
    return before[-1][3].get(type_url, 0) if before else 0


if __name__ == "__main__":
    main()
