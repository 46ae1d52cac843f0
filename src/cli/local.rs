//! The local backend: a control plane in file mode (`sluice serve`/`sluice up`), reached
//! through its gRPC admin API and its HTTP health endpoints on `--admin-addr`.

use std::collections::BTreeMap;

use anyhow::Context;
use tonic::transport::Channel;

use sluice::admin::api::{self, admin_client::AdminClient};
use sluice::routes::status::RouteView;
use sluice::status::IngressView;

use super::http;
use super::model::{
    Envoy, Health, Nack, Proxy, ProxyPort, ServedConfig, ServedResource, ServedTarget, TypeSync,
    XDS_TYPES,
};

pub struct Local {
    admin_addr: String,
    client: AdminClient<Channel>,
}

/// The proxies a local control plane serves, and the Envoy groups that get their listeners.
const PROXIES: [(&str, [&str; 2]); 2] = [
    ("knative-external-proxy", ["External", "All"]),
    ("knative-internal-proxy", ["Internal", "All"]),
];

impl Local {
    pub async fn connect(admin_addr: &str) -> anyhow::Result<Local> {
        let client = AdminClient::connect(format!("http://{admin_addr}"))
            .await
            .with_context(|| {
                format!(
                    "cannot reach sluice's admin API at {admin_addr}; is `sluice serve` or \
                     `sluice up` running? If it listens elsewhere, pass --admin-addr"
                )
            })?;
        Ok(Local {
            admin_addr: admin_addr.to_owned(),
            client,
        })
    }

    fn failed(&self, what: &str) -> String {
        format!(
            "{what} from sluice at {} failed; is it a sluice admin address (--admin-addr)?",
            self.admin_addr
        )
    }

    pub async fn ingresses(&self) -> anyhow::Result<Vec<IngressView>> {
        let response = self
            .client
            .clone()
            .list_ingresses(api::ListIngressesRequest {})
            .await
            .with_context(|| self.failed("listing ingresses"))?;
        Ok(response
            .into_inner()
            .ingresses
            .into_iter()
            .map(IngressView::from)
            .collect())
    }

    pub async fn routes(&self) -> anyhow::Result<Vec<RouteView>> {
        let response = self
            .client
            .clone()
            .list_routes(api::ListRoutesRequest {})
            .await
            .with_context(|| self.failed("listing routes"))?;
        Ok(response
            .into_inner()
            .routes
            .into_iter()
            .map(RouteView::from)
            .collect())
    }

    /// The names of the Services of `namespace`.
    pub async fn services(&self, namespace: &str) -> anyhow::Result<Vec<String>> {
        let response = self
            .client
            .clone()
            .list_services(api::ListServicesRequest {
                namespace: namespace.to_owned(),
            })
            .await
            .with_context(|| self.failed("listing services"))?;
        Ok(response.into_inner().names)
    }

    async fn server(&self) -> anyhow::Result<api::Server> {
        let response = self
            .client
            .clone()
            .get_server(api::GetServerRequest {})
            .await
            .with_context(|| self.failed("asking for the server's setup"))?;
        Ok(response.into_inner())
    }

    pub async fn proxies(&self, namespace: &str) -> anyhow::Result<Vec<Proxy>> {
        let server = self.server().await?;
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
                    namespace: namespace.to_owned(),
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
                    envoys: envoys
                        .iter()
                        .filter(|e| groups.contains(&e.group.as_str()))
                        .count(),
                }
            })
            .collect())
    }

    pub async fn envoys(&self) -> anyhow::Result<Vec<Envoy>> {
        let response = self
            .client
            .clone()
            .list_envoys(api::ListEnvoysRequest {})
            .await
            .with_context(|| self.failed("listing the connected Envoys"))?;
        Ok(response
            .into_inner()
            .envoys
            .into_iter()
            .map(|envoy| {
                let mut types: BTreeMap<String, TypeSync> = XDS_TYPES
                    .iter()
                    .map(|t| ((*t).to_owned(), TypeSync::not_sent()))
                    .collect();
                for sync in envoy.types {
                    types.insert(
                        sync.r#type,
                        TypeSync {
                            status: sync.status,
                            acked_version: sync.acked_version,
                            acked_resources: sync.acked_resources,
                            last_nack: sync.last_nack.map(|nack| Nack {
                                version: nack.version,
                                message: nack.message,
                                resources: nack.resources,
                            }),
                        },
                    );
                }
                Envoy {
                    node: envoy.node_id,
                    role: Some(envoy.role).filter(|r| !r.is_empty()),
                    group: envoy.group,
                    mode: envoy.mode,
                    replica: envoy.replica_id,
                    connected_seconds: envoy.connected_seconds,
                    types,
                }
            })
            .collect())
    }

    pub async fn served_config(&self, target: &ServedTarget) -> anyhow::Result<ServedConfig> {
        use api::get_served_config_request::Target;
        let (node, role, request) = match target {
            ServedTarget::Node(node) => (Some(node.clone()), None, Target::NodeId(node.clone())),
            ServedTarget::Role(role) => (None, Some(role.clone()), Target::Role(role.clone())),
        };
        let response = self
            .client
            .clone()
            .get_served_config(api::GetServedConfigRequest {
                target: Some(request),
            })
            .await;
        let response = match response {
            Err(status) if status.code() == tonic::Code::NotFound => anyhow::bail!(
                "{}; `sluice proxy status` lists the connected Envoys",
                status.message()
            ),
            other => other.with_context(|| self.failed("asking for the served config"))?,
        }
        .into_inner();
        let resources = response
            .resources
            .into_iter()
            .map(|served| {
                let resource = if served.json.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&served.json).with_context(|| {
                        format!("the served {} {} is not JSON", served.r#type, served.name)
                    })?
                };
                Ok(ServedResource {
                    kind: served.r#type,
                    name: served.name,
                    version: served.version,
                    status: Some(served.status).filter(|s| !s.is_empty()),
                    nack_message: Some(served.nack_message).filter(|m| !m.is_empty()),
                    resource,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ServedConfig {
            node,
            role,
            group: response.group,
            resources,
        })
    }

    /// Locally every proxy is served by the same Envoys, so `name` does not choose one: the
    /// address is `explicit`, else the Envoy that `sluice up` started.
    pub async fn envoy_admin(
        &self,
        _name: &str,
        explicit: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        if let Some(explicit) = explicit {
            return Ok(Some(explicit.to_owned()));
        }
        let server = self.server().await?;
        Ok(Some(server.envoy_admin_address).filter(|a| !a.is_empty()))
    }

    pub async fn health(&self) -> anyhow::Result<Health> {
        let probe =
            async |path: &str| match http::get(&self.admin_addr, "localhost", path, None).await {
                Ok(reply) if reply.status.is_success() => Ok(()),
                Ok(reply) => Err(format!(
                    "{path} answered {}: {}",
                    reply.status,
                    reply.text().trim()
                )),
                Err(error) => Err(format!("{error:#}")),
            };
        Ok(Health {
            at: self.admin_addr.clone(),
            healthy: probe("/healthz").await,
            ready: probe("/readyz").await,
        })
    }
}
