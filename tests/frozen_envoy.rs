//! A frozen Envoy (SIGSTOP) holds no one up: while it sleeps, another Envoy of the same sluice
//! gets 20 updates, each served as it comes; woken (SIGCONT), the frozen one gets exactly the
//! latest state, not the ones in between. Nor does a client that stalls in its first sync hold
//! up the Envoys waiting for a turn at theirs, and a client whose request cannot be decoded is
//! told so and costs the others nothing. Both modes, real Envoys.
//!
//! A stream's task sends through a bounded channel and computes its responses from the latest
//! snapshot only, so a frozen Envoy costs sluice one stream's few buffered responses, whatever
//! happens meanwhile.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::StreamExt;
use sluice::xds::TypeUrl;

use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::{Backend, Envoy, ManifestDir, Sluice, client, poll_until};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);
const UPDATES: usize = 20;

fn ingress(n: usize) -> String {
    Ingress::new(NS, "web")
        .rule(
            Rule::external(&[&host(n)]).path(HttpPath::new().split(Split::new(
                NS,
                "web",
                SERVICE_PORT,
            ))),
        )
        .to_yaml()
}

fn host(n: usize) -> String {
    format!("web-{n}.example.com")
}

async fn status(addr: SocketAddr, host: &str) -> Option<u16> {
    client::get(addr, host, "/", &[])
        .await
        .ok()
        .map(|r| r.status)
}

