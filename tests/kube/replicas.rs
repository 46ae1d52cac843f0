//! Two replicas: both serve xDS, the Lease holder writes status, an Envoy connected only to the
//! follower still counts, and when the leader dies the other takes over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::kit::{self, LEASE_SECONDS, Scene, TrafficLoop, signal};
use crate::support::cluster::Cluster;
use crate::support::{Stack, StackOptions, wait_for_async};

async fn holder(scene: &Scene<'_>) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(scene.applier.client().clone(), &scene.ns);
    leases
        .get_opt("sluice-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
}

pub async fn hand_over(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "replicas").await;
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    let leader = scene.sluice(&["--replica-id", "first"]);
    leader.wait_ready().await;
    assert!(
        wait_for_async(kit::CONVERGE, async || holder(&scene).await.as_deref()
            == Some("first"))
        .await,
        "the first replica never took the Lease"
    );
    // The Envoy talks only to the second replica, which does not write status.
    let follower = Stack::start_on(
        scene.sluice(&["--replica-id", "second"]),
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    scene
        .apply(&[scene.ingress("web", "web.example.com", "backend")])
        .await;
    scene.wait_ready("web").await;
    assert_eq!(holder(&scene).await.as_deref(), Some("first"));
    let traffic = TrafficLoop::start(vec![(
        follower.http_addr(),
        "web.example.com".into(),
        "backend".into(),
    )]);

    // The leader dies; the follower takes the Lease and writes the next generation's status.
    signal(leader.pid(), "KILL");
    let killed = Instant::now();
    let mut updated = scene.ingress("web", "web.example.com", "backend");
    updated["spec"]["rules"][0]["http"]["paths"][0]["appendHeaders"] =
        serde_json::json!({"x-revision": "2"});
    scene.apply(&[updated]).await;
    let ingress = scene.wait_ready("web").await;
    let took = killed.elapsed();
    assert_eq!(ingress.status.unwrap().observed_generation, Some(2));
    assert_eq!(holder(&scene).await.as_deref(), Some("second"));
    // The Lease may have been renewed just before the kill, so it lasts up to its duration;
    // then kube-lease-manager waits up to 1 s before taking it, and the write follows. The
    // margin also absorbs a loaded machine.
    let bound = Duration::from_secs(LEASE_SECONDS) + Duration::from_secs(5);
    assert!(
        took <= bound,
        "the follower wrote status {took:?} after the leader died (lease {LEASE_SECONDS} s)"
    );
    traffic.finish().await;
    drop(leader);
}
