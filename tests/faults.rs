//! Faults: sluice killed or stopped and restarted under traffic, changes made while it was down,
//! Envoy restarted. Throughout, a client loops requests for several hosts through both of
//! Envoy's listeners and every one of them must come back `200` from the right backend.
//! Each test runs in SotW and in delta.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::client;
use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::restart::{
    SluiceUp, Stop, envoy_stats, stop_envoy, stop_sluice, sum_of, wait_envoy_connected,
    wait_proxy_synced,
};
use support::sluice::SluicePorts;
use support::traffic::{Failure, Target, Traffic};
use support::{
    Backend, Envoy, ManifestDir, Sluice, Stack, StackOptions, local, poll_until, secs,
    wait_for_async,
};

const NS: &str = "default";
/// How long a change may take to reach Envoy, or Envoy to reconnect.
const CONVERGE: Duration = Duration::from_secs(20);
const MOVING: &str = "moving.example.com";
const MOVING_LOCAL: &str = "moving.default.svc.cluster.local";
const STEADY: &str = "steady.example.com";
const LATE: &str = "late.example.com";
/// Every xDS type sluice serves, as `/debug/proxies` names them.
const TYPES: [&str; 5] = ["CDS", "EDS", "LDS", "SRDS", "RDS"];

/// The backends, manifests and running stack of one test.
struct Fixture {
    backends: BTreeMap<&'static str, Backend>,
    dir: ManifestDir,
    stack: Stack,
    node_id: String,
    delta: bool,
}

fn split_to(service: &str) -> HttpPath {
    HttpPath::new().split(Split::new(NS, service, SERVICE_PORT))
}

/// `moving` serves an external and a ClusterLocal host from `service`.
fn moving_ingress(service: &str) -> Ingress {
    Ingress::new(NS, "moving")
        .rule(Rule::external(&[MOVING]).path(split_to(service)))
        .rule(Rule::cluster_local(&[MOVING_LOCAL]).path(split_to(service)))
}

impl Fixture {
    /// Backends `alpha`, `beta`, `gamma` and `gamma-2`, a Service for each of the first three,
    /// ingress `moving` (two hosts) to `alpha` and ingress `steady` to `gamma`; sluice and an
    /// Envoy serving them.
    async fn start(delta: bool, test: &str) -> Fixture {
        let mut backends = BTreeMap::new();
        for name in ["alpha", "beta", "gamma", "gamma-2"] {
            backends.insert(name, Backend::start(name).await);
        }
        let dir = ManifestDir::new();
        for name in ["alpha", "beta", "gamma"] {
            dir.write(
                &format!("svc-{name}.yaml"),
                &manifests::service_for(name, NS, backends[name].port(), "http"),
            );
        }
        dir.write("ing-moving.yaml", &moving_ingress("alpha").to_yaml());
        dir.write(
            "ing-steady.yaml",
            &manifests::ingress(NS, "steady", STEADY, "gamma", SERVICE_PORT),
        );
        let node_id = format!("faults-{test}-{}", if delta { "delta" } else { "sotw" });
        let stack = Stack::start_with(
            dir.path(),
            StackOptions {
                delta,
                node_id: Some(node_id.clone()),
                ..StackOptions::default()
            },
        )
        .await;
        let fixture = Fixture {
            backends,
            dir,
            stack,
            node_id,
            delta,
        };
        for target in fixture.targets() {
            fixture.wait_served(&target).await;
        }
        assert!(
            wait_proxy_synced(&fixture.stack.sluice, &fixture.node_id, &TYPES, CONVERGE).await,
            "Envoy not in sync within {CONVERGE:?}"
        );
        fixture
    }

    /// What the client asks for: both hosts on the external listener, all three on the
    /// internal one (it serves external hosts too).
    fn targets(&self) -> Vec<Target> {
        let external = self.stack.http_addr();
        let internal = self.stack.internal_http_addr();
        vec![
            Target::new(external, MOVING, &["alpha"]),
            Target::new(external, STEADY, &["gamma"]),
            Target::new(internal, MOVING_LOCAL, &["alpha"]),
            Target::new(internal, MOVING, &["alpha"]),
            Target::new(internal, STEADY, &["gamma"]),
        ]
    }

    async fn wait_served(&self, target: &Target) {
        self.stack
            .get_until(target.addr, &target.host, "/", CONVERGE, |r| {
                r.status == 200
                    && r.backend()
                        .is_some_and(|b| target.backends.contains(&b.into()))
            })
            .await;
    }

    fn ports(&self) -> SluicePorts {
        self.stack.sluice.ports()
    }

