//! Kubernetes mode's status writer: the one place that writes ingress status to the API server.
//!
//! Every replica serves xDS and publishes what its own Envoys ACKed (a report ConfigMap, see
//! [`super::replicas`]); only the holder of a Lease in sluice's namespace writes status, from
//! its own Envoys and the other replicas' fresh reports. Status is written with a JSON merge
//! patch of the `status` subresource, and only when it differs from what the API server holds.
//!
//! Verdicts that are still moving (`Ready=Unknown`, or no Envoy connected yet) are written only
//! once they last [`SETTLE`]: an ingress that converges quickly gets one write, `Ready=True`,
//! not two. For [`Timing::startup_grace`] after this replica starts writing, an ingress that the
//! API server already shows Ready at its current generation is not marked down for want of
//! Envoys: a restarted replica or a new leader gives Envoys time to reconnect first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::knative::{self, ClusterIngressResource, IngressKey, IngressKind, IngressResource};
use crate::metrics::Metrics;
use crate::status::Dirty;
use crate::status::replicas::{self, ReplicaReport, ReportUpdate};

/// A verdict still moving is written once it has lasted this long.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Status changes that arrive together are written together.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// A report is rewritten at most this often.
const REPORT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Status patches in flight at once.
const CONCURRENT_WRITES: usize = 32;
/// Field manager of every write.
const MANAGER: &str = "sluice";
/// The label that marks a replica's report, with the replica as its value.
const REPORT_LABEL: &str = "sluice.dev/replica-report";
/// When the replica last said it is alive.
const HEARTBEAT_ANNOTATION: &str = "sluice.dev/heartbeat";

/// Where and as whom this replica writes.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// sluice's own namespace: the Lease and the reports live there.
    pub namespace: String,
    /// This replica's identity (its pod name in a cluster).
    pub replica: String,
    pub lease_name: String,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A leader that stops renewing loses the Lease after this long; a report not renewed for
    /// this long no longer counts.
    pub lease_duration: Duration,
    /// How long after taking over the writer waits before marking down, for want of Envoys, an
    /// ingress the API server shows Ready.
    pub startup_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            startup_grace: Duration::from_secs(10),
        }
    }
}

/// Who asks [`StatusSource::take_dirty`]: each keeps its own account of what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// The status writer.
    Writer,
    /// This replica's report.
    Report,
}

