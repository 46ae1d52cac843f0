//! Kubernetes mode with `--serve-routes`: writes the status of the Routes whose Ingress sluice
//! makes, as Knative's route reconciler would, from the holder of the leader Lease only (see
//! [`super::writer`], whose design this follows): a JSON merge patch of the `status`
//! subresource, only when it differs from what the API server holds, and a verdict still
//! moving only once it lasted [`super::writer::SETTLE`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::knative::{RouteResource, RouteStatus};
use crate::metrics::Metrics;
use crate::status::replicas::ReplicaReport;
use crate::status::writer::{Decision, OtherReplicas, decide, heartbeat_now, send};
use crate::world::NsName;

/// Status changes that arrive together are written together.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// What the writer reads: the wanted status of each Route whose Ingress sluice makes.
pub trait RouteStatusSource: Send + Sync + 'static {
    /// Calls `each` with every such Route, the status it should have now, and the status the
    /// source last saw on it.
    fn route_statuses(
        &self,
        others: &[ReplicaReport],
        now: &str,
        each: &mut dyn FnMut(&NsName, RouteStatus, Option<&RouteStatus>),
    );
}

/// The running writer.
pub struct RouteStatusWriter {
    task: JoinHandle<()>,
}

impl RouteStatusWriter {
    /// Starts writing whenever `leader` is true; `changed` wakes it when statuses may have
    /// changed, `others` are the other replicas' reports on their Envoys. For `grace` after
    /// taking over, a Route the API server shows Ready is not marked down for want of Envoys.
    pub fn start(
        client: Client,
        source: Arc<dyn RouteStatusSource>,
        others: Arc<OtherReplicas>,
        (leader, changed): (watch::Receiver<bool>, watch::Receiver<()>),
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> RouteStatusWriter {
        let writer = Writer {
            client,
            source,
            others,
            grace,
            metrics,
        };
        RouteStatusWriter {
            task: tokio::spawn(writer.run(leader, changed)),
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

struct Writer {
    client: Client,
    source: Arc<dyn RouteStatusSource>,
    others: Arc<OtherReplicas>,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn run(self, mut leader: watch::Receiver<bool>, mut changed: watch::Receiver<()>) {
        // What this replica wrote and the API server has not echoed back yet.
        let mut written: BTreeMap<NsName, RouteStatus> = BTreeMap::new();
        let mut moving: BTreeMap<NsName, Instant> = BTreeMap::new();
        let mut wake_at: Option<Instant> = None;
        let mut grace_until = Instant::now();
        loop {
            if !*leader.borrow_and_update() {
                written.clear();
                moving.clear();
                wake_at = None;
                if leader.changed().await.is_err() {
                    return;
                }
                grace_until = Instant::now() + self.grace;
                continue;
            }
            let woke = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                result = leader.changed() => { if result.is_err() { return } continue },
                () = woke => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            let (writes, next) = self.plan(&mut written, &mut moving, grace_until);
            wake_at = next;
            self.write(writes, &leader, &mut written, &mut wake_at)
                .await;
        }
    }

    async fn write(
        &self,
        writes: Vec<(NsName, RouteStatus)>,
        leader: &watch::Receiver<bool>,
        written: &mut BTreeMap<NsName, RouteStatus>,
        wake_at: &mut Option<Instant>,
    ) {
        let results = send(writes, leader, |key, status| {
            let client = self.client.clone();
            async move {
                let result = patch_status(&client, &key, &status).await;
                (key, status, result)
            }
        })
        .await;
        for (key, status, result) in results {
            match result {
                Ok(true) => {
                    self.metrics.status_writes.inc();
                    written.insert(key, status);
                }
                Ok(false) => {}
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(error) => {
                    tracing::warn!(route = %key, "writing Route status failed, retrying: {error}");
                    let retry = Instant::now() + Duration::from_secs(1);
                    *wake_at = Some(wake_at.map_or(retry, |at| at.min(retry)));
                }
            }
        }
    }

    /// Which statuses to write now, and when to look again for those held back.
    fn plan(
        &self,
        written: &mut BTreeMap<NsName, RouteStatus>,
        moving: &mut BTreeMap<NsName, Instant>,
        grace_until: Instant,
    ) -> (Vec<(NsName, RouteStatus)>, Option<Instant>) {
        let others = self.others.current();
        let now = Instant::now();
        let mut writes = Vec::new();
        let mut next: Option<Instant> = None;
        let mut seen_moving = BTreeMap::new();
        let mut seen_written = BTreeMap::new();
        self.source
            .route_statuses(&others, &heartbeat_now(), &mut |key, wanted, observed| {
                let unechoed = written.remove(key).filter(|mine| observed != Some(mine));
                let current = unechoed.as_ref().or(observed);
                let decision = decide(&wanted, current, moving.get(key).copied(), now, grace_until);
                if let Some(mine) = unechoed {
                    seen_written.insert(key.clone(), mine);
                }
                match decision {
                    Decision::Skip => {}
                    Decision::Write => writes.push((key.clone(), wanted)),
                    Decision::Hold(until) => {
                        seen_moving.insert(key.clone(), moving.get(key).copied().unwrap_or(now));
                        next = Some(next.map_or(until, |next| next.min(until)));
                    }
                }
            });
        *moving = seen_moving;
        *written = seen_written;
        (writes, next)
    }
}

/// A JSON merge patch of the status subresource: lists are replaced whole, and a field that is
/// gone is removed.
async fn patch_status(
    client: &Client,
    key: &NsName,
    status: &RouteStatus,
) -> Result<(), kube::Error> {
    let mut body = serde_json::to_value(status).expect("a route status serializes");
    for field in ["observedGeneration", "url", "address", "traffic"] {
        if body.get(field).is_none() {
            body[field] = serde_json::Value::Null;
        }
    }
    let api: Api<RouteResource> = Api::namespaced(client.clone(), &key.namespace);
    api.patch_status(
        &key.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": body })),
    )
    .await
    .map(drop)
}
