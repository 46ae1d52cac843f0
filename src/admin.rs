//! The admin address: health, readiness, metrics and debug views over HTTP, and sluice's gRPC
//! admin API (proto/sluice/admin/v1) on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::engine::Engine;
use crate::knative::{TrafficTarget, Visibility};
use crate::metrics::Metrics;
use crate::routes::status::RouteView;
use crate::status::writer::OtherReplicas;
use crate::status::{Condition, Envoys, IngressStatus, IngressView, LoadBalancer, RuleView};
use crate::translate::{ListenerKind, TranslateConfig};
use crate::xds::{
    Group, ProxyRegistry, ProxyView, SyncStatus, TypeUrl, served_to, served_to_group, to_json,
};

pub mod api {
    tonic::include_proto!("sluice.admin.v1");
}

#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Mutex<Engine>>,
    pub registry: Arc<ProxyRegistry>,
    pub metrics: Arc<Metrics>,
    /// What the other replicas' Envoys ACKed (none in file mode).
    pub others: Arc<OtherReplicas>,
    pub server: ServerInfo,
    /// Whether `/debug/*` answers clients that are not on loopback (`--debug-remote`).
    pub debug_remote: bool,
}

/// What the process knows of its own setup, for `GetServer`.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub xds_addr: SocketAddr,
    pub listeners: TranslateConfig,
    /// The admin address of the Envoy that `sluice up` started.
    pub envoy_admin_addr: Option<String>,
}

impl AdminState {
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ingresses(&self) -> Vec<IngressView> {
        let proxies = self.registry.proxies();
        let others = self.others.current();
        self.engine().ingresses(Envoys {
            local: &proxies,
            remote: &others,
        })
    }

    pub fn routes(&self) -> Vec<RouteView> {
        let proxies = self.registry.proxies();
        let others = self.others.current();
        self.engine().routes(Envoys {
            local: &proxies,
            remote: &others,
        })
    }
}

/// The HTTP endpoints and the gRPC admin API, as one router.
pub fn router(state: AdminState) -> Router {
    let grpc = tonic::service::Routes::new(api::admin_server::AdminServer::new(state.clone()))
        .into_axum_router();
    let debug = Router::new()
        .route("/debug/config", get(debug_config))
        .route("/debug/proxies", get(debug_proxies))
        .route_layer(middleware::from_fn_with_state(state.clone(), loopback_only));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(debug)
        .with_state(state)
        .merge(grpc)
}

/// `/debug/*` shows the whole served config and every Envoy: unless `--debug-remote` says
/// otherwise it answers only clients on this host, even when the admin address is one that
/// Prometheus and the other replicas reach. A request whose peer is unknown is refused too.
async fn loopback_only(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_canonical());
    if state.debug_remote || peer.is_some_and(|ip| ip.is_loopback()) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        "/debug/* answers only on loopback; use `kubectl port-forward`, or start sluice with \
         --debug-remote to serve it to other hosts\n",
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.engine().ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first full load of the source is not translated yet\n",
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Which resources `/debug/config` shows: `?type=RDS` (the short type name) and `?name=`, a
/// substring of the resource name. At thousands of ingresses the whole config is large.
#[derive(Deserialize)]
struct ConfigFilter {
    r#type: Option<String>,
    name: Option<String>,
}

/// The served resources as Envoy JSON, with their versions: shared types once, the per-group
/// types (listeners, scopes) per group.
async fn debug_config(
    State(state): State<AdminState>,
    Query(filter): Query<ConfigFilter>,
) -> impl IntoResponse {
    let engine = state.engine();
    let snapshot = engine.snapshot();
    let wanted = |type_url: TypeUrl| {
        filter
            .r#type
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case(type_url.short()))
    };
    let render = |group: Group, type_url: TypeUrl| -> serde_json::Map<String, serde_json::Value> {
        snapshot
            .resources(group, type_url)
            .iter()
            .filter(|(name, _)| filter.name.as_deref().is_none_or(|n| name.contains(n)))
            .map(|(name, resource)| {
                let entry = serde_json::json!({
                    "version": resource.version,
                    "resource": to_json(resource),
                });
                (name.clone(), entry)
            })
            .collect()
    };
    let mut shared = serde_json::Map::new();
    let mut groups: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for type_url in TypeUrl::ALL.into_iter().filter(|t| wanted(*t)) {
        if type_url.is_per_group() {
            for group in Group::ALL {
                groups
                    .entry(format!("{group:?}"))
                    .or_default()
                    .insert(type_url.short().to_owned(), render(group, type_url).into());
            }
        } else {
            shared.insert(
                type_url.short().to_owned(),
                render(Group::All, type_url).into(),
            );
        }
    }
    Json(serde_json::json!({ "ready": engine.ready(), "shared": shared, "groups": groups }))
}

