//! The two sources are one contract: the same objects give byte-identical resources and versions
//! from files and from the API server; and a restarted replica serves the same versions, so a
//! reconnecting Envoy sees no change.

use std::time::Duration;

use serde_json::Value;

use crate::kit::{self, CONVERGE, Scene};
use crate::support::cluster::Cluster;
use crate::support::manifests::{self, HttpPath, Ingress, ManifestDir, Rule, SERVICE_PORT, Split};
use crate::support::restart::{Stop, envoy_stats, stop_sluice, sum_of, wait_proxy_synced};
use crate::support::sluice::SluicePorts;
use crate::support::tls::certificate;
use crate::support::{Sluice, Stack, StackOptions, free_port};

/// The objects of one namespace: Services with EndpointSlices, a TLS secret, and ingresses
/// with a split, a ClusterLocal rule, TLS and a header match.
fn objects(scene: &Scene<'_>) -> Vec<Value> {
    let ns = &scene.ns;
    let blue = kit::backend("blue").addr();
    let green = kit::backend("green").addr();
    let (cert, key) = certificate("secure.example.com");
    let mut objects = scene.service("blue", blue);
    objects.extend(scene.service("green", green));
    objects.push(manifests::tls_secret(ns, "cert", &cert, &key));
    objects.push(
        Ingress::new(ns, "split")
            .rule(
                Rule::external(&["split.example.com"]).path(
                    HttpPath::new()
                        .split(Split::new(ns, "blue", SERVICE_PORT).percent(90))
                        .split(Split::new(ns, "green", SERVICE_PORT).percent(10)),
                ),
            )
            .rule(
                Rule::cluster_local(&["split.parity.svc.cluster.local"]).path(
                    HttpPath::prefix("/internal")
                        .header("x-version", "2")
                        .split(Split::new(ns, "green", SERVICE_PORT)),
                ),
            )
            .to_value(),
    );
    objects.push(
        Ingress::new(ns, "secure")
            .rule(
                Rule::external(&["secure.example.com"]).path(HttpPath::new().split(Split::new(
                    ns,
                    "blue",
                    SERVICE_PORT,
                ))),
            )
            .tls(&["secure.example.com"], ns, "cert")
            .to_value(),
    );
    objects
}

/// Every served resource with its version, as `/debug/config` shows them.
async fn served(sluice: &Sluice) -> Value {
    let mut config = sluice.admin_get("/debug/config").await.json();
    config.as_object_mut().unwrap().remove("ready");
    config
}

pub async fn same_resources_from_files_and_api(cluster: &'static Cluster) {
    let scene = Scene::new(cluster, "parity").await;
    let objects = objects(&scene);
    scene.apply(&objects).await;
    let dir = ManifestDir::new();
    dir.write("all.yaml", &manifests::documents(&objects));
    // The listeners' ports are part of the resources: both get the same ones (only Envoy binds
    // them).
    let ports = SluicePorts::free();
    let api_ports = SluicePorts {
        xds: free_port(),
        admin: free_port(),
        ..ports
    };
    let from_files = Sluice::start_on(dir.path(), ports, &["--system-namespace", &scene.ns]);
    let args = scene.sluice_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let from_api = Sluice::start_in_cluster_on(&cluster.kubeconfig, api_ports, &args);
    from_files.wait_ready().await;
    from_api.wait_ready().await;
    let files = served(&from_files).await;
    let api = served(&from_api).await;
    assert!(
        files["shared"]["RDS"]
            .as_object()
            .is_some_and(|routes| routes.len() >= 3),
        "too little is served to compare: {files}"
    );
    let differences = differences("", &files, &api);
    assert!(
        differences.is_empty(),
        "the same objects gave different resources from files and from the API server: {differences:?}"
    );
}

/// The paths at which two JSON values differ (the first few).
fn differences(path: &str, a: &Value, b: &Value) -> Vec<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|key| {
                    let null = Value::Null;
                    differences(
                        &format!("{path}/{key}"),
                        a.get(key).unwrap_or(&null),
                        b.get(key).unwrap_or(&null),
                    )
                })
                .take(5)
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("{path}: {a} != {b}")],
    }
}

pub async fn restarted_replica_resends_nothing(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "parity-restart").await;
    scene.apply(&objects(&scene)).await;
    let stack = Stack::start_on(
        scene.sluice(&[]),
        StackOptions {
            delta,
            node_id: Some("parity".to_owned()),
            ..StackOptions::default()
        },
    )
    .await;
    let all = ["LDS", "CDS", "EDS", "SRDS", "RDS", "SDS"];
    assert!(
        wait_proxy_synced(&stack.sluice, "parity", &all, CONVERGE).await,
        "Envoy never synced"
    );
    let before = sum_of(&envoy_stats(&stack.envoy).await, ".update_success");
    stop_sluice(&stack.sluice, Stop::Kill).await;

    let args = scene.sluice_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let restarted = Sluice::start_in_cluster_on(&cluster.kubeconfig, stack.sluice.ports(), &args);
    restarted.wait_ready().await;
    assert!(
        wait_proxy_synced(&restarted, "parity", &all, CONVERGE).await,
        "Envoy never synced with the restarted sluice"
    );
    // Give a late response the time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sum_of(&envoy_stats(&stack.envoy).await, ".update_success");
    assert_eq!(
        before,
        after,
        "the restarted replica sent Envoy {} responses although nothing changed",
        after - before
    );
}