async fn wait_status(addr: SocketAddr, host: &str, expected: u16) {
    let reached = poll_until(CONVERGE, async || {
        (status(addr, host).await == Some(expected)).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "{host} via {addr} never answered {expected}"
    );
}

fn signal(envoy: &Envoy, signal: &str) {
    let done = std::process::Command::new("kill")
        .args([signal, &envoy.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(done.success(), "kill {signal} failed");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A sluice serving ingress 0 of the backend "web", ready.
async fn serving_web(args: &[&str]) -> (Backend, ManifestDir, Sluice) {
    let backend = Backend::start("web").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("web", NS, backend.port(), "http"),
    );
    dir.write("web.yaml", &ingress(0));
    let sluice = Sluice::start_with(dir.path(), args);
    sluice.wait_ready().await;
    (backend, dir, sluice)
}

async fn a_frozen_envoy_delays_no_one_and_wakes_to_the_latest(delta: bool) {
    let (_backend, dir, sluice) = serving_web(&[]).await;
    // The roles give each Envoy its own listeners (so they do not share ports); an external
    // host is served on both.
    let active = Envoy::start(&sluice.bootstrap(
        "active",
        Some("gloo-system~knative-external-proxy"),
        delta,
    ));
    let frozen = Envoy::start(&sluice.bootstrap(
        "frozen",
        Some("gloo-system~knative-internal-proxy"),
        delta,
    ));
    active.wait_ready().await;
    frozen.wait_ready().await;
    wait_status(sluice.http_addr(), &host(0), 200).await;
    wait_status(sluice.internal_http_addr(), &host(0), 200).await;

    signal(&frozen, "-STOP");
    let rss_before = rss_kib(sluice.pid());
    let mut took = Vec::new();
    for n in 1..=UPDATES {
        let started = Instant::now();
        dir.write("web.yaml", &ingress(n));
        wait_status(sluice.http_addr(), &host(n), 200).await;
        took.push(started.elapsed());
        wait_status(sluice.http_addr(), &host(n - 1), 404).await;
    }
    took.sort();
    eprintln!(
        "the active Envoy served each of {UPDATES} updates after {:?} (median), {:?} (max); \
         sluice's RSS {} KiB before, {} KiB after",
        took[UPDATES / 2],
        took[UPDATES - 1],
        rss_before,
        rss_kib(sluice.pid())
    );

    signal(&frozen, "-CONT");
    wait_status(sluice.internal_http_addr(), &host(UPDATES), 200).await;
    for n in [0, 1, UPDATES / 2, UPDATES - 1] {
        wait_status(sluice.internal_http_addr(), &host(n), 404).await;
    }
    // Both settled, on the same versions of what they share.
    let settled = poll_until(CONVERGE, async || {
        let proxies = sluice.admin_get("/debug/proxies").await.json();
        let proxies = proxies.as_array()?.clone();
        let synced = proxies.len() == 2
            && proxies.iter().all(|p| {
                p["types"]
                    .as_object()
                    .is_some_and(|types| types.values().all(|t| t["sync"] == "SYNCED"))
            });
        synced.then_some(proxies)
    })
    .await
    .expect("both Envoys settle with everything ACKed");
    for shared in ["CDS", "EDS", "RDS"] {
        assert_eq!(
            settled[0]["types"][shared]["acked_version"],
            settled[1]["types"][shared]["acked_version"],
            "{shared}: {settled:?}"
        );
    }
}

/// An ADS client that asks for every cluster, takes the answer and never ACKs it, nor asks for
/// anything else: an Envoy stalled in its first sync. Returns once the answer is in; the stream
/// stays open until the task is aborted.
async fn stall_in_first_sync(xds: SocketAddr, delta: bool) -> tokio::task::JoinHandle<()> {
    let (answered, got_answer) = tokio::sync::oneshot::channel();
    let stalled = tokio::spawn(async move {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .expect("connect to sluice's xDS port");
        let node = Some(Node {
            id: "stalled".to_owned(),
            ..Default::default()
        });
        let type_url = TypeUrl::Cluster.as_str().to_owned();
        // The response stream is kept, not read: the request stream stays open with it.
        let (clusters, _open): (usize, Box<dyn Send>) = if delta {
            let request = DeltaDiscoveryRequest {
                node,
                type_url,
                ..Default::default()
            };
            let requests = futures::stream::iter([request]).chain(futures::stream::pending());
            let mut responses = client
                .delta_aggregated_resources(requests)
                .await
                .expect("a delta stream")
                .into_inner();
            let answer = responses.message().await.expect("an answer");
            (answer.map_or(0, |a| a.resources.len()), Box::new(responses))
        } else {
            let request = DiscoveryRequest {
                node,
                type_url,
                ..Default::default()
            };
            let requests = futures::stream::iter([request]).chain(futures::stream::pending());
            let mut responses = client
                .stream_aggregated_resources(requests)
                .await
                .expect("a SotW stream")
                .into_inner();
            let answer = responses.message().await.expect("an answer");
            (answer.map_or(0, |a| a.resources.len()), Box::new(responses))
        };
        assert!(clusters > 0, "clusters sent");
        let _ = answered.send(());
        std::future::pending::<()>().await;
    });
    got_answer
        .await
        .expect("the stalled client got its clusters");
    stalled
}

async fn a_client_stalled_in_its_first_sync_gives_its_turn_up(delta: bool) {
    // One first sync at a time: the stalled client holds the only turn.
    let (_backend, _dir, sluice) = serving_web(&["--concurrent-syncs", "1"]).await;
    let stalled = stall_in_first_sync(sluice.xds_addr(), delta).await;

    let envoy = Envoy::start(&sluice.bootstrap(
        "waiting",
        Some("gloo-system~knative-external-proxy"),
        delta,
    ));
    envoy.wait_ready().await;
    wait_status(sluice.http_addr(), &host(0), 200).await;
    let proxies = sluice.admin_get("/debug/proxies").await.json();
    let nodes: Vec<&str> = proxies
        .as_array()
        .expect("a list of proxies")
        .iter()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    assert!(
        nodes.contains(&"stalled") && nodes.contains(&"waiting"),
        "the stalled client stays connected beside the served Envoy: {proxies}"
    );
    stalled.abort();
}

/// A request whose field 1 (DiscoveryRequest's `version_info`, DeltaDiscoveryRequest's `node`,
/// both length-delimited) comes as a number: no xDS request decodes from it.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbled {
    #[prost(uint64, tag = "1")]
    field_one: u64,
}

async fn an_undecodable_request_is_refused_as_invalid(delta: bool) {
    let (_backend, _dir, sluice) = serving_web(&[]).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sluice.xds_addr()))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connect to sluice's xDS port");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("a ready channel");
    let method = if delta {
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    } else {
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    };
    let requests =
        futures::stream::iter([Garbled { field_one: 7 }]).chain(futures::stream::pending());
    let answer = tokio::time::timeout(CONVERGE, async {
        let mut responses = client
            .streaming(
                tonic::Request::new(requests),
                tonic::codegen::http::uri::PathAndQuery::from_static(method),
                tonic_prost::ProstCodec::<Garbled, Garbled>::default(),
            )
            .await?
            .into_inner();
        responses.message().await
    })
    .await
    .expect("sluice answers an undecodable request");
    let status = answer.expect_err("the stream fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("decoding an xDS request"),
        "the status says what failed: {status:?}"
    );

    let envoy =
        Envoy::start(&sluice.bootstrap("after", Some("gloo-system~knative-external-proxy"), delta));
    envoy.wait_ready().await;
    wait_status(sluice.http_addr(), &host(0), 200).await;
}

in_both_modes!(
    a_frozen_envoy_delays_no_one_and_wakes_to_the_latest,
    a_client_stalled_in_its_first_sync_gives_its_turn_up,
    an_undecodable_request_is_refused_as_invalid
);