async fn debug_proxies(State(state): State<AdminState>) -> Json<Vec<ProxyView>> {
    Json(state.registry.proxies().iter().map(|p| p.view()).collect())
}

#[tonic::async_trait]
impl api::admin_server::Admin for AdminState {
    async fn list_ingresses(
        &self,
        _request: tonic::Request<api::ListIngressesRequest>,
    ) -> Result<tonic::Response<api::ListIngressesResponse>, tonic::Status> {
        let ingresses = self
            .ingresses()
            .into_iter()
            .map(api::Ingress::from)
            .collect();
        Ok(tonic::Response::new(api::ListIngressesResponse {
            ingresses,
        }))
    }

    async fn get_server(
        &self,
        _request: tonic::Request<api::GetServerRequest>,
    ) -> Result<tonic::Response<api::Server>, tonic::Status> {
        let engine = self.engine();
        let config = &self.server.listeners;
        let address = engine
            .options()
            .listen_addresses
            .as_ref()
            .and_then(|addresses| addresses.first())
            .map_or_else(|| config.listen_address.clone(), ToString::to_string);
        let listeners = ListenerKind::ALL
            .into_iter()
            .map(|kind| {
                let (name, port) = config.listener(kind);
                let group = if kind.is_external() {
                    Group::External
                } else {
                    Group::Internal
                };
                let served = engine
                    .snapshot()
                    .resources(group, TypeUrl::Listener)
                    .contains_key(name);
                api::Listener {
                    name: name.to_owned(),
                    proxy: if kind.is_external() {
                        "knative-external-proxy"
                    } else {
                        "knative-internal-proxy"
                    }
                    .to_owned(),
                    port_name: match kind {
                        ListenerKind::External | ListenerKind::Internal => "http",
                        ListenerKind::ExternalTls | ListenerKind::InternalTls => "https",
                    }
                    .to_owned(),
                    address: address.clone(),
                    port: u32::from(port),
                    served,
                }
            })
            .collect();
        Ok(tonic::Response::new(api::Server {
            replica_id: self.registry.replica_id().to_owned(),
            ready: engine.ready(),
            xds_address: self.server.xds_addr.to_string(),
            envoy_admin_address: self.server.envoy_admin_addr.clone().unwrap_or_default(),
            listeners,
            option_problems: engine.option_problems(),
            option_notes: engine.options().notes(),
        }))
    }

