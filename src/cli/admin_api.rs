//! One sluice process's admin API: the gRPC service `sluice.admin.v1.Admin` and the health
//! endpoints beside it, reached through a [`Dialer`] (a local address, or a replica's pod).

use std::collections::BTreeMap;

use anyhow::Context;
use tonic::transport::Channel;

use sluice::admin::api::{self, admin_client::AdminClient};
use sluice::routes::status::RouteView;
use sluice::status::IngressView;

use super::dial::Dialer;
use super::model::{
    Envoy, Health, Nack, ServedConfig, ServedResource, ServedTarget, TypeSync, XDS_TYPES,
};

pub struct AdminApi {
    dialer: Dialer,
    client: AdminClient<Channel>,
    /// What to try when a call fails, for the error message.
    hint: &'static str,
}

impl AdminApi {
    pub async fn connect(dialer: Dialer, hint: &'static str) -> anyhow::Result<AdminApi> {
        let channel = dialer.channel().await?;
        Ok(AdminApi {
            dialer,
            // tonic's default 4 MiB limit is one listing of a few thousand ingresses.
            client: AdminClient::new(channel).max_decoding_message_size(usize::MAX),
            hint,
        })
    }

    fn failed(&self, what: &str) -> String {
        format!(
            "{what} from sluice at {} failed; {}",
            self.dialer.describe(),
            self.hint
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

    pub async fn server(&self) -> anyhow::Result<api::Server> {
        let response = self
            .client
            .clone()
            .get_server(api::GetServerRequest {})
            .await
            .with_context(|| self.failed("asking for the server's setup"))?;
        Ok(response.into_inner())
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
            .map(envoy)
            .collect())
    }

    /// What this process serves to `target`; `None` when the target is a node that is not
    /// connected to it.
    pub async fn served_config(
        &self,
        target: &ServedTarget,
    ) -> anyhow::Result<Option<ServedConfig>> {
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
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
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
        Ok(Some(ServedConfig {
            node,
            role,
            group: response.group,
            resources,
        }))
    }
}

/// `/healthz` and `/readyz` of the sluice at `dialer`; `at` names it in messages.
pub async fn health(dialer: &Dialer, at: String) -> Health {
    let probe = async |path: &str| match dialer.get(path).await {
        Ok(reply) if reply.status.is_success() => Ok(()),
        Ok(reply) => Err(format!(
            "{path} answered {}: {}",
            reply.status,
            reply.text().trim()
        )),
        Err(error) => Err(format!("{error:#}")),
    };
    let options = match AdminApi::connect(dialer.clone(), "is it running?").await {
        Ok(api) => match api.server().await {
            Ok(server) if server.option_problems.is_empty() => Ok(server.option_notes),
            Ok(server) => Err(server.option_problems.join("; ")),
            Err(error) => Err(format!("{error:#}")),
        },
        Err(error) => Err(format!("{error:#}")),
    };
    Health {
        at,
        healthy: probe("/healthz").await,
        ready: probe("/readyz").await,
        options,
    }
}

fn envoy(envoy: api::Envoy) -> Envoy {
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
}
