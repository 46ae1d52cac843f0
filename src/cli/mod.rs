//! The operator commands (`get`, `proxy`, `check`, `curl`, `completion`, `rollout`). Each gets its data
//! from a [`Backend`]: a local control plane (`sluice serve --dir`/`sluice up`) through its
//! admin API, or a cluster through the API server and sluice's replicas.

pub mod check;
pub mod completion;
pub mod curl;
pub mod get;
pub mod install;
pub mod proxy;
pub mod rollout;
pub mod route;

mod admin_api;
mod cluster;
mod dial;
mod http;
mod local;
mod model;
mod output;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use sluice::cluster::ClusterOptions;
use sluice::install::knative::INGRESS_CLASS;
use sluice::routes::status::RouteView;
use sluice::status::IngressView;

pub use dial::Dialer;
pub use model::{Envoy, Health, Proxy, ServedConfig, ServedTarget};

/// The namespace of sluice and its proxies, unless `-n` says otherwise.
pub const SYSTEM_NAMESPACE: &str = "gloo-system";
/// The heading of the flags that say where the control plane is, in `--help`.
const WHERE: &str = "Where the control plane is";
/// Where a local control plane's admin API listens unless `--admin-addr` says otherwise.
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9091";

/// How to reach a cluster, as kubectl spells it.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}

impl ClusterArgs {
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(self.options().client().await?)
    }
}

/// Which namespaces a listing covers: kubectl's `-n NS` and `-A`.
#[derive(Debug, Clone, Args)]
pub struct Namespaces {
    /// Only this namespace.
    #[arg(short, long, default_value = "default", conflicts_with = "all")]
    namespace: String,
    /// Every namespace, with a NAMESPACE column.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all: bool,
}

impl Namespaces {
    /// The one namespace asked for, or `None` for all of them.
    pub fn only(&self) -> Option<&str> {
        (!self.all).then_some(self.namespace.as_str())
    }

    pub fn includes(&self, namespace: &str) -> bool {
        self.all || namespace == self.namespace
    }
}

/// Where the control plane is: a local one, or a cluster's.
///
/// `--admin-addr` picks a local control plane, `--kubeconfig` or `--context` a cluster. With
/// none of them, a command asks 127.0.0.1:9091, and if no sluice answers there, the cluster
/// of $KUBECONFIG or ~/.kube/config (or of the pod's service account).
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// A local control plane: the admin address of a running `sluice serve --dir` or `sluice
    /// up` [default: 127.0.0.1:9091]. With none of --admin-addr, --kubeconfig and --context, a
    /// command asks 127.0.0.1:9091, and if no sluice answers there, the cluster of $KUBECONFIG
    /// or ~/.kube/config.
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with_all = ["kubeconfig", "context"],
        help_heading = WHERE
    )]
    pub admin_addr: Option<String>,
    /// A cluster: the kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE", help_heading = WHERE)]
    pub kubeconfig: Option<PathBuf>,
    /// A cluster: the kubeconfig context to use.
    #[arg(long, value_name = "NAME", help_heading = WHERE)]
    pub context: Option<String>,
    /// In a cluster: how to reach sluice's replicas' admin API (found through the
    /// EndpointSlices of Service `sluice`): port-forwards through the API server, as
    /// `kubectl port-forward` (from anywhere the API server is), or their pod IPs (from inside
    /// the cluster, or where the pod network is routed).
    #[arg(long, value_enum, default_value_t, value_name = "HOW", help_heading = WHERE)]
    pub replicas_via: ReplicaAccess,
    /// In a cluster: the ingress class sluice serves (its `serve --ingress-class`); ingresses
    /// of another class are shown as not owned.
    #[arg(long, default_value = INGRESS_CLASS, value_name = "CLASS", help_heading = WHERE)]
    pub ingress_class: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ReplicaAccess {
    #[default]
    PortForward,
    PodIp,
}

impl Target {
    /// The backend, for sluice and its proxies in `namespace` (in a cluster; locally the
    /// proxies' role prefix).
    pub async fn connect(&self, namespace: &str) -> anyhow::Result<Backend> {
        if self.kubeconfig.is_some() || self.context.is_some() {
            return self.cluster(namespace).await;
        }
        if let Some(admin_addr) = &self.admin_addr {
            let local = local::Local::connect(admin_addr, namespace).await?;
            return Ok(Backend::Local(Box::new(local)));
        }
        let local_error = match local::Local::probe(DEFAULT_ADMIN_ADDR, namespace).await {
            Ok(local) => return Ok(Backend::Local(Box::new(local))),
            Err(error) => error,
        };
        match self.cluster(namespace).await {
            Ok(cluster) => Ok(cluster),
            Err(cluster_error) => Err(local_error.context(format!(
                "no control plane found: none answers at {DEFAULT_ADMIN_ADDR} (start `sluice \
                 up`, or pass --admin-addr), and no cluster is configured ({cluster_error:#}; \
                 pass --kubeconfig or --context)"
            ))),
        }
    }

    async fn cluster(&self, namespace: &str) -> anyhow::Result<Backend> {
        let options = ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        };
        let config = options.config().await?;
        Ok(Backend::Cluster(
            cluster::Cluster::new(config, namespace, &self.ingress_class, self.replicas_via)
                .context("cannot make a Kubernetes client")?,
        ))
    }
}

