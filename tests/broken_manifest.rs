//! A manifest that stops parsing keeps its ingress served at the last version read, and the
//! ingress says so in its status until the file is fixed. Both modes, real Envoy.

#[macro_use]
mod support;

use std::time::Duration;

use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::{Backend, ManifestDir, Stack};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);

async fn broken_file_keeps_serving_and_says_so(delta: bool) {
    let backend = Backend::start("hello").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("hello", NS, backend.port(), "http"),
    );
    let ingress = Ingress::new(NS, "hello").rule(
        Rule::external(&["hello.example.com"]).path(HttpPath::new().split(Split::new(
            NS,
            "hello",
            SERVICE_PORT,
        ))),
    );
    dir.write("hello.yaml", &ingress.to_yaml());
    let stack = Stack::start(dir.path(), delta).await;
    stack
        .sluice
        .wait_ingress_ready(NS, "hello", "True", CONVERGE)
        .await;

    dir.write("hello.yaml", "spec: [this is: not {an ingress\n");
    let broken = stack
        .sluice
        .wait_ingress_ready(NS, "hello", "False", CONVERGE)
        .await;
    assert_eq!(broken["reason"], "ManifestUnreadable", "{broken}");
    let message = broken["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("hello.yaml") && message.contains("still served"),
        "the message names the file and says the last version is served: {message}"
    );
    let response = stack.get("hello.example.com", "/").await;
    assert_eq!((response.status, response.body.as_str()), (200, "hello"));

    dir.write("hello.yaml", &ingress.to_yaml());
    stack
        .sluice
        .wait_ingress_ready(NS, "hello", "True", CONVERGE)
        .await;
}

in_both_modes!(broken_file_keeps_serving_and_says_so);
