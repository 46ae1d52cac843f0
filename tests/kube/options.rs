//! The gateway options in Kubernetes mode: `config-sluice` in sluice's namespace, watched by
//! name, reaches Envoy as it changes; the Secret it names keeps its data in the world; a
//! version with problems is reported and changes nothing; deleting it restores the defaults.

use serde_json::json;

use crate::kit::{self, CONVERGE, Scene};
use crate::support::cluster::Cluster;
use crate::support::manifests;
use crate::support::sluice::run_cli;
use crate::support::tls::{certificate, https_get};
use crate::support::{Stack, poll_until, wait_for_async};

const HOST: &str = "options.example.com";

/// Waits until the external listener's responses for `HOST` carry `server: envoy` or not.
async fn server_header(stack: &Stack, present: bool) {
    let seen = wait_for_async(CONVERGE, async || {
        crate::support::client::get(stack.http_addr(), HOST, "/", &[])
            .await
            .is_ok_and(|r| r.status == 200 && r.header("server").is_some() == present)
    })
    .await;
    assert!(
        seen,
        "server header present={present} never seen\n{}",
        stack.logs()
    );
}

pub async fn config_map(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "options").await;
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    scene.apply(&[scene.ingress("web", HOST, "backend")]).await;
    let (cert, key) = certificate(HOST);
    let options = |data: serde_json::Value| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-sluice", "namespace": scene.ns},
            "data": data,
        })
    };
    scene
        .apply(&[
            manifests::tls_secret(&scene.ns, "local-cert", &cert, &key),
            options(json!({
                "disable-envoy-server-header": "true",
                "cluster-cert-secret": "local-cert",
            })),
        ])
        .await;

    // Listed before the start: in force from the first snapshot, the Secret's data with it.
    let stack = scene.stack(delta).await;
    server_header(&stack, false).await;
    let internal_https = stack.sluice.internal_https_addr();
    let served = poll_until(CONVERGE, async || {
        https_get(internal_https, HOST, &cert)
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(
        served.is_some(),
        "the cluster certificate is served\n{}",
        stack.logs()
    );

    // A change applies without a restart.
    scene
        .apply(&[options(json!({"disable-envoy-server-header": "false"}))])
        .await;
    server_header(&stack, true).await;

    // Problems are reported and change nothing.
    scene
        .apply(&[options(json!({
            "disable-envoy-server-header": "true",
            "no-such-option": "1",
        }))])
        .await;
    let admin = stack.sluice.admin_addr().to_string();
    let reported = poll_until(CONVERGE, async || {
        let check = run_cli(&["check", "--admin-addr", &admin]).await;
        check
            .stdout
            .lines()
            .find(|l| l.contains("gateway options") && l.starts_with("FAIL"))
            .map(str::to_owned)
    })
    .await
    .expect("check reports the bad ConfigMap");
    assert!(reported.contains("no-such-option"), "{reported}");
    server_header(&stack, true).await;

    // Deleted: the defaults.
    scene
        .apply(&[options(json!({"disable-envoy-server-header": "true"}))])
        .await;
    server_header(&stack, false).await;
    scene.delete(&[options(json!({}))]).await;
    server_header(&stack, true).await;
}
