#!/usr/bin/env python3
"""Envoy's own start with the config sluice serves, read from files: the floor under sluice's.

For each size N it writes the same N ingresses as `scripts/bench-latency.py` (each with its own
Service and Endpoints), has `sluice serve` translate them, takes what it serves from
`/debug/config` and stops it. From that it writes what Envoy reads itself: a CDS file of the
same clusters, each `STATIC` with its endpoints inline, and an LDS file of the same two
listeners, each with one inline route table holding the virtual hosts of every host scoped to
that listener (the per-host route configurations and scopes over SRDS become one table: files
cannot feed SRDS without a file per route configuration). Then it starts a stock Envoy on those
files (`path_config_source`) and times its start to the last host answering 200, with Envoy's
CPU time, heap in use (`/memory` `allocated`) and RSS read at that moment.

    scripts/bench-envoy-files.py [--sizes 5000,10000] [--eager-stats]

Envoy creates each cluster's traffic stats on first use, as `sluice bootstrap` has it, unless
`--eager-stats` (Envoy's default). Everything runs on loopback with free ports, and only the
processes it started are stopped.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
_spec = importlib.util.spec_from_file_location("bench_latency", os.path.join(HERE, "bench-latency.py"))
latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(latency)

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = "envoy.filters.network.http_connection_manager"


def served_config(manifests, http_port, internal_port):
    """What `sluice serve` serves for these manifests, from its `/debug/config`."""
    admin = latency.free_port()
    proc = subprocess.Popen(
        [latency.SLUICE, "serve", "--dir", manifests, "--xds-addr", f"127.0.0.1:{latency.free_port()}",
         "--admin-addr", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1",
         "--http-port", str(http_port), "--internal-http-port", str(internal_port),
         "--https-port", str(latency.free_port()),
         "--internal-https-port", str(latency.free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("sluice did not get ready within 120 s")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/config", timeout=120) as r:
            return json.load(r)
    finally:
        proc.kill()
        proc.wait()


def resources(section):
    return [entry["resource"] for entry in section.values()]


def static_clusters(config):
    """The served clusters, each with its endpoints inline instead of from EDS."""
    endpoints = config["shared"]["EDS"]
    clusters = []
    for cluster in resources(config["shared"]["CDS"]):
        cluster = dict(cluster)
        if cluster.get("type") == "EDS":
            cluster.pop("eds_cluster_config", None)
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = endpoints[cluster["name"]]["resource"]
        clusters.append({"@type": CLUSTER_TYPE, **cluster})
    return clusters


def inline_listeners(config):
    """The served listeners (an Envoy without a role gets both), each HTTP connection manager
    with one inline route table of the virtual hosts its scopes select."""
    group = config["groups"]["All"]
    routes = config["shared"]["RDS"]
    by_listener = {}
    for scope in resources(group["SRDS"]):
        # The scope key's fragments: the host, then the listener's kind.
        listener = scope["key"]["fragments"][1]["string_key"]
        by_listener.setdefault(listener, []).append(routes[scope["route_configuration_name"]]["resource"])
    listeners = []
    for listener in resources(group["LDS"]):
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                if network_filter["name"] != HCM:
                    continue
                hcm = network_filter["typed_config"]
                scoped = hcm.pop("scoped_routes", None)
                if scoped is None:
                    continue
                # The scope key is the host, then the header naming the listener's kind, which
                # the listener's early header mutation sets.
                header = scoped["scope_key_builder"]["fragments"][1]["header_value_extractor"]["name"]
                tables = sorted(by_listener.get(listener_kind_of(hcm, header), []),
                                key=lambda t: t["name"])
                hcm["route_config"] = {
                    "name": listener["name"],
                    "virtual_hosts": [vh for table in tables for vh in table.get("virtual_hosts", [])],
                    "request_headers_to_remove": [header],
                }
        listeners.append({"@type": LISTENER_TYPE, **listener})
    return listeners


def listener_kind_of(hcm, header):
    """The value a listener's early header mutation gives the scope's listener header."""
    for extension in hcm.get("early_header_mutation_extensions", []):
        for mutation in extension["typed_config"].get("mutations", []):
            added = mutation.get("append", {}).get("header", {})
            if added.get("key") == header:
                return added["value"]
    sys.exit(f"a listener's connection manager sets no {header} header: the scopes cannot be matched")


def bootstrap(work, envoy_admin, eager_stats):
    paths = {}
    for name in ("cds", "lds"):
        paths[name] = os.path.join(work, f"{name}.json")
    config = {
        "node": {"id": "bench-files", "cluster": "sluice"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": envoy_admin}}},
        "dynamic_resources": {
            name + "_config": {"path_config_source": {"path": path}, "resource_api_version": "V3"}
            for name, path in paths.items()
        },
    }
    if not eager_stats:
        config["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
    return config, paths


def run(size, eager_stats):
    procs = []
    try:
        with tempfile.TemporaryDirectory() as work:
            manifests, _backend_port = latency.write_world(work, size, procs)
            http_port, internal_port = latency.free_port(), latency.free_port()
            config = served_config(manifests, http_port, internal_port)
            envoy_admin = latency.free_port()
            boot, paths = bootstrap(work, envoy_admin, eager_stats)
            for name, content in (("cds", static_clusters(config)), ("lds", inline_listeners(config))):
                with open(paths[name], "w") as f:
                    json.dump({"resources": content}, f)
            boot_path = os.path.join(work, "envoy.json")
            with open(boot_path, "w") as f:
                json.dump(boot, f)
            envoy_log = open(os.path.join(work, "envoy.log"), "w")
            procs.append(subprocess.Popen(
                [latency.ENVOY, "-c", boot_path, "--disable-hot-restart", "--log-level", "warn"],
                stdout=envoy_log, stderr=envoy_log))
            started = time.monotonic()
            last = f"svc-{size - 1}.default.example.com"
            if not latency.wait_200(http_port, last, 120):
                sys.exit(f"size {size}: Envoy did not serve {last} from files within 120 s")
            startup = time.monotonic() - started
            envoy = procs[-1].pid
            return startup, latency.cpu_seconds(envoy), latency.envoy_allocated(envoy_admin), latency.rss(envoy)
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000")
    parser.add_argument("--eager-stats", action="store_true")
    args = parser.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--bin", "sluice",
                           "--example", "backend"], cwd=latency.ROOT)
    stats = "eager" if args.eager_stats else "on first use"
    print("| ingresses | Envoy's traffic stats | Envoy start to all served, from files | Envoy CPU until then "
          "| Envoy allocated | Envoy RSS |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        startup, cpu, allocated, rss = run(size, args.eager_stats)
        print(f"| {size} | {stats} | {startup:.2f} s | {cpu:.2f} s | {allocated:.0f} MiB | {rss:.0f} MiB |",
              flush=True)


if __name__ == "__main__":
    main()
