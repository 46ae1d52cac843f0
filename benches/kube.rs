//! Kubernetes mode at 1, 1,000 and 5,000 ingresses in a real API server: start to all served, an
//! API write (creating an Ingress) to the first 200 through Envoy and to `Ready=True` in its
//! status, sluice's RSS, and status writes per change.
//!
//! `cargo bench --bench kube -- [--sizes 1,1000,5000] [--rounds 20] [--delta]`
//!
//! Like the Kubernetes-mode tests it re-runs itself in network and PID namespaces of its own
//! (root, `unshare`, `ip`), where the API server, sluice (the release build), Envoy and the
//! backend share the address 10.255.0.1; nothing leaves the namespace.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use sluice::knative::IngressResource;

use support::cluster::{Applier, Cluster, TEST_ADDRESS};
use support::manifests::{self, SERVICE_PORT};
use support::{Backend, Stack, StackOptions, client, poll_until};

const INSIDE: &str = "SLUICE_KUBE_BENCH_NAMESPACE";
const NAMESPACE: &str = "bench";

struct Options {
    sizes: Vec<usize>,
    rounds: usize,
    delta: bool,
}

fn options() -> Options {
    let mut options = Options {
        sizes: vec![1, 1000, 5000],
        rounds: 20,
        delta: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                options.sizes = args
                    .next()
                    .expect("--sizes N,N,...")
                    .split(',')
                    .map(|n| n.parse().expect("a size"))
                    .collect();
            }
            "--rounds" => options.rounds = args.next().expect("--rounds N").parse().unwrap(),
            "--delta" => options.delta = true,
            // cargo bench passes --bench.
            _ => {}
        }
    }
    options
}

/// Ingress `name` (host `<name>.bench.example.com`) with its own Service and EndpointSlice.
fn objects(name: &str, backend: &Backend) -> [Value; 3] {
    [
        manifests::service(name, NAMESPACE, "http", SERVICE_PORT, backend.port()),
        manifests::endpoint_slice_at(
            name,
            &format!("{name}-1"),
            NAMESPACE,
            "http",
            &TEST_ADDRESS.to_string(),
            backend.port(),
        ),
        manifests::Ingress::new(NAMESPACE, name)
            .rule(
                manifests::Rule::external(&[&host(name)]).path(manifests::HttpPath::new().split(
                    manifests::Split::new(NAMESPACE, name, SERVICE_PORT)
                        .append_header("Knative-Serving-Revision", name),
                )),
            )
            .to_value(),
    ]
}

fn host(name: &str) -> String {
    format!("{name}.bench.example.com")
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn status_writes(stack: &Stack) -> u64 {
    let metrics = stack.sluice.admin_get("/metrics").await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice_status_writes_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("sluice_status_writes_total")
}

async fn served(stack: &Stack, host: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(response) = client::get(stack.http_addr(), host, "/", &[]).await
            && response.status == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

struct Row {
    startup: Duration,
    rss: f64,
    to_200: Vec<f64>,
    to_ready: Vec<f64>,
    writes_per_change: f64,
}

async fn run(size: usize, rounds: usize, delta: bool) -> Row {
    let cluster = Cluster::start().await;
    let applier = Applier::new(cluster.client().await).await;
    applier
        .apply(&[serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})])
        .await;
    let listener =
        std::net::TcpListener::bind((TEST_ADDRESS, 0)).expect("bind the backend");
    let backend = Backend::start_on("backend", listener);
    let names: Vec<String> = (0..size).map(|i| format!("svc-{i}")).collect();
    futures::stream::iter(names.iter())
        .for_each_concurrent(32, |name| {
            let objects = objects(name, &backend);
            let applier = &applier;
            async move { applier.apply(&objects).await }
        })
        .await;

    let started = Instant::now();
    let sluice = support::Sluice::start_in_cluster(
        &cluster.kubeconfig,
        &["--namespace", NAMESPACE, "--system-namespace", NAMESPACE],
    );
    let stack = Stack::start_on(
        sluice,
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    let last = host(names.last().expect("at least one ingress"));
    assert!(
        served(&stack, &last, Duration::from_secs(300)).await,
        "{last} was not served within 300 s"
    );
    let startup = started.elapsed();
    // Let the initial status writes finish before measuring changes.
    let ingresses: Api<IngressResource> = Api::namespaced(applier.client().clone(), NAMESPACE);
    poll_until(Duration::from_secs(600), async || {
        let list = ingresses.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .all(ready)
            .then_some(())
    })
    .await
    .expect("every ingress Ready in its status");
    let rss = rss_mib(stack.sluice.pid());

    let writes_before = status_writes(&stack).await;
    let mut to_200 = Vec::new();
    let mut to_ready = Vec::new();
    for round in 0..rounds {
        let name = format!("new-{round}");
        let [service, slice, ingress] = objects(&name, &backend);
        applier.apply(&[service, slice]).await;
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(ingresses.clone(), config).boxed();
        // The watch is established once its (empty) initial list is done.
        while let Some(event) = events.next().await {
            if matches!(event, Ok(Event::InitDone)) {
                break;
            }
        }
        let begin = Instant::now();
        applier.apply(&[ingress]).await;
        assert!(
            served(&stack, &host(&name), Duration::from_secs(30)).await,
            "{name} was not served within 30 s"
        );
        to_200.push(begin.elapsed().as_secs_f64() * 1000.0);
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(ingress)) = event
                && ready(&ingress)
            {
                break;
            }
        }
        to_ready.push(begin.elapsed().as_secs_f64() * 1000.0);
    }
    let writes = status_writes(&stack).await - writes_before;
    to_200.sort_by(f64::total_cmp);
    to_ready.sort_by(f64::total_cmp);
    drop(stack);
    cluster.stop();
    Row {
        startup,
        rss,
        to_200,
        to_ready,
        writes_per_change: writes as f64 / rounds as f64,
    }
}

fn ready(ingress: &IngressResource) -> bool {
    ingress.status.as_ref().is_some_and(|status| {
        status.observed_generation == ingress.metadata.generation
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn main() -> ExitCode {
    if std::env::var_os(INSIDE).is_none() {
        let exe = std::env::current_exe().expect("the bench binary's path");
        let setup = format!(
            "ip link set lo up && ip addr add {TEST_ADDRESS}/32 dev lo && exec \"$0\" \"$@\""
        );
        let status = Command::new("unshare")
            .args(["--net", "--pid", "--fork", "--kill-child", "sh", "-c", &setup])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(INSIDE, "1")
            .status()
            .expect("run unshare (root, util-linux and iproute2 are needed)");
        return if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let mode = if options.delta { "delta" } else { "SotW" };
    println!(
        "| ingresses | mode | start to all served | sluice RSS | create → first 200 p50 | p90 | create → Ready=True in status p50 | p90 | status writes per change |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for size in options.sizes {
        let row = runtime.block_on(run(size, options.rounds, options.delta));
        println!(
            "| {size} | {mode} | {:.2} s | {:.0} MiB | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} |",
            row.startup.as_secs_f64(),
            row.rss,
            percentile(&row.to_200, 0.5),
            percentile(&row.to_200, 0.9),
            percentile(&row.to_ready, 0.5),
            percentile(&row.to_ready, 0.9),
            row.writes_per_change,
        );
    }
    ExitCode::SUCCESS
}
