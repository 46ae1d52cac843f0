//! The thin runtime of `sluice serve`: it starts the parts and wires them, in either mode. A
//! source (files or the API server) feeds the engine; the engine publishes snapshots to the
//! ADS server; the admin server reads both; in Kubernetes mode the status writer reports back
//! to the API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::admin::{self, AdminState, ServerInfo};
use crate::cluster::{ClusterError, ClusterOptions};
use crate::engine::Engine;
use crate::knative::IngressKey;
use crate::metrics::Metrics;
use crate::routes::RouteConfig;
use crate::source::Batches;
use crate::source::file::{self, FileSourceError};
use crate::source::kube::{self, KubeSourceError, KubeSourceOptions};
use crate::status::replicas::{ReplicaReport, ReportUpdate};
use crate::status::route_writer::{RouteStatusSource, RouteStatusWriter};
use crate::status::writer::{
    Consumer, StatusSource, StatusWriter, Timing, WriterConfig, WriterError,
};
use crate::status::{Dirty, Envoys, LoadBalancers};
use crate::translate::TranslateConfig;
use crate::xds::{
    AdsServer, AdsService, ClusterLookup, CsdsService, ProxyRegistry, XdsTls, XdsTlsError,
};

/// Where the objects come from.
#[derive(Debug, Clone)]
pub enum SourceOptions {
    /// A directory of manifests.
    Files { dir: PathBuf },
    /// The API server.
    Kubernetes(KubernetesOptions),
}

