//! The operator commands (`get`, `proxy`, `check`, `curl`, `completion`, `rollout`). Each gets
//! its data from a [`Backend`]: today the local one, a running `sluice serve`/`sluice up` reached
//! through its admin API; a cluster backend (the API server, port-forwards to sluice and proxy
//! pods) goes beside it as another variant.

pub mod check;
pub mod completion;
pub mod curl;
pub mod get;
pub mod install;
pub mod proxy;
pub mod rollout;
pub mod route;

mod http;
mod local;
mod model;
mod output;

use std::path::PathBuf;

use clap::Args;

use sluice::cluster::ClusterOptions;
use sluice::routes::status::RouteView;
use sluice::status::IngressView;

pub use model::{Envoy, Health, Proxy, ServedConfig, ServedTarget};

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

/// Where the control plane is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The admin address of a running `sluice serve` or `sluice up` (its `--admin-addr`).
    #[arg(long, default_value = "127.0.0.1:9091", value_name = "HOST:PORT")]
    pub admin_addr: String,
}

impl Target {
    pub async fn connect(&self) -> anyhow::Result<Backend> {
        Ok(Backend::Local(
            local::Local::connect(&self.admin_addr).await?,
        ))
    }
}

/// Where a command's data comes from.
pub enum Backend {
    /// A control plane in file mode, through its admin API.
    Local(local::Local),
}

impl Backend {
    pub async fn ingresses(&self) -> anyhow::Result<Vec<IngressView>> {
        match self {
            Backend::Local(local) => local.ingresses().await,
        }
    }

    pub async fn routes(&self) -> anyhow::Result<Vec<RouteView>> {
        match self {
            Backend::Local(local) => local.routes().await,
        }
    }

    /// The names of the Services of a namespace.
    pub async fn services(&self, namespace: &str) -> anyhow::Result<Vec<String>> {
        match self {
            Backend::Local(local) => local.services(namespace).await,
        }
    }

    /// The external and internal proxies, with where they listen and how many Envoys serve
    /// them. `namespace` is the proxies' namespace (`-n`).
    pub async fn proxies(&self, namespace: &str) -> anyhow::Result<Vec<Proxy>> {
        match self {
            Backend::Local(local) => local.proxies(namespace).await,
        }
    }

    /// Every connected Envoy with its sync state per xDS type.
    pub async fn envoys(&self) -> anyhow::Result<Vec<Envoy>> {
        match self {
            Backend::Local(local) => local.envoys().await,
        }
    }

    pub async fn served_config(&self, target: &ServedTarget) -> anyhow::Result<ServedConfig> {
        match self {
            Backend::Local(local) => local.served_config(target).await,
        }
    }

    /// The admin address of an Envoy of proxy `name`: `explicit` if given, else the one the
    /// control plane knows (locally: the Envoy `sluice up` started).
    pub async fn envoy_admin(
        &self,
        name: &str,
        explicit: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        match self {
            Backend::Local(local) => local.envoy_admin(name, explicit).await,
        }
    }

    pub async fn health(&self) -> anyhow::Result<Health> {
        match self {
            Backend::Local(local) => local.health().await,
        }
    }
}

/// The host to dial for a listener bound to `address`: a wildcard is reached on loopback, and
/// an IPv6 address is bracketed, ready for `host:port` and URLs.
pub fn dial_host(address: &str) -> String {
    let host = match address {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        other => other,
    };
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
