//! The admin address: health, readiness, metrics and debug views over HTTP, and sluice's gRPC
//! admin API (proto/sluice/admin/v1) on the same port.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::Deserialize;

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::status::writer::OtherReplicas;
use crate::status::{Condition, Envoys, IngressStatus, IngressView, LoadBalancer};
use crate::xds::{Group, ProxyRegistry, ProxyView, TypeUrl, to_json};

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
}

/// The HTTP endpoints and the gRPC admin API, as one router.
pub fn router(state: AdminState) -> Router {
    let grpc = tonic::service::Routes::new(api::admin_server::AdminServer::new(state.clone()))
        .into_axum_router();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/config", get(debug_config))
        .route("/debug/proxies", get(debug_proxies))
        .with_state(state)
        .merge(grpc)
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