#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    pub cluster: ClusterOptions,
    /// Watch only these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// sluice's own namespace: its Lease and its replicas' reports.
    pub system_namespace: String,
    pub timing: Timing,
    /// Also serve Knative Serving's Routes, and write their status (`--serve-routes`).
    pub serve_routes: bool,
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub source: SourceOptions,
    /// This process's name among the replicas (its pod name in a cluster).
    pub replica: String,
    /// The admin address of an Envoy started beside sluice (`sluice up`), for the CLI.
    pub envoy_admin_addr: Option<String>,
    pub xds_addr: SocketAddr,
    /// TLS (and mutual TLS) on the xDS port; plain gRPC when `None`.
    pub xds_tls: Option<XdsTls>,
    /// How many Envoys may be in their first sync at once.
    pub concurrent_syncs: usize,
    pub admin_addr: SocketAddr,
    /// Serve `/debug/*` to clients that are not on loopback too.
    pub debug_remote: bool,
    pub ingress_class: String,
    /// sluice's own namespace: its `config-sluice` ConfigMap holds the gateway options.
    pub system_namespace: String,
    pub translate: TranslateConfig,
    pub balancers: LoadBalancers,
    /// How Routes become Ingresses.
    pub routes: RouteConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr} for {what}: {source}; is another sluice running? pick another \
         address with --{what}-addr"
    )]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Files(#[from] FileSourceError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Kubernetes(#[from] KubeSourceError),
    #[error(transparent)]
    StatusWriter(#[from] WriterError),
    #[error(transparent)]
    XdsTls(#[from] XdsTlsError),
    #[error("the xDS server failed: {0}")]
    Xds(#[source] tonic::transport::Error),
    #[error("the admin server failed: {0}")]
    Admin(#[source] std::io::Error),
    #[error("the source stopped: {0}")]
    SourceStopped(String),
    #[error("the servers did not stop within {STOP_GRACE:?}")]
    StopTimeout,
}

/// Serves until `shutdown` resolves, then stops: in Kubernetes mode it hands the Lease over.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::default());
    let (mut engine, feed) = Engine::new(
        &options.ingress_class,
        options.translate.clone(),
        options.balancers.clone(),
        metrics.clone(),
    );
    engine.set_system_namespace(&options.system_namespace);
    engine.configure_routes(options.routes.clone());
    let engine = Arc::new(Mutex::new(engine));
    let registry = Arc::new(ProxyRegistry::new(options.replica.clone()));
    let xds_listener = bind(options.xds_addr, "xds").await?;
    let admin_listener = bind(options.admin_addr, "admin").await?;

    let (changed, _) = watch::channel(());
    let mut route_writer = None;
    let (batches, writer, described) = match &options.source {
        SourceOptions::Files { dir } => {
            (file::watch(dir.clone())?, None, dir.display().to_string())
        }
        SourceOptions::Kubernetes(kubernetes) => {
            let client = kubernetes.cluster.client().await?;
            let batches = kube::watch(
                client.clone(),
                KubeSourceOptions {
                    namespaces: kubernetes.namespaces.clone(),
                    ingress_class: options.ingress_class.clone(),
                    serve_routes: kubernetes.serve_routes,
                    system_namespace: options.system_namespace.clone(),
                },
            )
            .await?;
            registry.track_settled();
            let served = Arc::new(Served {
                engine: engine.clone(),
                registry: registry.clone(),
                dirt: Mutex::default(),
            });
            let writer = StatusWriter::start(
                client.clone(),
                WriterConfig {
                    namespace: kubernetes.system_namespace.clone(),
                    replica: options.replica.clone(),
                    lease_name: "sluice-leader".to_owned(),
                    timing: kubernetes.timing,
                },
                served.clone(),
                changed.subscribe(),
                metrics.clone(),
            )
            .await?;
            if kubernetes.serve_routes {
                route_writer = Some(RouteStatusWriter::start(
                    client,
                    served,
                    writer.others.clone(),
                    (writer.leader.clone(), changed.subscribe()),
                    kubernetes.timing.startup_grace,
                    metrics.clone(),
                ));
            }
            (batches, Some(writer), "the API server".to_owned())
        }
    };
    let others = writer
        .as_ref()
        .map(|writer| writer.others.clone())
        .unwrap_or_default();

    let (stopper, stopping) = watch::channel(false);
    let cluster_engine = engine.clone();
    // A reconnecting Envoy's clusters, rebuilt by name, so that make-before-break holds for
    // routes this process never sent.
    let clusters: ClusterLookup = Arc::new(move |names| {
        let engine = cluster_engine.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter()
            .filter_map(|name| engine.cluster_named(name))
            .collect()
    });
    let csds = CsdsService::new(registry.clone(), feed.clone());
    let ads = AdsServer::new(AdsService::new(
        feed,
        registry.clone(),
        metrics.clone(),
        clusters,
        stopping.clone(),
        options.concurrent_syncs,
    ));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &options.xds_tls {
        server = server
            .tls_config(tls.server_config()?)
            .map_err(|error| ServeError::XdsTls(XdsTlsError::Identity(error)))?;
    }
    let mut xds = std::pin::pin!(
        server
            .add_service(ads)
            .add_service(csds)
            .serve_with_incoming_shutdown(
                // Each response must leave at once: with Nagle's algorithm its last segment
                // waits for Envoy's delayed ACK, 40 ms per response. The builder's
                // `tcp_nodelay` only applies to listeners tonic binds itself.
                TcpIncoming::from(xds_listener).with_nodelay(Some(true)),
                stopped(stopping.clone()),
            )
    );
    let mut admin = std::pin::pin!(
        axum::serve(
            admin_listener,
            admin::router(AdminState {
                engine: engine.clone(),
                registry: registry.clone(),
                metrics,
                others,
                server: ServerInfo {
                    xds_addr: options.xds_addr,
                    listeners: options.translate.clone(),
                    envoy_admin_addr: options.envoy_admin_addr.clone(),
                },
                debug_remote: options.debug_remote,
            })
            .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped(stopping))
        .into_future()
    );
    tracing::info!(source = %described, xds = %options.xds_addr, admin = %options.admin_addr, "sluice serving");
    let failed = tokio::select! {
        result = &mut xds => Some(result.map_err(ServeError::Xds)),
        result = &mut admin => Some(result.map_err(ServeError::Admin)),
        () = follow(batches, &engine, &changed) => Some(Err(ServeError::SourceStopped(described))),
        () = forward(registry.subscribe(), &changed) => None,
        () = shutdown => {
            tracing::info!("stopping: closing the xDS streams");
            None
        }
    };
    if let Some(route_writer) = route_writer {
        route_writer.stop();
    }
    if let Some(writer) = writer {
        writer.shutdown().await;
    }
    if let Some(result) = failed {
        return result;
    }
    // Every stream ends with its last response sent, then both servers finish.
    stopper.send_replace(true);
    let (xds, admin) = tokio::time::timeout(STOP_GRACE, async { tokio::join!(xds, admin) })
        .await
        .map_err(|_| ServeError::StopTimeout)?;
    xds.map_err(ServeError::Xds)?;
    admin.map_err(ServeError::Admin)
}

/// How long a stop waits for the streams and servers to finish.
const STOP_GRACE: Duration = Duration::from_secs(10);

async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, what, source })
}