    /// Stops sluice with `how`; returns its exit status.
    async fn stop_sluice(&self, how: Stop) -> std::process::ExitStatus {
        stop_sluice(&self.stack.sluice, how).await
    }

    /// Starts sluice again on the same ports and directory, and waits until it is ready and
    /// the Envoy has reconnected and holds everything it asked for.
    async fn restart_sluice(&mut self) {
        self.stack.sluice = Sluice::start_on(self.dir.path(), self.ports(), &[]);
        self.stack.sluice.wait_ready().await;
        assert!(
            wait_envoy_connected(&self.stack.envoy, CONVERGE).await,
            "Envoy did not reconnect within {CONVERGE:?}"
        );
        assert!(
            wait_proxy_synced(&self.stack.sluice, &self.node_id, &TYPES, CONVERGE).await,
            "Envoy did not get back in sync within {CONVERGE:?}: {}",
            self.stack.sluice.admin_get("/debug/proxies").await.body
        );
    }

    async fn stats(&self) -> BTreeMap<String, u64> {
        envoy_stats(&self.stack.envoy).await
    }
}

fn assert_no_failures(requests: usize, failures: &[Failure]) {
    let shown: Vec<String> = failures
        .iter()
        .take(20)
        .map(|f| format!("{}: {}", f.target, f.outcome))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed; the first ones:\n{}",
        failures.len(),
        shown.join("\n")
    );
}

/// Envoy's counters of accepted and rejected xDS responses. Every subscription counts each
/// response it accepts in its `update_success`, even one identical to what it holds, and each
/// it rejects in its `update_rejected`: `cluster_manager.cds.*` (CDS),
/// `listener_manager.lds.*` (LDS), `cluster.<name>.*` (the EDS of each cluster),
/// `http.<listener>.scoped_rds.sluice.*` (SRDS) and `http.<listener>.rds.<route>.*` (each
/// route configuration). Unchanged sums across a reconnect prove that no response of any type
/// reached Envoy: nothing was re-sent, with a new version or the same (the `version` gauges
/// would miss a re-send of the same version).
fn xds_updates(stats: &BTreeMap<String, u64>) -> (u64, u64) {
    (
        sum_of(stats, ".update_success"),
        sum_of(stats, ".update_rejected"),
    )
}

/// Requests for a route whose cluster Envoy does not have (`no_cluster`, one per router).
fn no_cluster(stats: &BTreeMap<String, u64>) -> u64 {
    sum_of(stats, ".no_cluster")
}

async fn restarts_resend_nothing(delta: bool) {
    let mut fixture = Fixture::start(delta, "restarts").await;
    let traffic = Traffic::start(fixture.targets());
    traffic.wait_requests(20, CONVERGE).await;
    let baseline = xds_updates(&fixture.stats().await);
    for round in 0..10 {
        let how = if round % 2 == 0 {
            Stop::Term
        } else {
            Stop::Kill
        };
        let status = fixture.stop_sluice(how).await;
        if how == Stop::Term {
            assert!(
                status.success(),
                "SIGTERM must stop sluice cleanly, got {status}"
            );
        }
        traffic.wait_requests(5, CONVERGE).await;
        fixture.restart_sluice().await;
        traffic.wait_requests(10, CONVERGE).await;
        // Read while this sluice still runs, after the reconnect and some traffic: whatever it
        // sent by now is counted, and the next round's read counts the rest.
        assert_eq!(
            xds_updates(&fixture.stats().await),
            baseline,
            "round {round} ({how:?}): Envoy got xDS updates though nothing changed"
        );
    }
    traffic.wait_requests(50, CONVERGE).await;
    let (requests, failures) = traffic.stop().await;
    assert_no_failures(requests, &failures);
    let stats = fixture.stats().await;
    assert_eq!(
        xds_updates(&stats),
        baseline,
        "an update after the last restart"
    );
    assert_eq!(no_cluster(&stats), 0);
}

async fn a_split_moved_while_down_drops_nothing(delta: bool) {
    let mut fixture = Fixture::start(delta, "moved").await;
    let traffic = Traffic::start(fixture.targets());
    traffic.wait_requests(20, CONVERGE).await;
    let services = ["beta", "alpha", "beta"];
    let mut serving = "alpha";
    for (round, service) in services.into_iter().enumerate() {
        let how = if round % 2 == 0 {
            Stop::Kill
        } else {
            Stop::Term
        };
        fixture.stop_sluice(how).await;
        fixture
            .dir
            .write("ing-moving.yaml", &moving_ingress(service).to_yaml());
        traffic.accept(MOVING, &[serving, service]);
        traffic.accept(MOVING_LOCAL, &[serving, service]);
        fixture.restart_sluice().await;
        for host in [MOVING, MOVING_LOCAL] {
            assert!(
                traffic.wait_served_by(host, service, CONVERGE).await,
                "round {round}: {host} not served by {service} within {CONVERGE:?}"
            );
            traffic.accept(host, &[service]);
        }
        serving = service;
    }
    traffic.wait_requests(20, CONVERGE).await;
    let (requests, failures) = traffic.stop().await;
    let stats = fixture.stats().await;
    assert_no_failures(requests, &failures);
    assert_eq!(no_cluster(&stats), 0, "requests found no cluster");
}