/// What the writer reads: the wanted status of each owned ingress, and this replica's report,
/// for the ingresses that may have changed.
pub trait StatusSource: Send + Sync + 'static {
    /// The ingresses whose status may have changed since `consumer` last asked.
    fn take_dirty(&self, consumer: Consumer) -> Dirty;
    /// Calls `each` with every owned ingress of `scope`, the status it should have now, and
    /// the status the source last saw on it.
    fn knative_statuses(
        &self,
        others: &[ReplicaReport],
        scope: &Dirty,
        now: &str,
        each: &mut dyn FnMut(&IngressKey, knative::IngressStatus, Option<&knative::IngressStatus>),
    );
    /// What this replica's own Envoys say about the ingresses of `scope`.
    fn local_report(&self, scope: &Dirty) -> ReportUpdate;
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(
        "cannot set up leader election with Lease {namespace}/{name}: {source}; check that sluice \
         may get, create and patch Leases in its namespace"
    )]
    Lease {
        namespace: String,
        name: String,
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// The other replicas' reports, as last read, with when each was renewed.
#[derive(Debug, Default)]
pub struct OtherReplicas {
    reports: Mutex<BTreeMap<String, (ReplicaReport, Option<Timestamp>)>>,
    /// The ingresses on which the reports changed since the writer last asked.
    dirty: Mutex<Dirty>,
    fresh_for: Duration,
}

impl OtherReplicas {
    /// The reports renewed within the lease duration.
    pub fn current(&self) -> Vec<ReplicaReport> {
        let now = Timestamp::now();
        let fresh_for = self.fresh_for;
        self.lock()
            .values()
            .filter(|(_, renewed)| {
                renewed
                    .is_some_and(|renewed| now.duration_since(renewed).unsigned_abs() <= fresh_for)
            })
            .map(|(report, _)| report.clone())
            .collect()
    }

    /// The ingresses on which the reports changed since the last call.
    fn take_dirty(&self) -> Dirty {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn mark(&self, dirty: Dirty) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(dirty);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (ReplicaReport, Option<Timestamp>)>> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running writer: its tasks, and what it shares with the rest of sluice.
pub struct StatusWriter {
    pub others: Arc<OtherReplicas>,
    pub leader: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    lease:
        JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
    lease_control: watch::Receiver<bool>,
    reports: Api<ConfigMap>,
    report_name: String,
}

impl StatusWriter {
    /// Starts leader election, this replica's report, the reading of the others', and the
    /// writer. `changed` wakes them when statuses may have changed.
    pub async fn start(
        client: Client,
        config: WriterConfig,
        source: Arc<dyn StatusSource>,
        changed: watch::Receiver<()>,
        metrics: Arc<Metrics>,
    ) -> Result<StatusWriter, WriterError> {
        let lease_seconds = config.timing.lease_duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.replica)
            .with_duration(lease_seconds)
            .with_grace((lease_seconds / 3).max(1))
            .build()
            .await
            .map_err(|source| WriterError::Lease {
                namespace: config.namespace.clone(),
                name: config.lease_name.clone(),
                source,
            })?;
        let (lease_control, lease) = manager.watch().await;
        let (leader_tx, leader) = watch::channel(false);
        let others = Arc::new(OtherReplicas {
            reports: Mutex::default(),
            dirty: Mutex::default(),
            fresh_for: config.timing.lease_duration,
        });
        let reports: Api<ConfigMap> = Api::namespaced(client.clone(), &config.namespace);
        let report_name = format!("sluice-replica-{}", config.replica);
        let (others_changed_tx, others_changed) = watch::channel(());
        let tasks = vec![
            tokio::spawn(follow_lease(
                lease_control.clone(),
                leader_tx,
                metrics.clone(),
            )),
            tokio::spawn(read_reports(
                reports.clone(),
                config.replica.clone(),
                others.clone(),
                others_changed_tx,
            )),
            tokio::spawn(publish_report(
                reports.clone(),
                report_name.clone(),
                config.clone(),
                source.clone(),
                changed.clone(),
            )),
            tokio::spawn(
                Writer {
                    client,
                    config,
                    source,
                    others: others.clone(),
                    metrics,
                }
                .run(leader.clone(), changed, others_changed),
            ),
        ];
        Ok(StatusWriter {
            others,
            leader,
            tasks,
            lease,
            lease_control,
            reports,
            report_name,
        })
    }

    /// Stops writing at once, hands the Lease over and withdraws this replica's report.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        drop(self.lease_control);
        match tokio::time::timeout(Duration::from_secs(5), self.lease).await {
            Ok(Ok(Err(error))) => tracing::warn!("releasing the leader Lease failed: {error}"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
            _ => {}
        }
        let deleted = self
            .reports
            .delete(&self.report_name, &DeleteParams::default())
            .await;
        if let Err(error) = deleted {
            tracing::debug!("withdrawing this replica's report failed: {error}");
        }
    }
}

/// Mirrors the Lease manager's verdict; a replica that loses the Lease stops writing at once.
async fn follow_lease(
    mut lease: watch::Receiver<bool>,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    loop {
        let is_leader = *lease.borrow_and_update();
        if leader.send_replace(is_leader) != is_leader {
            metrics.leader.set(i64::from(is_leader));
            if is_leader {
                tracing::info!("this replica holds the Lease: it writes ingress status");
            } else {
                tracing::info!("this replica does not hold the Lease: it does not write status");
            }
        }
        if lease.changed().await.is_err() {
            leader.send_replace(false);
            metrics.leader.set(0);
            tracing::error!("leader election stopped; this replica no longer writes status");
            return;
        }
    }
}

/// Keeps [`OtherReplicas`] current from their report ConfigMaps.
async fn read_reports(
    api: Api<ConfigMap>,
    replica: String,
    others: Arc<OtherReplicas>,
    changed: watch::Sender<()>,
) {
    let config = watcher::Config::default().labels(REPORT_LABEL);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: Option<BTreeMap<String, (ReplicaReport, Option<Timestamp>)>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!("watching the replicas' reports failed, retrying: {error}");
                continue;
            }
        };
        let mut reports = others.lock();
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(map) => {
                if let (Some(listing), Some((name, report))) = (&mut listing, read(&map, &replica))
                {
                    listing.insert(name, report);
                }
            }
            Event::InitDone => {
                if let Some(listed) = listing.take() {
                    *reports = listed;
                    others.mark(Dirty::all());
                }
            }
            Event::Apply(map) => {
                if let Some((name, (report, renewed))) = read(&map, &replica) {
                    let before = reports.get(&name).map(|(report, _)| report);
                    others.mark(before.cloned().unwrap_or_default().differences(&report));
                    reports.insert(name, (report, renewed));
                }
            }
            Event::Delete(map) => {
                if let Some((name, _)) = read(&map, &replica) {
                    reports.remove(&name);
                    others.mark(Dirty::all());
                }
            }
        }
        drop(reports);
        changed.send_replace(());
    }
}

