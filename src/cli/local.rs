//! The local backend: a control plane in file mode (`sluice serve`/`sluice up`), reached
//! through its admin API on `--admin-addr`.

use std::time::Duration;

use anyhow::{Context, bail};

use sluice::admin::api;
use sluice::routes::status::RouteView;
use sluice::status::IngressView;

use super::admin_api::AdminApi;
use super::dial::Dialer;
use super::model::{Envoy, Health, Proxy, ProxyPort, ServedConfig, ServedTarget};
use super::proxy::Endpoint;

pub struct Local {
    admin_addr: String,
    api: AdminApi,
    /// The proxies' namespace, as `-n` says: their role is `<namespace>~<name>`.
    namespace: String,
}

/// The proxies a local control plane serves, and the Envoy groups that get their listeners.
pub const PROXIES: [(&str, [&str; 2]); 2] = [
    ("knative-external-proxy", ["External", "All"]),
    ("knative-internal-proxy", ["Internal", "All"]),
];

/// How long the default admin address may take to answer before a command looks for a
/// cluster instead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Local {
    pub async fn connect(admin_addr: &str, namespace: &str) -> anyhow::Result<Local> {
        let api = AdminApi::connect(
            Dialer::Tcp(admin_addr.to_owned()),
            "is it a sluice admin address (--admin-addr)?",
        )
        .await
        .with_context(|| {
            format!(
                "cannot reach sluice's admin API at {admin_addr}; is `sluice serve` or \
                 `sluice up` running? If it listens elsewhere, pass --admin-addr"
            )
        })?;
        Ok(Local {
            admin_addr: admin_addr.to_owned(),
            api,
            namespace: namespace.to_owned(),
        })
    }

    /// A control plane at `admin_addr` that answers as sluice does, within a few seconds.
    pub async fn probe(admin_addr: &str, namespace: &str) -> anyhow::Result<Local> {
        tokio::time::timeout(PROBE_TIMEOUT, async {
            let local = Local::connect(admin_addr, namespace).await?;
            local.api.server().await?;
            Ok(local)
        })
        .await
        .with_context(|| format!("sluice's admin API at {admin_addr} did not answer"))?
    }

    pub async fn ingresses(&self) -> anyhow::Result<Vec<IngressView>> {
        self.api.ingresses().await
    }

    pub async fn routes(&self) -> anyhow::Result<Vec<RouteView>> {
        self.api.routes().await
    }

    /// The names of the Services of `namespace`.
    pub async fn services(&self, namespace: &str) -> anyhow::Result<Vec<String>> {
        self.api.services(namespace).await
    }

    pub async fn proxies(&self) -> anyhow::Result<Vec<Proxy>> {
        let server = self.api.server().await?;
        let envoys = self.envoys().await?;
        Ok(PROXIES
            .into_iter()
            .map(|(name, groups)| {
                let listeners: Vec<&api::Listener> = server
                    .listeners
                    .iter()
                    .filter(|l| l.proxy == name)
                    .collect();
                let mut addresses: Vec<String> = listeners
                    .iter()
                    .map(|l| super::dial_host(&l.address))
                    .collect();
                addresses.dedup();
                Proxy {
                    name: name.to_owned(),
                    namespace: self.namespace.clone(),
                    addresses,
                    ports: listeners
                        .iter()
                        .map(|l| ProxyPort {
                            name: l.port_name.clone(),
                            port: u16::try_from(l.port).unwrap_or_default(),
                            listener: l.name.clone(),
                            served: l.served,
                        })
                        .collect(),
                    envoys: super::envoys_of(&envoys, groups),
                }
            })
            .collect())
    }

    /// The listener of proxy `name` whose port is named `port`.
    pub async fn endpoint(&self, name: &str, port: &str) -> anyhow::Result<Endpoint> {
        let proxies = self.proxies().await?;
        let Some(proxy) = proxies.iter().find(|p| p.name == name) else {
            let known: Vec<&str> = proxies.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "proxy {name} not found; this control plane serves {} (pick one with --name)",
                known.join(" and ")
            );
        };
        let Some(found) = proxy.port(port) else {
            let known: Vec<&str> = proxy.ports.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "named port not found: {name} has no port {port:?}; its ports are {} (--port)",
                known.join(", ")
            );
        };
        if !found.served {
            eprintln!(
                "warning: the {} listener of {name} is not served yet (HTTPS is, once an \
                 ingress has a valid TLS secret); nothing answers there now",
                found.listener
            );
        }
        let host = proxy
            .addresses
            .first()
            .with_context(|| format!("{name} has no address"))?;
        Ok(Endpoint::new(&found.name, format!("{host}:{}", found.port)))
    }

    pub async fn envoys(&self) -> anyhow::Result<Vec<Envoy>> {
        self.api.envoys().await
    }

    pub async fn served_config(&self, target: &ServedTarget) -> anyhow::Result<ServedConfig> {
        match self.api.served_config(target).await? {
            Some(config) => Ok(config),
            None => bail!(
                "no Envoy with node id {:?} is connected to this control plane; `sluice proxy \
                 status` lists the connected Envoys",
                match target {
                    ServedTarget::Node(node) | ServedTarget::Role(node) => node,
                }
            ),
        }
    }

    /// Locally every proxy is served by the same Envoys, so there is one admin to ask:
    /// `explicit`, else the Envoy that `sluice up` started.
    pub async fn envoy_admin(&self, explicit: Option<&str>) -> anyhow::Result<Option<Dialer>> {
        if let Some(explicit) = explicit {
            return Ok(Some(Dialer::Tcp(explicit.to_owned())));
        }
        let server = self.api.server().await?;
        Ok(Some(server.envoy_admin_address)
            .filter(|a| !a.is_empty())
            .map(Dialer::Tcp))
    }

    pub async fn health(&self) -> Health {
        super::admin_api::health(
            &Dialer::Tcp(self.admin_addr.clone()),
            self.admin_addr.clone(),
        )
        .await
    }
}
