//! Two ingresses claiming one host with different routes: the older one serves it, the other
//! gets `Ready=False` with reason `DomainConflict`, and takes the host over when the older one
//! goes. Both modes, real Envoy.

#[macro_use]
mod support;

use std::time::Duration;

use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::{Backend, ManifestDir, Stack};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);
const HOST: &str = "contested.example.com";

fn claim(name: &str, service: &str, created: &str) -> Ingress {
    Ingress::new(NS, name).created(created).rule(
        Rule::external(&[HOST]).path(HttpPath::new().split(Split::new(NS, service, SERVICE_PORT))),
    )
}

async fn older_ingress_wins(delta: bool) {
    let old_backend = Backend::start("old").await;
    let new_backend = Backend::start("new").await;
    let dir = ManifestDir::new();
    for (name, backend) in [("old", &old_backend), ("new", &new_backend)] {
        dir.write(
            &format!("svc-{name}.yaml"),
            &manifests::service_for(name, NS, backend.port(), "http"),
        );
    }
    // The newer one is written first: age decides, not arrival.
    dir.write(
        "b.yaml",
        &claim("b-newer", "new", "2026-06-01T00:00:00Z").to_yaml(),
    );
    dir.write(
        "a.yaml",
        &claim("a-older", "old", "2026-01-01T00:00:00Z").to_yaml(),
    );
    let stack = Stack::start(dir.path(), delta).await;

    stack
        .sluice
        .wait_ingress_ready(NS, "a-older", "True", CONVERGE)
        .await;
    let loser = stack
        .sluice
        .wait_ingress_ready(NS, "b-newer", "False", CONVERGE)
        .await;
    assert_eq!(loser["reason"], "DomainConflict", "{loser}");
    assert!(
        loser["message"].as_str().unwrap_or_default().contains(HOST),
        "{loser}"
    );
    let response = stack.get(HOST, "/").await;
    assert_eq!((response.status, response.body.as_str()), (200, "old"));

    dir.remove("a.yaml");
    stack
        .sluice
        .wait_ingress_ready(NS, "b-newer", "True", CONVERGE)
        .await;
    let response = stack
        .get_until(stack.http_addr(), HOST, "/", CONVERGE, |r| r.body == "new")
        .await;
    assert_eq!(response.status, 200);
}

in_both_modes!(older_ingress_wins);