/// Another replica's report from its ConfigMap; `None` for this replica's own.
fn read(map: &ConfigMap, own: &str) -> Option<(String, (ReplicaReport, Option<Timestamp>))> {
    let replica = map.metadata.labels.as_ref()?.get(REPORT_LABEL)?;
    if replica == own {
        return None;
    }
    let renewed = map
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HEARTBEAT_ANNOTATION))
        .and_then(|time| time.parse().ok());
    let data = map.data.clone().unwrap_or_default();
    let report = ReplicaReport::from_data(replica, &data);
    Some((replica.clone(), (report, renewed)))
}

/// Publishes this replica's report whenever it changes, and renews it a few times per lease
/// duration so that the leader knows it is alive.
async fn publish_report(
    api: Api<ConfigMap>,
    name: String,
    config: WriterConfig,
    source: Arc<dyn StatusSource>,
    mut changed: watch::Receiver<()>,
) {
    let heartbeat = config.timing.lease_duration / 3;
    let mut report = ReplicaReport {
        replica: config.replica.clone(),
        ..ReplicaReport::default()
    };
    let mut published: Option<BTreeMap<String, String>> = None;
    let mut renew_at = Instant::now();
    loop {
        let scope = source.take_dirty(Consumer::Report);
        if !scope.is_empty() {
            report.update(source.local_report(&scope));
        }
        let data = report.to_data();
        let renew = Instant::now() >= renew_at;
        let result = match &published {
            None => create_report(&api, &name, &config, &data).await,
            Some(before) => {
                let patch = replicas::data_patch(before, &data);
                if patch.is_none() && !renew {
                    Ok(())
                } else {
                    patch_report(&api, &name, patch).await
                }
            }
        };
        match result {
            Ok(()) => {
                published = Some(data);
                if renew {
                    renew_at = Instant::now() + heartbeat;
                }
            }
            Err(error) => {
                tracing::warn!(report = %name, "publishing this replica's report failed, retrying: {error}");
                published = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            result = changed.changed() => if result.is_err() { return },
            () = tokio::time::sleep_until(renew_at) => {}
        }
        tokio::time::sleep(REPORT_DEBOUNCE).await;
    }
}

pub(crate) fn heartbeat_now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn create_report(
    api: &Api<ConfigMap>,
    name: &str,
    config: &WriterConfig,
    data: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                REPORT_LABEL.to_owned(),
                config.replica.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                HEARTBEAT_ANNOTATION.to_owned(),
                heartbeat_now(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(data.clone()),
        ..ConfigMap::default()
    };
    let mut body = serde_json::to_value(&map).expect("a ConfigMap serializes");
    body["apiVersion"] = "v1".into();
    body["kind"] = "ConfigMap".into();
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(drop)
}

async fn patch_report(
    api: &Api<ConfigMap>,
    name: &str,
    data: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<(), kube::Error> {
    let mut patch = serde_json::json!({
        "metadata": { "annotations": { HEARTBEAT_ANNOTATION: heartbeat_now() } }
    });
    if let Some(data) = data {
        patch["data"] = data.into();
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

/// What the writer does with a wanted status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The API server already holds it.
    Skip,
    Write,
    /// Wait until then: the verdict is still moving.
    Hold(Instant),
}

/// What [`decide`] reads of a Knative status: its `Ready` condition and the generation it
/// describes.
pub(crate) trait Verdict: PartialEq {
    /// The status and reason of the `Ready` condition (empty when there is none).
    fn ready(&self) -> (String, String);
    fn observed_generation(&self) -> Option<i64>;
}

fn ready_of(conditions: &[knative::StatusCondition]) -> (String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

impl Verdict for knative::IngressStatus {
    fn ready(&self) -> (String, String) {
        ready_of(&self.conditions)
    }

    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }
}

impl Verdict for knative::RouteStatus {
    fn ready(&self) -> (String, String) {
        ready_of(&self.conditions)
    }

    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }
}

/// Whether to write `wanted` over `current` now. `moving_since` is when the object's verdict
/// started moving (`None`: just now).
pub(crate) fn decide<S: Verdict>(
    wanted: &S,
    current: Option<&S>,
    moving_since: Option<Instant>,
    now: Instant,
    grace_until: Instant,
) -> Decision {
    if current == Some(wanted) {
        return Decision::Skip;
    }
    let (status, reason) = wanted.ready();
    let settled = status == "True" || (status == "False" && reason != "NoProxy");
    if settled {
        return Decision::Write;
    }
    let mut until = moving_since.unwrap_or(now) + SETTLE;
    let ready_now = current.is_some_and(|current| {
        current.ready().0 == "True" && current.observed_generation() == wanted.observed_generation()
    });
    if ready_now {
        until = until.max(grace_until);
    }
    if now >= until {
        Decision::Write
    } else {
        Decision::Hold(until)
    }
}

struct Writer {
    client: Client,
    config: WriterConfig,
    source: Arc<dyn StatusSource>,
    others: Arc<OtherReplicas>,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        mut changed: watch::Receiver<()>,
        mut others_changed: watch::Receiver<()>,
    ) {
        let mut book = Book::default();
        let mut grace_until = Instant::now();
        let mut wake_at: Option<Instant> = None;
        // Reports expire without an event: look again at least this often.
        let freshness = self.config.timing.lease_duration / 2;
        let mut fresh: BTreeSet<String> = BTreeSet::new();
        // Taking the Lease calls for a look at every ingress at once, not at the next event.
        let mut at_once = false;
        loop {
            if !*leader.borrow_and_update() {
                book = Book::default();
                wake_at = None;
                if leader.changed().await.is_err() {
                    return;
                }
                grace_until = Instant::now() + self.config.timing.startup_grace;
                book.retry.mark_all();
                at_once = true;
                continue;
            }
            if !std::mem::take(&mut at_once) {
                let woke = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = changed.changed() => if result.is_err() { return },
                    result = others_changed.changed() => if result.is_err() { return },
                    result = leader.changed() => { if result.is_err() { return } continue },
                    () = woke => {}
                    () = tokio::time::sleep(freshness) => {}
                }
            }
            tokio::time::sleep(DEBOUNCE).await;
            let others = self.others.current();
            let mut scope = self.source.take_dirty(Consumer::Writer);
            scope.merge(self.others.take_dirty());
            scope.merge(book.retry.take());
            let now_fresh: BTreeSet<String> = others.iter().map(|r| r.replica.clone()).collect();
            if now_fresh != fresh {
                fresh = now_fresh;
                scope.mark_all();
            }
            let due = Instant::now();
            scope.extend(
                book.moving
                    .iter()
                    .filter(|(_, (_, until))| *until <= due)
                    .map(|(key, _)| key.clone()),
            );
            let writes = self.plan(&others, &scope, &mut book, grace_until);
            self.write(writes, &leader, &mut book).await;
            wake_at = book.next_wake();
        }
    }

    /// Which statuses of `scope` to write now; the others it holds back are booked.
    fn plan(
        &self,
        others: &[ReplicaReport],
        scope: &Dirty,
        book: &mut Book,
        grace_until: Instant,
    ) -> Vec<(IngressKey, knative::IngressStatus)> {
        let now = Instant::now();
        let (mut written, mut moving) = book.take(scope);
        let mut writes = Vec::new();
        self.source.knative_statuses(
            others,
            scope,
            &heartbeat_now(),
            &mut |key, wanted, observed| {
                // Until the API server echoes a write back, it holds what was written.
                let unechoed = written.remove(key).filter(|mine| observed != Some(mine));
                let current = unechoed.as_ref().or(observed);
                let since = moving.remove(key).map(|(since, _)| since);
                let decision = decide(&wanted, current, since, now, grace_until);
                if let Some(mine) = unechoed {
                    book.written.insert(key.clone(), mine);
                }
                match decision {
                    Decision::Skip => {}
                    Decision::Write => writes.push((key.clone(), wanted)),
                    Decision::Hold(until) => {
                        book.moving
                            .insert(key.clone(), (since.unwrap_or(now), until));
                    }
                }
            },
        );
        writes
    }

    async fn write(
        &self,
        writes: Vec<(IngressKey, knative::IngressStatus)>,
        leader: &watch::Receiver<bool>,
        book: &mut Book,
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
                    book.written.insert(key, status);
                }
                Ok(false) => {}
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(error) => {
                    tracing::warn!(ingress = %key, "writing status failed, retrying: {error}");
                    book.retry.insert(key.clone());
                    book.retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}

/// Sends each status with `patch`, [`CONCURRENT_WRITES`] at a time, as long as this replica
/// holds the Lease; returns each with whether it was sent (`Ok(false)`: no longer the leader).
pub(crate) async fn send<K, S, Fut>(
    writes: Vec<(K, S)>,
    leader: &watch::Receiver<bool>,
    patch: impl Fn(K, S) -> Fut,
) -> Vec<(K, S, Result<bool, kube::Error>)>
where
    Fut: Future<Output = (K, S, Result<(), kube::Error>)>,
{
    let patch = &patch;
    futures::stream::iter(writes)
        .map(|(key, status)| async move {
            if !*leader.borrow() {
                return (key, status, Ok(false));
            }
            let (key, status, result) = patch(key, status).await;
            (key, status, result.map(|()| true))
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .collect()
        .await
}

/// What the writer remembers between rounds, per ingress.
#[derive(Debug, Default)]
struct Book {
    /// What it wrote and the API server has not echoed back yet.
    written: BTreeMap<IngressKey, knative::IngressStatus>,
    /// Verdicts held back while they move: since when, and until when.
    moving: BTreeMap<IngressKey, (Instant, Instant)>,
    /// Ingresses to look at again (failed writes; everything on taking the Lease).
    retry: Dirty,
    retry_at: Option<Instant>,
}

impl Book {
    /// Takes out what it holds on the ingresses of `scope`: the round decides them afresh, and
    /// those of `scope` it does not visit (gone, or no longer owned) are forgotten.
    #[allow(clippy::type_complexity)]
    fn take(
        &mut self,
        scope: &Dirty,
    ) -> (
        BTreeMap<IngressKey, knative::IngressStatus>,
        BTreeMap<IngressKey, (Instant, Instant)>,
    ) {
        if scope.is_all() {
            return (
                std::mem::take(&mut self.written),
                std::mem::take(&mut self.moving),
            );
        }
        let mut written = BTreeMap::new();
        let mut moving = BTreeMap::new();
        for key in scope.keys(&BTreeMap::<IngressKey, ()>::new()) {
            if let Some(mine) = self.written.remove(key) {
                written.insert(key.clone(), mine);
            }
            if let Some(hold) = self.moving.remove(key) {
                moving.insert(key.clone(), hold);
            }
        }
        (written, moving)
    }

    /// When to look again: the earliest hold's end, or a retry.
    fn next_wake(&mut self) -> Option<Instant> {
        let hold = self.moving.values().map(|(_, until)| *until).min();
        let retry = self.retry_at.take().filter(|_| !self.retry.is_empty());
        hold.into_iter().chain(retry).min()
    }
}

/// A JSON merge patch of the status subresource: the conditions list is replaced whole, and a
/// load balancer that is gone is removed.
async fn patch_status(
    client: &Client,
    key: &IngressKey,
    status: &knative::IngressStatus,
) -> Result<(), kube::Error> {
    let mut body = serde_json::to_value(status).expect("an ingress status serializes");
    for field in [
        "publicLoadBalancer",
        "privateLoadBalancer",
        "observedGeneration",
    ] {
        if body.get(field).is_none() {
            body[field] = serde_json::Value::Null;
        }
    }
    let patch = Patch::Merge(serde_json::json!({ "status": body }));
    let params = PatchParams::default();
    match key.kind {
        IngressKind::Ingress => {
            let api: Api<IngressResource> = Api::namespaced(client.clone(), &key.namespace);
            api.patch_status(&key.name, &params, &patch).await.map(drop)
        }
        IngressKind::ClusterIngress => {
            let api: Api<ClusterIngressResource> = Api::all(client.clone());
            api.patch_status(&key.name, &params, &patch).await.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: &str, reason: &str, generation: i64) -> knative::IngressStatus {
        knative::IngressStatus {
            observed_generation: Some(generation),
            conditions: vec![knative::StatusCondition {
                type_: "Ready".into(),
                status: ready.into(),
                reason: reason.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn settled_verdicts_are_written_at_once_and_moving_ones_after_settling() {
        let now = Instant::now();
        let unknown = status("Unknown", "Uninitialized", 2);
        assert_eq!(
            decide(&unknown, Some(&unknown), None, now, now),
            Decision::Skip
        );
        assert_eq!(
            decide(&status("True", "", 2), Some(&unknown), None, now, now),
            Decision::Write
        );
        assert_eq!(
            decide(&status("False", "DomainConflict", 2), None, None, now, now),
            Decision::Write
        );
        assert_eq!(
            decide(&unknown, None, None, now, now),
            Decision::Hold(now + SETTLE)
        );
        assert_eq!(
            decide(&unknown, None, Some(now - SETTLE), now, now),
            Decision::Write
        );
    }

    #[test]
    fn a_ready_ingress_is_not_marked_down_for_want_of_envoys_during_the_grace() {
        let now = Instant::now();
        let grace = now + Duration::from_secs(10);
        let ready = status("True", "", 3);
        let no_proxy = status("False", "NoProxy", 3);
        let moving_since = Some(now - SETTLE);
        assert_eq!(
            decide(&no_proxy, Some(&ready), moving_since, now, grace),
            Decision::Hold(grace)
        );
        // A new generation is not Ready yet anyway: no reason to wait for the grace.
        assert_eq!(
            decide(
                &status("Unknown", "Uninitialized", 4),
                Some(&ready),
                moving_since,
                now,
                grace
            ),
            Decision::Write
        );
        assert_eq!(
            decide(&no_proxy, Some(&ready), moving_since, grace, grace),
            Decision::Write
        );
    }
}
