//! What is served, per Envoy and per role, and Envoy's Client Status Discovery Service (CSDS,
//! `envoy.service.status.v3`) on the xDS port: for each connected Envoy that a request's node
//! matchers select, where each xDS type stands (SYNCED, STALE, ERROR with the NACK's message, or
//! NOT_SENT), and every resource this control plane sent it, with its version and status. `sluice proxy status` and
//! `sluice proxy served-config` show the same state through the admin API.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Node, data_source::Specifier as DataSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
    client_config::GenericXdsConfig,
    client_status_discovery_service_server::{
        ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
    },
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    NodeMatcher, StringMatcher, StructMatcher, string_matcher::MatchPattern,
    struct_matcher::path_segment::Segment, value_matcher,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Status, Streaming};

use crate::xds::resource::{Group, Resource, Snapshot, TypeUrl};
use crate::xds::server::{Proxy, ProxyRegistry, SnapshotFeed};
use crate::xds::stream::SyncStatus;

/// One resource a stream sent, with its body where it is known.
#[derive(Debug, Clone)]
pub struct Served {
    pub type_url: TypeUrl,
    pub name: String,
    pub version: String,
    pub sync: SyncStatus,
    pub resource: Option<Arc<Resource>>,
    /// The message of the NACK that rejected this version, when it is the type's last NACK.
    pub nack_message: Option<String>,
}

/// Everything `proxy`'s stream sent, type by type in the order Envoy applies them. A resource
/// that a reconnecting delta client only reported by version gets its body from `snapshot` when
/// the versions agree.
pub fn served_to(proxy: &Proxy, snapshot: Option<&Snapshot>) -> Vec<Served> {
    let state = proxy.state.lock().unwrap_or_else(|p| p.into_inner());
    let statuses = state.status();
    let mut served = Vec::new();
    for type_url in TypeUrl::ALL {
        let last_nack = statuses.get(&type_url).and_then(|s| s.last_nack.as_ref());
        for sent in state.sent(type_url) {
            let resource = sent.resource.clone().or_else(|| {
                snapshot?
                    .resources(proxy.group(), type_url)
                    .get(&sent.name)
                    .filter(|r| r.version == sent.version)
                    .cloned()
            });
            let nack_message = (sent.sync == SyncStatus::Nacked)
                .then(|| last_nack.filter(|n| n.resources.contains(&sent.name)))
                .flatten()
                .map(|n| n.message.clone());
            served.push(Served {
                type_url,
                name: sent.name,
                version: sent.version,
                sync: sent.sync,
                resource,
                nack_message,
            });
        }
    }
    served
}

/// What an Envoy of `group` gets from `snapshot`: the group's listeners and scopes, the route
/// configurations those scopes name, and the clusters, endpoints and secrets every group shares.
pub fn served_to_group(group: Group, snapshot: &Snapshot) -> Vec<(TypeUrl, Arc<Resource>)> {
    let scopes = snapshot.resources(group, TypeUrl::ScopedRouteConfiguration);
    let routes = snapshot.resources(group, TypeUrl::RouteConfiguration);
    let mut served = Vec::new();
    for type_url in TypeUrl::ALL {
        if type_url == TypeUrl::RouteConfiguration {
            let mut named: Vec<&String> = scopes.values().flat_map(|s| &s.references).collect();
            named.sort();
            named.dedup();
            served.extend(
                named
                    .into_iter()
                    .filter_map(|name| routes.get(name))
                    .map(|r| (type_url, r.clone())),
            );
        } else {
            served.extend(
                snapshot
                    .resources(group, type_url)
                    .values()
                    .map(|r| (type_url, r.clone())),
            );
        }
    }
    served
}

/// A secret with its private key replaced, so that status tools never carry key material.
fn redacted(body: &Any) -> Any {
    if body.type_url != TypeUrl::Secret.as_str() {
        return body.clone();
    }
    let Ok(mut secret) = Secret::decode(body.value.as_slice()) else {
        return body.clone();
    };
    if let Some(secret::Type::TlsCertificate(certificate)) = &mut secret.r#type
        && certificate.private_key.is_some()
    {
        certificate.private_key = Some(DataSource {
            specifier: Some(DataSpecifier::InlineString("[redacted]".to_owned())),
            ..Default::default()
        });
    }
    Any {
        type_url: body.type_url.clone(),
        value: secret.encode_to_vec(),
    }
}

