//! Envoys are grouped by `node.metadata.role`, as Gloo ran Knative: one control plane, an
//! external proxy that only has the external listener and an internal proxy that only has the
//! internal one. Both modes; real Envoys, real requests.

#[macro_use]
mod support;

use std::time::Duration;

use support::client;
use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::{Backend, Envoy, ManifestDir, Sluice};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);

async fn status(addr: std::net::SocketAddr, host: &str) -> u16 {
    client::get(addr, host, "/", &[])
        .await
        .map(|response| response.status)
        .unwrap_or_else(|error| panic!("no response from {addr} for {host}: {error}"))
}

async fn listeners(envoy: &Envoy) -> String {
    envoy.admin_get("/listeners").await.body
}

async fn two_proxies_split_by_role(delta: bool) {
    let backend = Backend::start("hello").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("hello", NS, backend.port(), "http"),
    );
    let split = || Split::new(NS, "hello", SERVICE_PORT);
    let ingress = Ingress::new(NS, "hello")
        .rule(Rule::external(&["hello.example.com"]).path(HttpPath::new().split(split())))
        .rule(
            Rule::cluster_local(&["hello.default.svc.cluster.local"])
                .path(HttpPath::new().split(split())),
        );
    dir.write("ingress.yaml", &ingress.to_yaml());

    let sluice = Sluice::start(dir.path());
    sluice.wait_ready().await;
    let external = Envoy::start(&sluice.bootstrap(
        "external-1",
        Some("gloo-system~knative-external-proxy"),
        delta,
    ));
    let internal = Envoy::start(&sluice.bootstrap(
        "internal-1",
        Some("gloo-system~knative-internal-proxy"),
        delta,
    ));
    external.wait_ready().await;
    internal.wait_ready().await;
    sluice
        .wait_ingress_ready(NS, "hello", "True", CONVERGE)
        .await;

    let external_listeners = listeners(&external).await;
    assert!(
        external_listeners.contains("external-http")
            && !external_listeners.contains("internal-http"),
        "the external proxy must hold only the external listener: {external_listeners}"
    );
    let internal_listeners = listeners(&internal).await;
    assert!(
        internal_listeners.contains("internal-http")
            && !internal_listeners.contains("external-http"),
        "the internal proxy must hold only the internal listener: {internal_listeners}"
    );

    assert_eq!(status(sluice.http_addr(), "hello.example.com").await, 200);
    assert_eq!(
        status(sluice.http_addr(), "hello.default.svc.cluster.local").await,
        404,
        "a ClusterLocal host is not served by the external proxy"
    );
    assert_eq!(
        status(sluice.internal_http_addr(), "hello.example.com").await,
        200
    );
    assert_eq!(
        status(
            sluice.internal_http_addr(),
            "hello.default.svc.cluster.local"
        )
        .await,
        200
    );

    let proxies: serde_json::Value = sluice.admin_get("/debug/proxies").await.json();
    let groups: Vec<(&str, &str)> = proxies
        .as_array()
        .expect("/debug/proxies is a list")
        .iter()
        .map(|p| (p["node_id"].as_str().unwrap(), p["group"].as_str().unwrap()))
        .collect();
    assert!(
        groups.contains(&("external-1", "External"))
            && groups.contains(&("internal-1", "Internal")),
        "{proxies}"
    );
}

in_both_modes!(two_proxies_split_by_role);