async fn a_change_made_while_down_is_served(delta: bool) {
    let mut fixture = Fixture::start(delta, "while-down").await;
    let traffic = Traffic::start(fixture.targets());
    traffic.wait_requests(20, CONVERGE).await;
    fixture.stop_sluice(Stop::Kill).await;
    // A new host, and new endpoints for an existing service.
    fixture.dir.write(
        "ing-late.yaml",
        &manifests::ingress(NS, "late", LATE, "beta", SERVICE_PORT),
    );
    fixture.dir.write(
        "svc-gamma.yaml",
        &manifests::service_for("gamma", NS, fixture.backends["gamma-2"].port(), "http"),
    );
    traffic.accept(STEADY, &["gamma", "gamma-2"]);
    fixture.restart_sluice().await;
    assert!(
        traffic.wait_served_by(STEADY, "gamma-2", CONVERGE).await,
        "the new endpoints of gamma are not served"
    );
    traffic.accept(STEADY, &["gamma-2"]);
    for addr in [
        fixture.stack.http_addr(),
        fixture.stack.internal_http_addr(),
    ] {
        fixture
            .wait_served(&Target::new(addr, LATE, &["beta"]))
            .await;
    }
    traffic.wait_requests(20, CONVERGE).await;
    let (requests, failures) = traffic.stop().await;
    assert_no_failures(requests, &failures);
}

async fn a_restarted_envoy_gets_everything(delta: bool) {
    let mut fixture = Fixture::start(delta, "envoy-restart").await;
    stop_envoy(&fixture.stack.envoy, Stop::Kill).await;
    let bootstrap = fixture
        .stack
        .sluice
        .bootstrap(&fixture.node_id, None, fixture.delta);
    fixture.stack.envoy = Envoy::start(&bootstrap);
    fixture.stack.envoy.wait_ready_within(CONVERGE).await;
    for target in fixture.targets() {
        fixture.wait_served(&target).await;
    }
    let traffic = Traffic::start(fixture.targets());
    traffic.wait_requests(50, CONVERGE).await;
    let (requests, failures) = traffic.stop().await;
    assert_no_failures(requests, &failures);
    assert!(
        wait_proxy_synced(&fixture.stack.sluice, &fixture.node_id, &TYPES, secs(5)).await,
        "the new Envoy is not in sync"
    );
}

async fn sluice_up_stops_cleanly_on_sigterm(delta: bool) {
    let backend = Backend::start("alpha").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc-alpha.yaml",
        &manifests::service_for("alpha", NS, backend.port(), "http"),
    );
    dir.write(
        "ing-up.yaml",
        &manifests::ingress(NS, "up", "up.example.com", "alpha", SERVICE_PORT),
    );
    let mut up = SluiceUp::start(dir.path(), delta);
    let http = local(up.ports().http);
    let served = poll_until(CONVERGE, async || {
        let response = client::get(http, "up.example.com", "/", &[]).await.ok()?;
        (response.status == 200 && response.backend() == Some("alpha")).then_some(())
    })
    .await;
    assert!(
        served.is_some(),
        "`sluice up` did not serve within {CONVERGE:?}:\n{}",
        up.logs()
    );
    let status = up.stop(Stop::Term).await;
    let envoy = up.envoy_admin_addr();
    let envoy_gone = wait_for_async(secs(10), async || {
        client::get(envoy, "localhost", "/ready", &[])
            .await
            .is_err()
    })
    .await;
    if !envoy_gone {
        // Not left behind even when the test fails.
        let _ = client::send(
            envoy,
            client::Proto::Http1,
            "POST",
            "localhost",
            "/quitquitquit",
            &[],
            Default::default(),
        )
        .await;
    }
    assert!(
        status.success(),
        "SIGTERM must stop `sluice up` cleanly, got {status}:\n{}",
        up.logs()
    );
    assert!(envoy_gone, "`sluice up` left its Envoy running");
}

in_both_modes!(
    restarts_resend_nothing,
    a_split_moved_while_down_drops_nothing,
    a_change_made_while_down_is_served,
    a_restarted_envoy_gets_everything,
    sluice_up_stops_cleanly_on_sigterm,
);