fn config_status(sync: SyncStatus) -> (ConfigStatus, ClientResourceStatus) {
    match sync {
        SyncStatus::Synced => (ConfigStatus::Synced, ClientResourceStatus::Acked),
        SyncStatus::Stale => (ConfigStatus::Stale, ClientResourceStatus::Unknown),
        SyncStatus::Nacked => (ConfigStatus::Error, ClientResourceStatus::Nacked),
        SyncStatus::NotSent => (ConfigStatus::NotSent, ClientResourceStatus::Unknown),
    }
}

fn node_of(proxy: &Proxy) -> Node {
    let metadata = proxy.role.as_ref().map(|role| Struct {
        fields: [(
            "role".to_owned(),
            Value {
                kind: Some(Kind::StringValue(role.clone())),
            },
        )]
        .into(),
    });
    Node {
        id: proxy.node_id.clone(),
        metadata,
        ..Default::default()
    }
}

/// One entry per xDS type, with an empty name, holding the type's status (and the NACK's
/// message while its last response is rejected), then one entry per resource sent.
fn client_config(proxy: &Proxy, snapshot: Option<&Snapshot>, contents: bool) -> ClientConfig {
    let statuses = proxy
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .status();
    let per_type = TypeUrl::ALL.into_iter().map(|type_url| {
        let status = statuses.get(&type_url);
        let sync = status.map_or(SyncStatus::NotSent, |s| s.sync);
        let (config_status, client_status) = config_status(sync);
        let error_state = status
            .and_then(|s| s.last_nack.as_ref())
            .filter(|_| sync == SyncStatus::Nacked)
            .map(|nack| UpdateFailureState {
                details: nack.message.clone(),
                version_info: nack.version.clone(),
                ..Default::default()
            });
        GenericXdsConfig {
            type_url: type_url.as_str().to_owned(),
            version_info: status.map(|s| s.acked_version.clone()).unwrap_or_default(),
            config_status: config_status as i32,
            client_status: client_status as i32,
            error_state,
            ..Default::default()
        }
    });
    let per_resource = served_to(proxy, snapshot).into_iter().map(|served| {
        let (config_status, client_status) = config_status(served.sync);
        let body = served.resource.as_ref().map(|r| redacted(&r.body));
        let error_state = (served.sync == SyncStatus::Nacked).then(|| UpdateFailureState {
            failed_configuration: body.clone(),
            details: served.nack_message.clone().unwrap_or_default(),
            version_info: served.version.clone(),
            ..Default::default()
        });
        GenericXdsConfig {
            type_url: served.type_url.as_str().to_owned(),
            name: served.name,
            version_info: served.version,
            xds_config: body.filter(|_| contents),
            config_status: config_status as i32,
            client_status: client_status as i32,
            error_state,
            ..Default::default()
        }
    });
    ClientConfig {
        node: Some(node_of(proxy)),
        generic_xds_configs: per_type.chain(per_resource).collect(),
        ..Default::default()
    }
}