/// Applies the source's batches, and says that statuses may have changed.
async fn follow(mut batches: Batches, engine: &Mutex<Engine>, changed: &watch::Sender<()>) {
    while let Some(batch) = batches.recv().await {
        let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        engine.note_source_health(batch.kept, &batch.healthy);
        let report = engine.apply(batch.events, true);
        drop(engine);
        changed.send_replace(());
        tracing::info!(
            initial = batch.initial,
            objects = report.objects_changed,
            resources = report.resources_changed,
            problems = batch.problems,
            micros = report.translation.as_micros() as u64,
            "applied source changes"
        );
    }
}

/// How long the news of Envoys' ACKs waits for more before statuses are looked at again.
const STATUS_COALESCE: Duration = Duration::from_millis(10);

/// Passes on that some Envoy ACKed, rejected, came or went. Never ends while sluice runs.
async fn forward(mut proxies: watch::Receiver<()>, changed: &watch::Sender<()>) {
    while proxies.changed().await.is_ok() {
        // A fleet ACKs a change in a burst, thousands of ACKs: waking for each cost a twentieth
        // of sluice's CPU. What comes in meanwhile is forwarded with this one.
        tokio::time::sleep(STATUS_COALESCE).await;
        proxies.borrow_and_update();
        changed.send_replace(());
    }
    std::future::pending().await
}

/// What the status writer reads: the engine's verdicts over this replica's Envoys, and which
/// ingresses changes and Envoys' verdicts concern.
struct Served {
    engine: Arc<Mutex<Engine>>,
    registry: Arc<ProxyRegistry>,
    dirt: Mutex<Dirt>,
}

/// What changed, as each consumer has yet to see it.
#[derive(Default)]
struct Dirt {
    /// The registry's membership when last looked at: an Envoy coming or going concerns every
    /// ingress.
    membership: u64,
    writer: Dirty,
    report: Dirty,
}

impl Served {
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StatusSource for Served {
    fn take_dirty(&self, consumer: Consumer) -> Dirty {
        let mut engine = self.engine();
        let mut fresh = engine.take_status_dirty();
        let mut dirt = self.dirt.lock().unwrap_or_else(|p| p.into_inner());
        let membership = self.registry.membership();
        if membership != dirt.membership {
            dirt.membership = membership;
            fresh.mark_all();
        }
        for proxy in self.registry.proxies() {
            let settled = proxy
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_settled();
            if !fresh.is_all() {
                for (type_url, name) in settled {
                    fresh.extend(engine.claimants(type_url, &name));
                }
            }
        }
        drop(engine);
        dirt.writer.merge(fresh.clone());
        dirt.report.merge(fresh);
        match consumer {
            Consumer::Writer => dirt.writer.take(),
            Consumer::Report => dirt.report.take(),
        }
    }

    fn knative_statuses(
        &self,
        others: &[ReplicaReport],
        scope: &Dirty,
        now: &str,
        each: &mut dyn FnMut(
            &IngressKey,
            crate::knative::IngressStatus,
            Option<&crate::knative::IngressStatus>,
        ),
    ) {
        let proxies = self.registry.proxies();
        let envoys = Envoys {
            local: &proxies,
            remote: others,
        };
        self.engine().knative_statuses(envoys, scope, now, each);
    }

    fn local_report(&self, scope: &Dirty) -> ReportUpdate {
        let proxies = self.registry.proxies();
        self.engine().local_report(&proxies, scope)
    }
}

impl RouteStatusSource for Served {
    fn route_statuses(
        &self,
        others: &[ReplicaReport],
        now: &str,
        each: &mut dyn FnMut(
            &crate::world::NsName,
            crate::knative::RouteStatus,
            Option<&crate::knative::RouteStatus>,
        ),
    ) {
        let proxies = self.registry.proxies();
        let envoys = Envoys {
            local: &proxies,
            remote: others,
        };
        self.engine().route_statuses(envoys, now, each);
    }
}

/// The default replica identity: the pod's name in a cluster, else the host's.
pub fn default_replica() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}