    async fn list_envoys(
        &self,
        _request: tonic::Request<api::ListEnvoysRequest>,
    ) -> Result<tonic::Response<api::ListEnvoysResponse>, tonic::Status> {
        let replica_id = self.registry.replica_id();
        let envoys = self
            .registry
            .proxies()
            .iter()
            .map(|proxy| {
                let view = proxy.view();
                api::Envoy {
                    node_id: view.node_id,
                    role: view.role.unwrap_or_default(),
                    group: format!("{:?}", view.group),
                    mode: format!("{:?}", view.mode),
                    replica_id: replica_id.to_owned(),
                    connected_seconds: view.connected_seconds,
                    types: view
                        .types
                        .into_iter()
                        .map(|(short, status)| api::TypeSync {
                            r#type: short.to_owned(),
                            status: sync_name(status.sync).to_owned(),
                            acked_version: status.acked_version,
                            acked_resources: status.acked_resources as u64,
                            last_nack: status.last_nack.map(|nack| api::Nack {
                                version: nack.version,
                                message: nack.message,
                                resources: nack.resources,
                            }),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(tonic::Response::new(api::ListEnvoysResponse { envoys }))
    }

    async fn get_served_config(
        &self,
        request: tonic::Request<api::GetServedConfigRequest>,
    ) -> Result<tonic::Response<api::GetServedConfigResponse>, tonic::Status> {
        use api::get_served_config_request::Target;
        let render = |resource: Option<&crate::xds::Resource>| {
            resource.map(|r| to_json(r).to_string()).unwrap_or_default()
        };
        let response = match request.into_inner().target {
            Some(Target::NodeId(node_id)) => {
                let proxy = self
                    .registry
                    .proxies()
                    .into_iter()
                    .rev()
                    .find(|p| p.node_id == node_id)
                    .ok_or_else(|| {
                        tonic::Status::not_found(format!(
                            "no Envoy with node id {node_id:?} is connected to this replica"
                        ))
                    })?;
                let snapshot = self.engine().snapshot().clone();
                api::GetServedConfigResponse {
                    group: format!("{:?}", proxy.group()),
                    resources: served_to(&proxy, Some(&snapshot))
                        .into_iter()
                        .map(|served| api::ServedResource {
                            r#type: served.type_url.short().to_owned(),
                            json: render(served.resource.as_deref()),
                            name: served.name,
                            version: served.version,
                            status: sync_name(served.sync).to_owned(),
                            nack_message: served.nack_message.unwrap_or_default(),
                        })
                        .collect(),
                }
            }
            Some(Target::Role(role)) => {
                let group = Group::from_role(Some(&role));
                let snapshot = self.engine().snapshot().clone();
                api::GetServedConfigResponse {
                    group: format!("{group:?}"),
                    resources: served_to_group(group, &snapshot)
                        .into_iter()
                        .map(|(type_url, resource)| api::ServedResource {
                            r#type: type_url.short().to_owned(),
                            name: resource.name.clone(),
                            version: resource.version.clone(),
                            json: render(Some(&resource)),
                            ..Default::default()
                        })
                        .collect(),
                }
            }
            None => {
                return Err(tonic::Status::invalid_argument("name a node_id or a role"));
            }
        };
        Ok(tonic::Response::new(response))
    }

    async fn list_routes(
        &self,
        _request: tonic::Request<api::ListRoutesRequest>,
    ) -> Result<tonic::Response<api::ListRoutesResponse>, tonic::Status> {
        let routes = self.routes().into_iter().map(api::Route::from).collect();
        Ok(tonic::Response::new(api::ListRoutesResponse { routes }))
    }

    async fn list_services(
        &self,
        request: tonic::Request<api::ListServicesRequest>,
    ) -> Result<tonic::Response<api::ListServicesResponse>, tonic::Status> {
        let names = self.engine().service_names(&request.into_inner().namespace);
        Ok(tonic::Response::new(api::ListServicesResponse { names }))
    }
}

fn sync_name(sync: SyncStatus) -> &'static str {
    match sync {
        SyncStatus::Synced => "SYNCED",
        SyncStatus::Stale => "STALE",
        SyncStatus::Nacked => "NACKED",
        SyncStatus::NotSent => "NOT_SENT",
    }
}

fn visibility_name(visibility: Visibility) -> &'static str {
    match visibility {
        Visibility::ExternalIP => "ExternalIP",
        Visibility::ClusterLocal => "ClusterLocal",
    }
}

impl From<IngressView> for api::Ingress {
    fn from(view: IngressView) -> Self {
        let domains = |balancers: Vec<LoadBalancer>| {
            balancers.into_iter().map(|b| b.domain_internal).collect()
        };
        api::Ingress {
            namespace: view.namespace,
            name: view.name,
            kind: view.kind,
            owned: view.owned,
            conditions: view
                .status
                .conditions
                .into_iter()
                .map(|c| api::Condition {
                    r#type: c.kind,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
            public_load_balancers: domains(view.status.public_load_balancer),
            private_load_balancers: domains(view.status.private_load_balancer),
            rules: view
                .rules
                .into_iter()
                .map(|rule| api::Rule {
                    hosts: rule.hosts,
                    visibility: visibility_name(rule.visibility).to_owned(),
                })
                .collect(),
            labels: view.labels.into_iter().collect(),
            creation_timestamp: view.creation_timestamp.unwrap_or_default(),
            owner: view.owner.unwrap_or_default(),
        }
    }
}

impl From<api::Ingress> for IngressView {
    fn from(ingress: api::Ingress) -> Self {
        let balancers = |domains: Vec<String>| {
            domains
                .into_iter()
                .map(|domain_internal| LoadBalancer { domain_internal })
                .collect()
        };
        IngressView {
            namespace: ingress.namespace,
            name: ingress.name,
            kind: ingress.kind,
            owned: ingress.owned,
            rules: ingress
                .rules
                .into_iter()
                .map(|rule| RuleView {
                    hosts: rule.hosts,
                    visibility: [Visibility::ExternalIP, Visibility::ClusterLocal]
                        .into_iter()
                        .find(|v| visibility_name(*v) == rule.visibility)
                        .unwrap_or_default(),
                })
                .collect(),
            labels: ingress.labels.into_iter().collect(),
            creation_timestamp: Some(ingress.creation_timestamp).filter(|t| !t.is_empty()),
            owner: Some(ingress.owner).filter(|owner| !owner.is_empty()),
            status: IngressStatus {
                conditions: ingress
                    .conditions
                    .into_iter()
                    .map(|c| Condition {
                        kind: c.r#type,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                    })
                    .collect(),
                public_load_balancer: balancers(ingress.public_load_balancers),
                private_load_balancer: balancers(ingress.private_load_balancers),
            },
        }
    }
}

impl From<TrafficTarget> for api::TrafficTarget {
    fn from(target: TrafficTarget) -> Self {
        api::TrafficTarget {
            tag: target.tag,
            revision_name: target.revision_name,
            configuration_name: target.configuration_name,
            latest_revision: target.latest_revision,
            percent: target.percent,
            url: target.url.unwrap_or_default(),
        }
    }
}

impl From<api::TrafficTarget> for TrafficTarget {
    fn from(target: api::TrafficTarget) -> Self {
        TrafficTarget {
            tag: target.tag,
            revision_name: target.revision_name,
            configuration_name: target.configuration_name,
            latest_revision: target.latest_revision,
            percent: target.percent,
            url: Some(target.url).filter(|url| !url.is_empty()),
            ..TrafficTarget::default()
        }
    }
}

impl From<RouteView> for api::Route {
    fn from(view: RouteView) -> Self {
        api::Route {
            namespace: view.namespace,
            name: view.name,
            url: view.url.unwrap_or_default(),
            address_url: view.address_url.unwrap_or_default(),
            traffic: view.traffic.into_iter().map(Into::into).collect(),
            spec_traffic: view.spec_traffic.into_iter().map(Into::into).collect(),
            conditions: view
                .conditions
                .into_iter()
                .map(|c| api::Condition {
                    r#type: c.kind,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
            generation: view.generation,
            creation_timestamp: view.creation_timestamp.unwrap_or_default(),
            origin: view.origin.unwrap_or_default(),
            ingress: view.ingress.unwrap_or_default(),
        }
    }
}

impl From<api::Route> for RouteView {
    fn from(route: api::Route) -> Self {
        let present = |text: String| Some(text).filter(|t| !t.is_empty());
        RouteView {
            namespace: route.namespace,
            name: route.name,
            url: present(route.url),
            address_url: present(route.address_url),
            traffic: route.traffic.into_iter().map(Into::into).collect(),
            spec_traffic: route.spec_traffic.into_iter().map(Into::into).collect(),
            conditions: route
                .conditions
                .into_iter()
                .map(|c| Condition {
                    kind: c.r#type,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
            generation: route.generation,
            creation_timestamp: present(route.creation_timestamp),
            origin: present(route.origin),
            ingress: present(route.ingress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    fn state(debug_remote: bool) -> AdminState {
        let config = TranslateConfig {
            listen_address: "0.0.0.0".into(),
            http_port: 8080,
            https_port: 8443,
            internal_http_port: 8081,
            internal_https_port: 8444,
        };
        let metrics = Arc::new(Metrics::default());
        let (engine, _) = Engine::new(
            "sluice.ingress.networking.knative.dev",
            config.clone(),
            crate::status::LoadBalancers::default(),
            metrics.clone(),
        );
        AdminState {
            engine: Arc::new(Mutex::new(engine)),
            registry: Arc::new(ProxyRegistry::new("test")),
            metrics,
            others: Arc::default(),
            server: ServerInfo {
                xds_addr: "127.0.0.1:9977".parse().unwrap(),
                listeners: config,
                envoy_admin_addr: None,
            },
            debug_remote,
        }
    }

    async fn status(debug_remote: bool, peer: Option<[u8; 4]>, path: &str) -> StatusCode {
        let mut request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        if let Some(ip) = peer {
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
        }
        router(state(debug_remote))
            .oneshot(request)
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn debug_answers_only_loopback_unless_asked() {
        let remote = Some([10, 1, 2, 3]);
        for path in ["/debug/config", "/debug/proxies"] {
            assert_eq!(
                status(false, Some([127, 0, 0, 1]), path).await,
                StatusCode::OK
            );
            assert_eq!(status(false, remote, path).await, StatusCode::FORBIDDEN);
            assert_eq!(status(false, None, path).await, StatusCode::FORBIDDEN);
            assert_eq!(status(true, remote, path).await, StatusCode::OK);
        }
        assert_eq!(status(false, remote, "/metrics").await, StatusCode::OK);
        assert_eq!(status(false, remote, "/healthz").await, StatusCode::OK);
    }
}
