//! What the API server holds reaches Envoy: the initial list before anything is served, then
//! every add, update and delete of each kind sluice watches.

use std::time::Duration;

use serde_json::{Value, json};

use crate::kit::{self, CONVERGE, Scene, ready};
use crate::support::cluster::Cluster;
use crate::support::manifests::{self, CLASS_ANNOTATION, INGRESS_CLASS};
use crate::support::tls::{certificate, https_get};
use crate::support::{Response, Stack, poll_until, wait_for_async};

/// Waits until `host` on the external listener answers `status` from `backend` (any backend
/// when `None`).
async fn serves(stack: &Stack, host: &str, status: u16, backend: Option<&str>) -> Response {
    stack
        .get_until(stack.http_addr(), host, "/", CONVERGE, |response| {
            response.status == status && (backend.is_none() || response.backend() == backend)
        })
        .await
}

pub async fn every_kind(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "sync").await;
    let blue = kit::backend("blue");
    let green = kit::backend("green");
    let blue_service = scene.service("blue", blue.addr());
    let host = "web.example.com";
    scene.apply(&blue_service).await;
    scene.apply(&[scene.ingress("web", host, "blue")]).await;

    // Everything listed before sluice started is in the first snapshot it serves.
    let sluice = scene.sluice(&[]);
    sluice.wait_ready().await;
    let routes = sluice
        .admin_get(&format!("/debug/config?type=RDS&name={host}"))
        .await
        .json();
    assert!(
        routes["shared"]["RDS"]
            .as_object()
            .is_some_and(|r| !r.is_empty()),
        "the first snapshot served lacks the ingress listed before the start: {routes}"
    );
    let stack = Stack::start_on(
        sluice,
        crate::support::StackOptions {
            delta,
            ..Default::default()
        },
    )
    .await;
    serves(&stack, host, 200, Some("blue")).await;

    // Ingress: update, add, delete.
    let green_service = scene.service("green", green.addr());
    scene.apply(&green_service).await;
    scene.apply(&[scene.ingress("web", host, "green")]).await;
    serves(&stack, host, 200, Some("green")).await;
    let second = scene.ingress("second", "second.example.com", "blue");
    scene.apply(std::slice::from_ref(&second)).await;
    serves(&stack, "second.example.com", 200, Some("blue")).await;
    scene.delete(&[second]).await;
    serves(&stack, "second.example.com", 404, None).await;

    // Service: a backend that does not exist yet is added; its port changes and comes back;
    // it is deleted.
    let late = kit::backend("late");
    scene
        .apply(&[scene.ingress("late", "late.example.com", "late")])
        .await;
    serves(&stack, "late.example.com", 503, None).await;
    let late_service = scene.service("late", late.addr());
    scene.apply(&late_service).await;
    serves(&stack, "late.example.com", 200, Some("late")).await;
    let mut moved = late_service[0].clone();
    moved["spec"]["ports"][0]["port"] = json!(8080);
    scene.apply(&[moved]).await;
    serves(&stack, "late.example.com", 503, None).await;
    scene.apply(&late_service[..1]).await;
    serves(&stack, "late.example.com", 200, Some("late")).await;
    scene.delete(&late_service[..1]).await;
    serves(&stack, "late.example.com", 503, None).await;

    // EndpointSlice: moved to another backend, deleted, added again.
    let slices = "slices.example.com";
    scene
        .apply(&[scene.ingress("slices", slices, "blue")])
        .await;
    serves(&stack, slices, 200, Some("blue")).await;
    scene
        .apply(&[scene.slice("blue", "blue-1", green.addr())])
        .await;
    serves(&stack, slices, 200, Some("green")).await;
    scene.delete(&blue_service[1..]).await;
    serves(&stack, slices, 503, None).await;
    scene
        .apply(&[scene.slice("blue", "blue-2", blue.addr())])
        .await;
    serves(&stack, slices, 200, Some("blue")).await;

    // Deleting the ingress removes its host.
    scene.delete(&[scene.ingress("web", host, "green")]).await;
    serves(&stack, host, 404, None).await;
}

pub async fn class_filtering(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "class").await;
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    let mut foreign = scene.ingress("foreign", "foreign.example.com", "backend");
    foreign["metadata"]["annotations"][CLASS_ANNOTATION] =
        json!("istio.ingress.networking.knative.dev");
    scene.apply(std::slice::from_ref(&foreign)).await;
    scene
        .apply(&[scene.ingress("owned", "owned.example.com", "backend")])
        .await;
    let stack = scene.stack(delta).await;
    serves(&stack, "owned.example.com", 200, Some("backend")).await;
    scene.wait_ready("owned").await;
    assert_eq!(
        stack.get("foreign.example.com", "/").await.status,
        404,
        "an ingress of another class is not served"
    );
    assert!(
        scene.get_ingress("foreign").await.status.is_none(),
        "sluice wrote the status of an ingress of another class"
    );

    // Switching the class over makes it sluice's.
    foreign["metadata"]["annotations"][CLASS_ANNOTATION] = json!(INGRESS_CLASS);
    scene.apply(&[foreign]).await;
    serves(&stack, "foreign.example.com", 200, Some("backend")).await;
    scene.wait_ready("foreign").await;
}

fn tls_secret(scene: &Scene, name: &str, (cert, key): &(String, String)) -> Value {
    manifests::tls_secret(&scene.ns, name, cert, key)
}

pub async fn tls_secrets(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "tls").await;
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    let stack = scene.stack(delta).await;
    let https = stack.sluice.https_addr();
    let host = "secure.example.com";

    // The secret exists before any ingress names it: sluice dropped its data and must read it
    // when the ingress arrives.
    let first = certificate(host);
    scene.apply(&[tls_secret(&scene, "cert", &first)]).await;
    let secure = manifests::Ingress::new(&scene.ns, "secure")
        .rule(
            manifests::Rule::external(&[host]).path(manifests::HttpPath::new().split(
                manifests::Split::new(&scene.ns, "backend", manifests::SERVICE_PORT),
            )),
        )
        .tls(&[host], &scene.ns, "cert")
        .to_value();
    scene.apply(&[secure]).await;
    let served = poll_until(CONVERGE, async || {
        https_get(https, host, &first.0)
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
    .expect("HTTPS with the secret that existed before the ingress");
    assert_eq!(served.body, "backend");
    scene.wait_ready("secure").await;

    // Rotation reaches Envoy.
    let second = certificate(host);
    scene.apply(&[tls_secret(&scene, "cert", &second)]).await;
    let rotated = poll_until(CONVERGE, async || {
        https_get(https, host, &second.0)
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
    .expect("HTTPS with the rotated certificate");
    assert_ne!(rotated.peer, served.peer);

    // Deleting the secret fails the ingress's TLS, with a reason.
    scene.delete(&[tls_secret(&scene, "cert", &second)]).await;
    let failed = scene
        .wait_status("secure", "Ready=False", |ingress| {
            ready(ingress).is_some_and(|(status, _)| status == "False")
        })
        .await;
    let reason = ready(&failed).unwrap().1;
    assert_eq!(reason, "InvalidTLSSecret", "{:?}", failed.status);
    assert!(
        wait_for_async(Duration::from_secs(5), async || {
            https_get(https, host, &second.0).await.is_err()
        })
        .await,
        "HTTPS still served after the secret was deleted"
    );
}
