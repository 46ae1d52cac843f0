//! The status sluice writes is Knative's: observedGeneration, the three conditions with stable
//! transition times, both load balancers, and nothing written twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use sluice::knative::IngressStatus;

use crate::kit::{self, CONVERGE, Scene, condition, ready};
use crate::support::cluster::Cluster;
use crate::support::manifests::{HttpPath, Ingress, Rule, SERVICE_PORT, Split};

/// Every status an ingress went through, as the API server's watch reports them.
#[derive(Clone, Default)]
struct StatusLog(Arc<Mutex<Vec<Option<IngressStatus>>>>);

impl StatusLog {
    /// Follows ingress `name` until the runtime stops.
    fn follow(scene: &Scene, name: &str) -> StatusLog {
        let log = StatusLog::default();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(scene.ingresses(), config).boxed();
        let statuses = log.0.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Ok(Event::Apply(ingress) | Event::InitApply(ingress)) = event {
                    let mut statuses = statuses.lock().unwrap();
                    if statuses.last() != Some(&ingress.status) {
                        statuses.push(ingress.status);
                    }
                }
            }
        });
        log
    }

    /// How many times the status changed (the first status written counts).
    fn changes(&self) -> usize {
        let statuses = self.0.lock().unwrap();
        statuses.iter().filter(|status| status.is_some()).count()
    }
}

async fn status_writes(stack: &crate::support::Stack) -> u64 {
    let metrics = stack.sluice.admin_get("/metrics").await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice_status_writes_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_status_writes_total in {metrics}"))
}

fn transition_time(status: &IngressStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .and_then(|c| c.last_transition_time.clone())
}

pub async fn content(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "status").await;
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    let stack = scene.stack(delta).await;
    let log = StatusLog::follow(&scene, "web");
    scene
        .apply(&[scene.ingress("web", "web.example.com", "backend")])
        .await;
    let ingress = scene.wait_ready("web").await;
    let status = ingress.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["LoadBalancerReady", "NetworkConfigured", "Ready"]);
    for condition in &status.conditions {
        assert_eq!(condition.status, "True", "{condition:?}");
        assert!(condition.last_transition_time.is_some(), "{condition:?}");
    }
    let domain = |balancer: &Option<sluice::knative::LoadBalancerStatus>| {
        balancer
            .as_ref()
            .map(|b| b.ingress[0].domain_internal.clone())
    };
    assert_eq!(
        domain(&status.public_load_balancer),
        Some(format!(
            "knative-external-proxy.{}.svc.cluster.local",
            scene.ns
        ))
    );
    assert_eq!(
        domain(&status.private_load_balancer),
        Some(format!(
            "knative-internal-proxy.{}.svc.cluster.local",
            scene.ns
        ))
    );

    // A new generation: observedGeneration follows, and a condition that stayed True keeps its
    // transition time.
    let updated = Ingress::new(&scene.ns, "web").rule(
        Rule::external(&["web.example.com"]).path(HttpPath::prefix("/v2").split(Split::new(
            &scene.ns,
            "backend",
            SERVICE_PORT,
        ))),
    );
    scene.apply(&[updated.to_value()]).await;
    let ingress = scene.wait_ready("web").await;
    let after = ingress.status.clone().unwrap();
    assert_eq!(after.observed_generation, Some(2));
    assert_eq!(
        transition_time(&after, "NetworkConfigured"),
        transition_time(&status, "NetworkConfigured"),
        "NetworkConfigured stayed True, so its lastTransitionTime must not move"
    );

    // Quiet now: nothing more is written, and every write sluice made changed the status.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changes = log.changes();
    assert_eq!(
        scene.get_ingress("web").await.status,
        Some(after),
        "the status moved after the ingress was Ready"
    );
    let writes = status_writes(&stack).await;
    assert_eq!(
        writes as usize, changes,
        "sluice wrote status {writes} times for {changes} changes: some writes changed nothing"
    );
    assert!(
        changes <= 4,
        "two generations took {changes} status writes: {:?}",
        log.0.lock().unwrap()
    );
}

pub async fn invalid(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "invalid").await;
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    let stack = scene.stack(delta).await;
    scene
        .apply(&[scene.ingress("web", "web.example.com", "backend")])
        .await;
    scene.wait_ready("web").await;

    let mut broken = scene.ingress("web", "web.example.com", "backend");
    broken["spec"]["rules"][0]["http"]["paths"][0]["splits"][0]["percent"] = json!(60);
    scene.apply(&[broken]).await;
    let ingress = scene
        .wait_status("web", "Ready=False at generation 2", |ingress| {
            ready(ingress).is_some_and(|(status, _)| status == "False")
                && kit::observed_current(ingress)
        })
        .await;
    let status = ingress.status.unwrap();
    assert_eq!(
        condition(&status, "NetworkConfigured"),
        Some(("False".to_owned(), "InvalidIngress".to_owned()))
    );
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(message.contains("percent"), "{message}");
    let response = stack
        .get_until(stack.http_addr(), "web.example.com", "/", CONVERGE, |r| {
            r.status == 200
        })
        .await;
    assert_eq!(
        response.backend(),
        Some("backend"),
        "the last valid version is still served"
    );
}