/// Where a command's data comes from.
pub enum Backend {
    /// A control plane in file mode, through its admin API.
    Local(Box<local::Local>),
    /// A cluster: the API server, and every sluice replica's admin API.
    Cluster(cluster::Cluster),
}

impl Backend {
    /// Ingresses of `namespace` (every namespace with `None`) and every ClusterIngress.
    pub async fn ingresses(&self, namespace: Option<&str>) -> anyhow::Result<Vec<IngressView>> {
        let views = match self {
            Backend::Local(local) => local.ingresses().await?,
            Backend::Cluster(cluster) => cluster.ingresses(namespace).await?,
        };
        Ok(views
            .into_iter()
            .filter(|view| {
                namespace.is_none_or(|ns| view.namespace.is_empty() || view.namespace == ns)
            })
            .collect())
    }

    pub async fn routes(&self) -> anyhow::Result<Vec<RouteView>> {
        match self {
            Backend::Local(local) => local.routes().await,
            Backend::Cluster(cluster) => cluster.routes().await,
        }
    }

    /// The names of the Services of a namespace.
    pub async fn services(&self, namespace: &str) -> anyhow::Result<Vec<String>> {
        match self {
            Backend::Local(local) => local.services(namespace).await,
            Backend::Cluster(cluster) => cluster.services(namespace).await,
        }
    }

    /// The external and internal proxies, with where they listen and how many Envoys serve
    /// them.
    pub async fn proxies(&self) -> anyhow::Result<Vec<Proxy>> {
        match self {
            Backend::Local(local) => local.proxies().await,
            Backend::Cluster(cluster) => cluster.proxies().await,
        }
    }

    /// Where port `port` of proxy `name` is reached; `local_cluster` (in a cluster) takes a
    /// node's InternalIP and the Service's node port, as for minikube or kind.
    pub async fn endpoint(
        &self,
        name: &str,
        port: &str,
        local_cluster: bool,
    ) -> anyhow::Result<proxy::Endpoint> {
        match self {
            Backend::Local(local) => local.endpoint(name, port).await,
            Backend::Cluster(cluster) => cluster.endpoint(name, port, local_cluster).await,
        }
    }

    /// Every connected Envoy with its sync state per xDS type (in a cluster, of every
    /// replica).
    pub async fn envoys(&self) -> anyhow::Result<Vec<Envoy>> {
        match self {
            Backend::Local(local) => local.envoys().await,
            Backend::Cluster(cluster) => cluster.envoys().await,
        }
    }

    pub async fn served_config(&self, target: &ServedTarget) -> anyhow::Result<ServedConfig> {
        match self {
            Backend::Local(local) => local.served_config(target).await,
            Backend::Cluster(cluster) => cluster.served_config(target).await,
        }
    }

    /// The admin interface of an Envoy of proxy `name`: `explicit` if given, else the one the
    /// backend knows (locally the Envoy `sluice up` started, in a cluster a running pod of
    /// the proxy's Deployment).
    pub async fn envoy_admin(
        &self,
        name: &str,
        explicit: Option<&str>,
    ) -> anyhow::Result<Option<Dialer>> {
        match self {
            Backend::Local(local) => local.envoy_admin(explicit).await,
            Backend::Cluster(cluster) => cluster.envoy_admin(name, explicit).await.map(Some),
        }
    }

    /// Every Envoy admin interface whose counters `check` reads.
    pub async fn envoy_admins(&self, explicit: Option<&str>) -> anyhow::Result<Vec<Dialer>> {
        match self {
            Backend::Local(local) => Ok(local.envoy_admin(explicit).await?.into_iter().collect()),
            Backend::Cluster(cluster) => cluster.envoy_admins(explicit).await,
        }
    }

    /// The health of the control plane: locally one process, in a cluster each replica.
    pub async fn health(&self) -> anyhow::Result<Vec<Health>> {
        match self {
            Backend::Local(local) => Ok(vec![local.health().await]),
            Backend::Cluster(cluster) => cluster.health().await,
        }
    }

    /// In a cluster, whether both proxy Deployments are available (what, or what is not);
    /// `None` locally.
    pub async fn proxy_deployments(&self) -> Option<Result<String, String>> {
        match self {
            Backend::Local(_) => None,
            Backend::Cluster(cluster) => Some(cluster.proxy_deployments().await),
        }
    }
}

/// How many of `envoys` get the listeners of a proxy that `groups` serve.
fn envoys_of(envoys: &[Envoy], groups: [&str; 2]) -> usize {
    envoys
        .iter()
        .filter(|e| groups.contains(&e.group.as_str()))
        .count()
}

/// The host to dial for a listener bound to `address`: a wildcard is reached on loopback, and
/// an IPv6 address is bracketed, ready for `host:port` and URLs.
pub fn dial_host(address: &str) -> String {
    let host = match address {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        other => other,
    };
    bracket(host)
}

/// An IPv6 address in brackets, ready for host:port.
pub fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_dialed_on_loopback() {
        assert_eq!(dial_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(dial_host("::"), "[::1]");
        assert_eq!(dial_host("10.0.0.1"), "10.0.0.1");
    }
}
