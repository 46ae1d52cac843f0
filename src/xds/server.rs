//! The ADS gRPC service: one task per Envoy stream drives a [`StreamState`] with the stream's
//! requests and with every new snapshot.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::value::Kind;
use futures::{FutureExt, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::metrics::Metrics;
use crate::xds::grpc::{Request, Requests};
use crate::xds::request::SotwRequest;
use crate::xds::resource::{Group, Snapshot, TypeUrl};
use crate::xds::stream::{
    ClusterResources, DeltaResponse, Mode, RequestOutcome, Response, SotwResponse, StreamState,
};

/// What the server serves: `None` until the source's first full load is translated, because
/// an empty CDS or LDS would wipe a reconnecting Envoy.
pub type SnapshotFeed = watch::Receiver<Option<Arc<Snapshot>>>;

/// Rebuilds, from what the control plane knows now, the clusters of these names that the
/// snapshot no longer has; leaves out those it cannot. A reconnecting SotW Envoy whose routes
/// may still name them keeps them only if they are in every CDS response.
pub type ClusterLookup = Arc<dyn Fn(&[String]) -> Vec<ClusterResources> + Send + Sync>;

/// Becomes `true` when the server stops: every stream then ends cleanly.
pub type Stopping = watch::Receiver<bool>;

/// A reconnecting Envoy sends a request for every type it subscribed to, all at once: once none
/// came for this long, they are all in.
const RECONNECT_QUIET: Duration = Duration::from_millis(100);
/// The longest a reconnecting stream waits for those requests before it answers.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// A stream in its first sync whose Envoy sends nothing for this long gives its turn up: a
/// stalled Envoy, or one that never asks for all the snapshot has for it, must not keep the
/// others from theirs.
const SYNC_STALL: Duration = Duration::from_secs(1);

/// Where a stream is with its first sync, the one that brings its Envoy in step with the
/// snapshot (everything, or on a reconnect whatever changed while it was away). Only so many
/// streams hold a turn at once: a first sync briefly builds state in proportion to the config
/// (the response in flight, the record of what was sent before it matches the snapshot's), and
/// a thousand Envoys syncing at once left that peak behind as heap fragmented across every
/// stream (BENCHMARKS.md, "A fleet").
enum SyncTurn {
    Waiting,
    /// Dropping the permit gives the turn to the next stream waiting.
    Holding {
        _permit: OwnedSemaphorePermit,
    },
    Over,
}

/// TLS for the xDS port: sluice's certificate and key, and, for mutual TLS, the CA whose
/// client certificates it accepts (an Envoy without one is refused in the handshake, before
/// any config is sent). PEM files, read once at start.
#[derive(Debug, Clone)]
pub struct XdsTls {
    pub certificate: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

/// Why the xDS port's TLS cannot be set up. Never quotes a file's content: one holds a key.
#[derive(Debug, thiserror::Error)]
pub enum XdsTlsError {
    #[error("cannot read the xDS TLS {what} {}: {source}; check the path and that sluice may read it", .path.display())]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the xDS TLS {what} {} holds no PEM {expected}; give a PEM file", .path.display())]
    NotPem {
        what: &'static str,
        path: std::path::PathBuf,
        expected: &'static str,
    },
    #[error("the xDS TLS certificate and key do not make a usable server identity: {0}")]
    Identity(#[source] tonic::transport::Error),
}

impl XdsTls {
    /// The server's TLS configuration: TLS 1.2+ and ALPN h2, as gRPC needs.
    pub fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, XdsTlsError> {
        use rustls_pki_types::pem::PemObject;
        let certificate = read_pem(&self.certificate, "certificate")?;
        if rustls_pki_types::CertificateDer::pem_slice_iter(&certificate)
            .next()
            .is_none_or(|c| c.is_err())
        {
            return Err(XdsTlsError::NotPem {
                what: "certificate",
                path: self.certificate.clone(),
                expected: "certificate",
            });
        }
        let key = read_pem(&self.key, "key")?;
        if rustls_pki_types::PrivateKeyDer::from_pem_slice(&key).is_err() {
            return Err(XdsTlsError::NotPem {
                what: "key",
                path: self.key.clone(),
                expected: "private key",
            });
        }
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(certificate, key));
        if let Some(path) = &self.client_ca {
            let ca = read_pem(path, "client CA")?;
            if rustls_pki_types::CertificateDer::pem_slice_iter(&ca)
                .next()
                .is_none_or(|c| c.is_err())
            {
                return Err(XdsTlsError::NotPem {
                    what: "client CA",
                    path: path.clone(),
                    expected: "certificate",
                });
            }
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Ok(config)
    }
}

fn read_pem(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, XdsTlsError> {
    std::fs::read(path).map_err(|source| XdsTlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// One connected Envoy.
#[derive(Debug)]
pub struct Proxy {
    pub node_id: String,
    pub role: Option<String>,
    pub mode: Mode,
    pub connected_at: SystemTime,
    pub state: Mutex<StreamState>,
}

/// Per type, since when a change sent to one Envoy waits for its ACK.
type Converging = BTreeMap<&'static str, Instant>;

impl Proxy {
    pub fn group(&self) -> Group {
        Group::from_role(self.role.as_deref())
    }
}

/// Every connected Envoy, by stream. Status reads their ACKs and NACKs when asked, and
/// learns that there is something new to read from [`ProxyRegistry::subscribe`].
#[derive(Debug)]
pub struct ProxyRegistry {
    proxies: Mutex<BTreeMap<u64, Arc<Proxy>>>,
    next_id: AtomicU64,
    replica_id: String,
    /// Bumped whenever an Envoy connects, disconnects, ACKs or NACKs.
    changes: watch::Sender<()>,
    /// Bumped whenever an Envoy connects or disconnects.
    membership: AtomicU64,
    /// Whether streams record what their Envoys settle (see [`ProxyRegistry::track_settled`]).
    tracks_settled: AtomicBool,
}

impl ProxyRegistry {
    /// A registry for the control-plane replica `replica_id` (a pod name in a cluster), so that
    /// whoever lists the proxies can tell which replica each Envoy is connected to.
    pub fn new(replica_id: impl Into<String>) -> ProxyRegistry {
        ProxyRegistry {
            proxies: Mutex::default(),
            next_id: AtomicU64::default(),
            replica_id: replica_id.into(),
            changes: watch::channel(()).0,
            membership: AtomicU64::default(),
            tracks_settled: AtomicBool::default(),
        }
    }

    /// Makes every stream record the resources its Envoy ACKs or rejects, for someone who
    /// drains them with [`StreamState::take_settled`] (else nothing is recorded).
    pub fn track_settled(&self) {
        self.tracks_settled.store(true, Ordering::Relaxed);
    }

    /// Changes whenever an Envoy connects or disconnects.
    pub fn membership(&self) -> u64 {
        self.membership.load(Ordering::Relaxed)
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub fn proxies(&self) -> Vec<Arc<Proxy>> {
        self.lock().values().cloned().collect()
    }

    /// Wakes when what some Envoy holds may have changed.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_replace(());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Proxy>>> {
        self.proxies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A view of one proxy for `/debug/proxies`.
#[derive(Debug, Serialize)]
pub struct ProxyView {
    pub node_id: String,
    pub role: Option<String>,
    pub group: Group,
    pub mode: Mode,
    pub connected_seconds: u64,
    /// Reconnected, and not answered yet: what it reports holding is still coming in.
    pub settling: bool,
    pub types: BTreeMap<&'static str, crate::xds::TypeStatus>,
}

impl Proxy {
    pub fn view(&self) -> ProxyView {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        ProxyView {
            node_id: self.node_id.clone(),
            role: self.role.clone(),
            group: self.group(),
            mode: self.mode,
            connected_seconds: self
                .connected_at
                .elapsed()
                .map_or(0, |elapsed| elapsed.as_secs()),
            settling: state.settling(),
            types: state
                .status()
                .into_iter()
                .map(|(type_url, status)| (type_url.short(), status))
                .collect(),
        }
    }
}

#[derive(Clone)]
pub struct AdsService {
    snapshots: SnapshotFeed,
    registry: Arc<ProxyRegistry>,
    metrics: Arc<Metrics>,
    clusters: ClusterLookup,
    stopping: Stopping,
    sync_turns: Arc<Semaphore>,
}

impl AdsService {
    /// `concurrent_syncs`: how many Envoys may be in their first sync at once (at least one).
    pub fn new(
        snapshots: SnapshotFeed,
        registry: Arc<ProxyRegistry>,
        metrics: Arc<Metrics>,
        clusters: ClusterLookup,
        stopping: Stopping,
        concurrent_syncs: usize,
    ) -> Self {
        AdsService {
            snapshots,
            registry,
            metrics,
            clusters,
            stopping,
            sync_turns: Arc::new(Semaphore::new(concurrent_syncs.max(1))),
        }
    }
}

fn lock(proxy: &Proxy) -> std::sync::MutexGuard<'_, StreamState> {
    proxy.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request sluice refuses is the Envoy's misconfiguration, worth a warning; a connection
/// that broke is routine.
fn log_failure(node: Option<&str>, status: &Status) {
    let refused = matches!(
        status.code(),
        Code::InvalidArgument | Code::Unimplemented | Code::ResourceExhausted
    );
    if refused {
        tracing::warn!(node, code = ?status.code(), message = status.message(), "refused an xDS request; the stream is closed");
    } else {
        tracing::debug!(node, %status, "xDS stream failed");
    }
}

fn role_of(node: &Node) -> Option<String> {
    let field = node.metadata.as_ref()?.fields.get("role")?;
    match &field.kind {
        Some(Kind::StringValue(role)) => Some(role.clone()),
        _ => None,
    }
}

/// The two protocol variants, seen the same way by the stream loop.
trait XdsRequest: Request + Send + 'static {
    fn node(&self) -> Option<&Node>;
    fn apply(&self, state: &mut StreamState, snapshot: Option<&Snapshot>) -> RequestOutcome;
    fn type_url(&self) -> &str;
}

impl XdsRequest for SotwRequest {
    fn node(&self) -> Option<&Node> {
        SotwRequest::node(self)
    }
    fn apply(&self, state: &mut StreamState, snapshot: Option<&Snapshot>) -> RequestOutcome {
        state.on_sotw_request(self, snapshot)
    }
    fn type_url(&self) -> &str {
        SotwRequest::type_url(self)
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn apply(&self, state: &mut StreamState, _: Option<&Snapshot>) -> RequestOutcome {
        state.on_delta_request(self)
    }
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

/// A stream's responses, ended by an `Err` with the status its Envoy is told when it fails.
pub(super) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl AdsService {
    fn open<Req: XdsRequest, Resp: Send + 'static>(
        &self,
        mode: Mode,
        inbound: Requests<Req>,
        unwrap: fn(Response) -> Option<Resp>,
    ) -> ResponseStream<Resp> {
        // Boxed, so that the channel's block of slots is small: a response is hundreds of bytes.
        let (tx, rx) = mpsc::channel::<Result<Box<Resp>, Status>>(8);
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(status) = service.serve_stream(mode, inbound, &tx, unwrap).await {
                // The Envoy learns why, unless it is gone already.
                let _ = tx.send(Err(status)).await;
            }
        });
        Box::pin(ReceiverStream::new(rx).map(|response| response.map(|response| *response)))
    }

    /// Serves one stream until either side ends it; `Err` when it fails, with the status its
    /// Envoy is told.
    async fn serve_stream<Req: XdsRequest, Resp: Send + 'static>(
        self,
        mode: Mode,
        mut inbound: Requests<Req>,
        tx: &mpsc::Sender<Result<Box<Resp>, Status>>,
        unwrap: fn(Response) -> Option<Resp>,
    ) -> Result<(), Status> {
        // The first request names the node; nothing is served to a stream before it.
        let first = match inbound.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(()),
            Err(status) => {
                log_failure(None, &status);
                return Err(status);
            }
        };
        let role = first.node().and_then(role_of);
        let mut state = StreamState::new(mode, Group::from_role(role.as_deref()));
        if self.registry.tracks_settled.load(Ordering::Relaxed) {
            state.track_settled();
        }
        let proxy = Arc::new(Proxy {
            node_id: first.node().map(|node| node.id.clone()).unwrap_or_default(),
            state: Mutex::new(state),
            role,
            mode,
            connected_at: SystemTime::now(),
        });
        let connected = Instant::now();
        let mut converging = Converging::new();
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        self.registry.lock().insert(id, proxy.clone());
        self.registry.membership.fetch_add(1, Ordering::Relaxed);
        self.registry.changed();
        self.metrics.connected_proxies.inc();
        tracing::info!(node = %proxy.node_id, role = ?proxy.role, group = ?proxy.group(), ?mode, "Envoy connected");

        self.handle_request(&proxy, &first, &mut converging);
        // Envoy's node lists the hundreds of extensions it was built with (some 100 KB as
        // JSON), and the stream lives as long as its Envoy: keep only its id and role.
        drop(first);
        let reconnected = if lock(&proxy).awaits_reconnect() {
            // Boxed, like the wait for a sync turn: a stream's task lives as long as its Envoy,
            // and an awaited future's room in it stays reserved for that long.
            Box::pin(self.await_reconnect(&proxy, &mut inbound, &mut converging)).await
        } else {
            Ok(true)
        };
        let served = match reconnected {
            Ok(true) => {
                self.serve_snapshots(&proxy, inbound, tx, unwrap, connected, converging)
                    .await
            }
            ended => ended.map(drop),
        };
        if let Err(status) = &served {
            log_failure(Some(&proxy.node_id), status);
        }
        self.disconnect(id, &proxy);
        served
    }

    /// Sends the stream what each snapshot holds for it, and takes its Envoy's requests.
    async fn serve_snapshots<Req: XdsRequest, Resp: Send + 'static>(
        &self,
        proxy: &Proxy,
        mut inbound: Requests<Req>,
        tx: &mpsc::Sender<Result<Box<Resp>, Status>>,
        unwrap: fn(Response) -> Option<Resp>,
        connected: Instant,
        mut converging: Converging,
    ) -> Result<(), Status> {
        let mut snapshots = self.snapshots.clone();
        let mut stopping = self.stopping.clone();
        let mut turn = SyncTurn::Waiting;
        let mut heard_at = tokio::time::Instant::now();
        loop {
            if matches!(turn, SyncTurn::Waiting) && snapshots.borrow().is_some() {
                // Boxed: a stream waits for its turn once, and the room an awaited future takes in
                // the stream's task stays reserved for as long as the Envoy is connected.
                match Box::pin(self.await_sync_turn(proxy, &mut inbound, &mut converging)).await? {
                    Some(permit) => {
                        turn = SyncTurn::Holding { _permit: permit };
                        heard_at = tokio::time::Instant::now();
                    }
                    None => return Ok(()),
                }
            }
            let snapshot = snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                self.look_up_clusters(proxy, &snapshot);
                let started = Instant::now();
                let responses = lock(proxy).poll(&snapshot);
                let elapsed = started.elapsed();
                self.metrics.push_seconds.observe(elapsed.as_secs_f64());
                tracing::debug!(node = %proxy.node_id, responses = responses.len(), micros = elapsed.as_micros() as u64, "computed responses");
                // A change older than the stream converges from when the Envoy connected.
                let since = snapshot
                    .changed_at()
                    .map_or(connected, |at| at.max(connected));
                for response in responses {
                    self.count_push(&response, since, &mut converging);
                    let Some(response) = unwrap(response) else {
                        continue;
                    };
                    if tx.send(Ok(Box::new(response))).await.is_err() {
                        return Ok(());
                    }
                }
                if matches!(turn, SyncTurn::Holding { .. }) && lock(proxy).in_step(&snapshot) {
                    turn = SyncTurn::Over;
                }
            }
            let turn_ends =
                matches!(turn, SyncTurn::Holding { .. }).then_some(heard_at + SYNC_STALL);
            tokio::select! {
                message = inbound.message() => match message? {
                    Some(request) => {
                        heard_at = tokio::time::Instant::now();
                        self.handle_request(proxy, &request, &mut converging);
                    }
                    None => return Ok(()),
                },
                changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
                _ = stopping.wait_for(|stopping| *stopping) => {
                    tracing::debug!(node = %proxy.node_id, "closing the xDS stream: sluice is stopping");
                    return Ok(());
                }
                Some(()) = futures::future::OptionFuture::from(turn_ends.map(tokio::time::sleep_until)),
                    if turn_ends.is_some() =>
                {
                    tracing::debug!(node = %proxy.node_id, "giving up a turn at a first sync: the Envoy sent nothing for a second");
                    turn = SyncTurn::Over;
                }
            }
        }
    }

    /// Waits for this stream's turn at its first sync, handling its Envoy's requests meanwhile.
    /// `None` when the stream ends or sluice stops first.
    async fn await_sync_turn<Req: XdsRequest>(
        &self,
        proxy: &Proxy,
        inbound: &mut Requests<Req>,
        converging: &mut Converging,
    ) -> Result<Option<OwnedSemaphorePermit>, Status> {
        let turn = self.sync_turns.clone().acquire_owned();
        tokio::pin!(turn);
        if let Some(permit) = (&mut turn).now_or_never() {
            return Ok(permit.ok());
        }
        tracing::debug!(node = %proxy.node_id, "waiting for a turn at a first sync");
        self.metrics.proxies_awaiting_sync.inc();
        let mut stopping = self.stopping.clone();
        let permit = loop {
            tokio::select! {
                permit = &mut turn => break Ok(permit.ok()),
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle_request(proxy, &request, converging),
                    Ok(None) => break Ok(None),
                    Err(status) => break Err(status),
                },
                _ = stopping.wait_for(|stopping| *stopping) => break Ok(None),
            }
        };
        self.metrics.proxies_awaiting_sync.dec();
        permit
    }

    /// Reads the requests a reconnecting Envoy sends at once, so that the stream answers knowing
    /// all it holds. Returns whether the stream is still open.
    async fn await_reconnect<Req: XdsRequest>(
        &self,
        proxy: &Proxy,
        inbound: &mut Requests<Req>,
        converging: &mut Converging,
    ) -> Result<bool, Status> {
        let deadline = Instant::now() + RECONNECT_MAX;
        loop {
            let quiet = RECONNECT_QUIET.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(quiet, inbound.message()).await {
                Ok(Ok(Some(request))) => self.handle_request(proxy, &request, converging),
                Ok(Ok(None)) => return Ok(false),
                Ok(Err(status)) => return Err(status),
                Err(_quiet) => break,
            }
        }
        lock(proxy).reconnected();
        Ok(true)
    }

    /// Has the control plane rebuild the clusters a reconnected SotW Envoy holds that the
    /// snapshot lacks. The stream's lock is not held meanwhile: the lookup takes the engine's.
    fn look_up_clusters(&self, proxy: &Proxy, snapshot: &Snapshot) {
        let names = lock(proxy).clusters_to_look_up(snapshot);
        if names.is_empty() {
            return;
        }
        let found = (self.clusters)(&names);
        tracing::info!(node = %proxy.node_id, held = ?names, kept = found.len(), "keeping the clusters a reconnected Envoy holds until its routes no longer name them");
        lock(proxy).keep_clusters(found);
    }

    fn disconnect(&self, id: u64, proxy: &Proxy) {
        self.registry.lock().remove(&id);
        self.registry.membership.fetch_add(1, Ordering::Relaxed);
        self.registry.changed();
        self.metrics.connected_proxies.dec();
        tracing::info!(node = %proxy.node_id, "Envoy disconnected");
    }

    fn handle_request(
        &self,
        proxy: &Proxy,
        request: &impl XdsRequest,
        converging: &mut Converging,
    ) {
        let snapshot = self.snapshots.borrow().clone();
        let outcome = request.apply(&mut lock(proxy), snapshot.as_deref());
        if matches!(outcome, RequestOutcome::Acked | RequestOutcome::Nacked(_)) {
            self.registry.changed();
            let type_url = TypeUrl::parse(request.type_url()).map(TypeUrl::short);
            let waiting = type_url.and_then(|t| Some((t, converging.remove(t)?)));
            if let (Some((type_url, since)), RequestOutcome::Acked) = (waiting, &outcome) {
                self.metrics
                    .record_convergence(type_url, since.elapsed().as_secs_f64());
            }
        }
        match outcome {
            RequestOutcome::Nacked(nack) => {
                let type_url = TypeUrl::parse(request.type_url()).map(TypeUrl::short);
                self.metrics.record_reject(type_url.unwrap_or("unknown"));
                tracing::warn!(
                    node = %proxy.node_id,
                    r#type = type_url.unwrap_or("unknown"),
                    version = %nack.version,
                    resources = ?nack.resources,
                    error = %nack.message,
                    "Envoy rejected config (NACK); it keeps its previous version and the rejected one is not sent again"
                );
            }
            RequestOutcome::UnknownType(type_url) => {
                tracing::debug!(node = %proxy.node_id, %type_url, "request for a type sluice does not serve");
            }
            RequestOutcome::StaleNonce | RequestOutcome::Subscribed | RequestOutcome::Acked => {}
        }
    }

    /// Counts a response, and notes since when its type waits for the Envoy's ACK (the oldest
    /// change not ACKed yet).
    fn count_push(&self, response: &Response, since: Instant, converging: &mut Converging) {
        let type_url = match response {
            Response::Sotw(r) => &r.message.type_url,
            Response::Delta(r) => &r.message.type_url,
        };
        if let Some(type_url) = TypeUrl::parse(type_url) {
            self.metrics.record_push(type_url.short());
            converging.entry(type_url.short()).or_insert(since);
        }
    }

    pub(super) fn sotw(&self, inbound: Requests<SotwRequest>) -> ResponseStream<SotwResponse> {
        self.open(Mode::StateOfTheWorld, inbound, |response| match response {
            Response::Sotw(response) => Some(response),
            Response::Delta(_) => None,
        })
    }

    pub(super) fn delta(
        &self,
        inbound: Requests<DeltaDiscoveryRequest>,
    ) -> ResponseStream<DeltaResponse> {
        self.open(Mode::Delta, inbound, |response| match response {
            Response::Delta(response) => Some(response),
            Response::Sotw(_) => None,
        })
    }
}