/// A node matcher in the subset sluice evaluates: any string matcher on the node id, and
/// string matchers on the `role` metadata key (the only metadata sluice keeps).
fn matches(matcher: &NodeMatcher, proxy: &Proxy) -> Result<bool, Status> {
    if let Some(id) = &matcher.node_id
        && !string_matches(id, &proxy.node_id)?
    {
        return Ok(false);
    }
    for metadata in &matcher.node_metadatas {
        if !role_matches(metadata, proxy.role.as_deref())? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn role_matches(matcher: &StructMatcher, role: Option<&str>) -> Result<bool, Status> {
    let on_role = matches!(
        matcher.path.as_slice(),
        [segment] if segment.segment == Some(Segment::Key("role".to_owned()))
    );
    if !on_role {
        return Err(Status::invalid_argument(
            "sluice matches node metadata only on the key `role`",
        ));
    }
    match matcher
        .value
        .as_ref()
        .and_then(|v| v.match_pattern.as_ref())
    {
        Some(value_matcher::MatchPattern::StringMatch(string)) => {
            role.map_or(Ok(false), |role| string_matches(string, role))
        }
        Some(value_matcher::MatchPattern::PresentMatch(present)) => Ok(role.is_some() == *present),
        _ => Err(Status::invalid_argument(
            "sluice matches the `role` metadata with a string or present matcher only",
        )),
    }
}

fn string_matches(matcher: &StringMatcher, value: &str) -> Result<bool, Status> {
    let fold = |s: &str| {
        if matcher.ignore_case {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    let value_folded = fold(value);
    Ok(match &matcher.match_pattern {
        None => true,
        Some(MatchPattern::Exact(exact)) => value_folded == fold(exact),
        Some(MatchPattern::Prefix(prefix)) => value_folded.starts_with(&fold(prefix)),
        Some(MatchPattern::Suffix(suffix)) => value_folded.ends_with(&fold(suffix)),
        Some(MatchPattern::Contains(part)) => value_folded.contains(&fold(part)),
        Some(MatchPattern::SafeRegex(regex)) => {
            let whole = format!("^(?:{})$", regex.regex);
            regex::Regex::new(&whole)
                .map_err(|e| {
                    Status::invalid_argument(format!("invalid regex {:?}: {e}", regex.regex))
                })?
                .is_match(value)
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(Status::invalid_argument(
                "custom string matchers are not supported",
            ));
        }
    })
}

/// The CSDS service: answers from the proxy registry of this replica.
#[derive(Clone)]
pub struct CsdsService {
    registry: Arc<ProxyRegistry>,
    snapshots: SnapshotFeed,
}

impl CsdsService {
    pub fn new(
        registry: Arc<ProxyRegistry>,
        snapshots: SnapshotFeed,
    ) -> ClientStatusDiscoveryServiceServer<CsdsService> {
        ClientStatusDiscoveryServiceServer::new(CsdsService {
            registry,
            snapshots,
        })
    }

    fn answer(&self, request: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
        let snapshot = self.snapshots.borrow().clone();
        let mut config = Vec::new();
        for proxy in self.registry.proxies() {
            let mut selected = request.node_matchers.is_empty();
            for matcher in &request.node_matchers {
                selected = selected || matches(matcher, &proxy)?;
            }
            if selected {
                config.push(client_config(
                    &proxy,
                    snapshot.as_deref(),
                    !request.exclude_resource_contents,
                ));
            }
        }
        Ok(ClientStatusResponse { config })
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = ResponseStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<tonic::Response<Self::StreamClientStatusStream>, Status> {
        let service = self.clone();
        let answers = request
            .into_inner()
            .map(move |request| request.and_then(|r| service.answer(&r)));
        Ok(tonic::Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<tonic::Response<ClientStatusResponse>, Status> {
        self.answer(request.get_ref()).map(tonic::Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        RegexMatcher, ValueMatcher, struct_matcher::PathSegment,
    };

    fn exact(value: &str) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_owned())),
            ..Default::default()
        }
    }

    #[test]
    fn string_matchers_follow_envoy() {
        assert!(string_matches(&exact("a"), "a").unwrap());
        assert!(!string_matches(&exact("a"), "ab").unwrap());
        let prefix = StringMatcher {
            match_pattern: Some(MatchPattern::Prefix("Env".to_owned())),
            ignore_case: true,
        };
        assert!(string_matches(&prefix, "envoy-1").unwrap());
        let regex = StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                regex: "envoy-[0-9]".to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(string_matches(&regex, "envoy-1").unwrap());
        assert!(!string_matches(&regex, "envoy-12").unwrap(), "whole value");
    }

    #[test]
    fn metadata_matchers_look_at_the_role_only() {
        let on = |key: &str| StructMatcher {
            path: vec![PathSegment {
                segment: Some(Segment::Key(key.to_owned())),
            }],
            value: Some(ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::StringMatch(exact(
                    "gloo-system~knative-external-proxy",
                ))),
            }),
        };
        assert!(role_matches(&on("role"), Some("gloo-system~knative-external-proxy")).unwrap());
        assert!(!role_matches(&on("role"), Some("other")).unwrap());
        assert!(!role_matches(&on("role"), None).unwrap());
        assert!(role_matches(&on("cluster"), None).is_err());
    }

    #[test]
    fn secrets_lose_their_private_key() {
        let secret = Secret {
            name: "tls".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                private_key: Some(DataSource {
                    specifier: Some(DataSpecifier::InlineString("KEY".into())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let resource = Resource::new(TypeUrl::Secret, "tls", &secret, vec![]);
        let shown = Secret::decode(redacted(&resource.body).value.as_slice()).unwrap();
        let Some(secret::Type::TlsCertificate(certificate)) = shown.r#type else {
            panic!("a TLS certificate")
        };
        assert_eq!(
            certificate.private_key.unwrap().specifier,
            Some(DataSpecifier::InlineString("[redacted]".into()))
        );
    }
}
