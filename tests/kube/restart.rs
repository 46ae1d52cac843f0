//! The API server restarts, and sluice is cut off from it meanwhile, while a client loops
//! requests through Envoy: nothing fails, nothing is served empty, and what changed meanwhile
//! is served once sluice is back.

use std::time::Duration;

use crate::kit::{self, Scene, TrafficLoop, signal};
use crate::support::Stack;
use crate::support::cluster::Cluster;
use crate::support::manifests::{HttpPath, Ingress, Rule, SERVICE_PORT, Split};

pub async fn api_server(_shared: &'static Cluster, delta: bool) {
    // This test restarts the API server, so it gets one of its own.
    let cluster = Cluster::start().await;
    let scene = Scene::new(&cluster, "restart").await;
    let external = kit::backend("external");
    let internal = kit::backend("internal");
    scene
        .apply(&scene.service("external", external.addr()))
        .await;
    scene
        .apply(&scene.service("internal", internal.addr()))
        .await;
    let local = Ingress::new(&scene.ns, "local").rule(
        Rule::cluster_local(&["local.restart.svc.cluster.local"])
            .path(HttpPath::new().split(Split::new(&scene.ns, "internal", SERVICE_PORT))),
    );
    let doomed = scene.ingress("doomed", "doomed.example.com", "external");
    scene
        .apply(&[
            scene.ingress("web", "web.example.com", "external"),
            local.to_value(),
            doomed.clone(),
        ])
        .await;
    let stack: Stack = scene.stack(delta).await;
    for name in ["web", "local", "doomed"] {
        scene.wait_ready(name).await;
    }
    let traffic = TrafficLoop::start(vec![
        (
            stack.http_addr(),
            "web.example.com".into(),
            "external".into(),
        ),
        (
            stack.internal_http_addr(),
            "local.restart.svc.cluster.local".into(),
            "internal".into(),
        ),
    ]);

    // Cut sluice off (frozen), change things, restart the API server, and let sluice back.
    signal(stack.sluice.pid(), "STOP");
    scene.delete(&[doomed]).await;
    scene
        .apply(&[scene.ingress("fresh", "fresh.example.com", "external")])
        .await;
    cluster.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_apiserver().await;
    signal(stack.sluice.pid(), "CONT");

    // What changed while sluice was cut off is served once it is back.
    stack
        .get_until(
            stack.http_addr(),
            "fresh.example.com",
            "/",
            kit::CONVERGE,
            |r| r.status == 200,
        )
        .await;
    stack
        .get_until(
            stack.http_addr(),
            "doomed.example.com",
            "/",
            kit::CONVERGE,
            |r| r.status == 404,
        )
        .await;

    // The API server restarts under a connected sluice; a change made right after is served.
    cluster.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_apiserver().await;
    scene
        .apply(&[scene.ingress("after", "after.example.com", "external")])
        .await;
    stack
        .get_until(
            stack.http_addr(),
            "after.example.com",
            "/",
            kit::CONVERGE,
            |r| r.status == 200,
        )
        .await;
    let sent = traffic.finish().await;
    assert!(sent > 100, "only {sent} requests were sent");
}
