//! The xDS protocol for one Envoy stream, as a pure state machine: requests and snapshots in,
//! responses out. No I/O, so every protocol rule is unit-tested here.
//!
//! Rules it keeps (Envoy's xDS protocol document, and the field notes):
//! - one response in flight per type; SotW answers only an open request, and ignores requests
//!   whose nonce is stale; delta applies subscription changes whatever the nonce;
//! - a NACK (`error_detail`) is recorded and never answered by re-sending the rejected version;
//! - LDS, CDS and SRDS are sent whole in SotW; RDS and EDS carry only what changed;
//! - make-before-break: a route configuration goes out only once every cluster it names is
//!   ACKed by the Envoy, along with that cluster's endpoints; a cluster that the Envoy's routes
//!   still name stays in its CDS until those routes are replaced;
//! - after a cluster changes, its endpoints are sent again, since Envoy warms it until they come.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use serde::Serialize;

use crate::xds::resource::{Group, Resource, Snapshot, TypeUrl, set_version};

/// Which variant of the protocol the stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    StateOfTheWorld,
    Delta,
}

/// A rejected response, as the Envoy reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    pub version: String,
    pub nonce: String,
    pub message: String,
    /// The resources of the rejected response.
    pub resources: Vec<String>,
}

/// What happened to a request, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    UnknownType(String),
    /// SotW: a nonce other than the last one sent; the request is ignored.
    StaleNonce,
    Subscribed,
    Acked,
    Nacked(Nack),
}

/// A response ready for the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

#[derive(Debug, Clone)]
struct InFlight {
    nonce: String,
    version: String,
    /// The client's state of this type once it accepts the response.
    changes: Vec<(String, Option<Arc<Resource>>)>,
}

/// What the client holds of a resource: the version, and the resource itself when this stream
/// sent it (a reconnecting delta client only tells versions).
#[derive(Debug, Clone)]
struct Held {
    version: String,
    resource: Option<Arc<Resource>>,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Whether the type was ever requested on this stream.
    requested: bool,
    /// SotW: a request is open and waits for an answer.
    open_request: bool,
    /// SotW: whether any response was sent for the current subscription.
    answered: bool,
    /// What was sent (accepted or not): never re-send what the client already got.
    sent: BTreeMap<String, Held>,
    /// What the client ACKed.
    acked: BTreeMap<String, Held>,
    acked_version: String,
    /// Must be sent even if unchanged (delta subscribe, endpoints of a changed cluster).
    force: BTreeSet<String>,
    /// The nonce of the last response sent: a SotW request naming any other is stale.
    last_nonce: String,
    in_flight: Option<InFlight>,
    last_nack: Option<Nack>,
}

impl TypeState {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Per-type view of a stream, for `/debug/proxies`.
#[derive(Debug, Clone, Serialize)]
pub struct TypeStatus {
    pub acked_version: String,
    pub acked_resources: usize,
    pub pending: bool,
    pub last_nack: Option<Nack>,
}

#[derive(Debug)]
pub struct StreamState {
    mode: Mode,
    group: Group,
    next_nonce: u64,
    types: BTreeMap<TypeUrl, TypeState>,
}

impl StreamState {
    pub fn new(mode: Mode, group: Group) -> Self {
        StreamState {
            mode,
            group,
            next_nonce: 0,
            types: BTreeMap::new(),
        }
    }

    pub fn group(&self) -> Group {
        self.group
    }

    pub fn on_sotw_request(&mut self, request: &DiscoveryRequest) -> RequestOutcome {
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return RequestOutcome::UnknownType(request.type_url.clone());
        };
        let state = self.types.entry(type_url).or_default();
        let mut outcome = RequestOutcome::Subscribed;
        if !request.response_nonce.is_empty() {
            if request.response_nonce != state.last_nonce {
                return RequestOutcome::StaleNonce;
            }
            // The first request naming a response settles it; later ones with the same nonce
            // only change the subscription.
            if state.in_flight.is_some() {
                outcome = settle(state, request.error_detail.as_ref().map(|s| &s.message));
            }
        }
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let wildcard = type_url.is_full_state() && names.is_empty();
        if names != state.names || wildcard != state.wildcard || !state.requested {
            // A changed subscription is answered even when nothing it names changed, so that
            // a client asking for a resource that does not exist yet still gets a response.
            state.answered = false;
        }
        for gone in state.names.difference(&names) {
            state.sent.remove(gone);
            state.acked.remove(gone);
        }
        state.names = names;
        state.wildcard = wildcard;
        state.requested = true;
        state.open_request = true;
        outcome
    }

    pub fn on_delta_request(&mut self, request: &DeltaDiscoveryRequest) -> RequestOutcome {
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return RequestOutcome::UnknownType(request.type_url.clone());
        };
        let state = self.types.entry(type_url).or_default();
        if !state.requested {
            state.requested = true;
            // The legacy wildcard: a first request for a full-state type that names nothing.
            state.wildcard =
                type_url.is_full_state() && request.resource_names_subscribe.is_empty();
            for (name, version) in &request.initial_resource_versions {
                let held = Held {
                    version: version.clone(),
                    resource: None,
                };
                state.sent.insert(name.clone(), held.clone());
                state.acked.insert(name.clone(), held);
            }
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                state.force.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.force.remove(name);
            }
        }
        if !state.wildcard {
            let names = &state.names;
            state.sent.retain(|name, _| names.contains(name));
            state.acked.retain(|name, _| names.contains(name));
        }
        if request.response_nonce.is_empty() {
            return RequestOutcome::Subscribed;
        }
        match &state.in_flight {
            Some(in_flight) if in_flight.nonce == request.response_nonce => {
                settle(state, request.error_detail.as_ref().map(|s| &s.message))
            }
            // Delta never drops a request for a stale nonce: its subscription changes are
            // already applied above.
            _ => RequestOutcome::Subscribed,
        }
    }

    /// The responses the snapshot calls for now, in the order Envoy must apply them.
    pub fn poll(&mut self, snapshot: &Snapshot) -> Vec<Response> {
        let mut responses = Vec::new();
        for type_url in TypeUrl::ALL {
            if let Some(response) = self.respond(type_url, snapshot) {
                responses.push(response);
            }
        }
        responses
    }

    /// Clusters the client's routes (sent or accepted) still name.
    fn clusters_in_use(&self) -> BTreeSet<&str> {
        let Some(routes) = self.types.get(&TypeUrl::RouteConfiguration) else {
            return BTreeSet::new();
        };
        routes
            .sent
            .values()
            .chain(routes.acked.values())
            .filter_map(|held| held.resource.as_ref())
            .flat_map(|resource| resource.references.iter().map(String::as_str))
            .collect()
    }

    /// Whether every cluster a route names is ACKed, with its endpoints where EDS feeds it.
    fn clusters_ready(&self, route: &Resource, snapshot: &Snapshot) -> bool {
        let acked = |type_url: TypeUrl, name: &str| {
            self.types.get(&type_url).is_some_and(|state| {
                state.acked.contains_key(name)
                    && !state.force.contains(name)
                    && state
                        .in_flight
                        .as_ref()
                        .is_none_or(|f| f.changes.iter().all(|(changed, _)| changed != name))
            })
        };
        let endpoints = snapshot.resources(self.group, TypeUrl::ClusterLoadAssignment);
        route.references.iter().all(|cluster| {
            acked(TypeUrl::Cluster, cluster)
                && (!endpoints.contains_key(cluster)
                    || acked(TypeUrl::ClusterLoadAssignment, cluster))
        })
    }

    /// The full set of `type_url` this client should hold now.
    fn desired(&self, type_url: TypeUrl, snapshot: &Snapshot) -> BTreeMap<String, Arc<Resource>> {
        let state = &self.types[&type_url];
        let available = snapshot.resources(self.group, type_url);
        let mut desired: BTreeMap<String, Arc<Resource>> = if state.wildcard {
            available
                .iter()
                .map(|(name, resource)| (name.clone(), resource.clone()))
                .collect()
        } else {
            state
                .names
                .iter()
                .filter_map(|name| Some((name.clone(), available.get(name)?.clone())))
                .collect()
        };
        match type_url {
            TypeUrl::Cluster => {
                for name in self.clusters_in_use() {
                    if desired.contains_key(name) {
                        continue;
                    }
                    if let Some(resource) = state.sent.get(name).and_then(|h| h.resource.clone()) {
                        desired.insert(name.to_owned(), resource);
                    }
                }
            }
            TypeUrl::RouteConfiguration => {
                // A route whose clusters are not ready yet waits; the client keeps the version
                // it has, if any.
                desired = desired
                    .into_iter()
                    .filter_map(|(name, resource)| {
                        if self.clusters_ready(&resource, snapshot) {
                            return Some((name, resource));
                        }
                        let previous = state.sent.get(&name)?.resource.clone()?;
                        Some((name, previous))
                    })
                    .collect();
            }
            _ => {}
        }
        desired
    }

    fn respond(&mut self, type_url: TypeUrl, snapshot: &Snapshot) -> Option<Response> {
        let state = self.types.get(&type_url)?;
        if state.in_flight.is_some() || (self.mode == Mode::StateOfTheWorld && !state.open_request)
        {
            return None;
        }
        let desired = self.desired(type_url, snapshot);
        let state = self.types.get_mut(&type_url)?;
        let changed: Vec<Arc<Resource>> = desired
            .values()
            .filter(|resource| {
                state.force.contains(&resource.name)
                    || state
                        .sent
                        .get(&resource.name)
                        .is_none_or(|held| held.version != resource.version)
            })
            .cloned()
            .collect();
        let removed: Vec<String> = state
            .sent
            .keys()
            .filter(|name| {
                !desired.contains_key(*name)
                    && (type_url.is_full_state() || !state.subscribed(name))
            })
            .cloned()
            .collect();
        // Envoy waits for the first LDS and CDS (and SRDS) answer before it starts serving, so
        // those are answered even when there is nothing in them.
        let first_answer = type_url.is_full_state() && !state.answered;
        if changed.is_empty() && removed.is_empty() && !first_answer {
            return None;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let version = set_version(desired.values());
        if type_url == TypeUrl::Cluster {
            self.refresh_endpoints_of(&changed);
        }
        let send: Vec<Arc<Resource>> =
            if self.mode == Mode::StateOfTheWorld && type_url.is_full_state() {
                desired.into_values().collect()
            } else {
                changed
            };
        let mut changes: Vec<(String, Option<Arc<Resource>>)> = send
            .iter()
            .map(|resource| (resource.name.clone(), Some(resource.clone())))
            .collect();
        changes.extend(removed.iter().map(|name| (name.clone(), None)));
        let state = self.types.get_mut(&type_url)?;
        for (name, resource) in &changes {
            state.force.remove(name);
            match resource {
                Some(resource) => {
                    state.sent.insert(name.clone(), Held::of(resource));
                }
                None => {
                    state.sent.remove(name);
                }
            }
        }
        state.open_request = false;
        state.answered = true;
        state.last_nonce = nonce.clone();
        state.in_flight = Some(InFlight {
            nonce: nonce.clone(),
            version: version.clone(),
            changes,
        });
        let response = match self.mode {
            Mode::StateOfTheWorld => Response::Sotw(DiscoveryResponse {
                version_info: version,
                resources: send.iter().map(|r| r.body.clone()).collect(),
                type_url: type_url.as_str().to_owned(),
                nonce,
                ..Default::default()
            }),
            Mode::Delta => Response::Delta(DeltaDiscoveryResponse {
                system_version_info: version,
                resources: send
                    .iter()
                    .map(|r| DeltaResource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.body.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: type_url.as_str().to_owned(),
                removed_resources: removed,
                nonce,
                ..Default::default()
            }),
        };
        Some(response)
    }

    /// Envoy keeps a new or changed cluster warming until its endpoints arrive, even unchanged
    /// ones, so the endpoints of every cluster that changed go out again.
    fn refresh_endpoints_of(&mut self, clusters: &[Arc<Resource>]) {
        let endpoints = self
            .types
            .entry(TypeUrl::ClusterLoadAssignment)
            .or_default();
        for cluster in clusters {
            if endpoints.subscribed(&cluster.name) || endpoints.sent.contains_key(&cluster.name) {
                endpoints.force.insert(cluster.name.clone());
            }
        }
    }

    pub fn status(&self) -> BTreeMap<TypeUrl, TypeStatus> {
        self.types
            .iter()
            .map(|(type_url, state)| {
                (
                    *type_url,
                    TypeStatus {
                        acked_version: state.acked_version.clone(),
                        acked_resources: state.acked.len(),
                        pending: state.in_flight.is_some(),
                        last_nack: state.last_nack.clone(),
                    },
                )
            })
            .collect()
    }

    /// The version of a resource this Envoy has ACKed.
    pub fn acked_version(&self, type_url: TypeUrl, name: &str) -> Option<&str> {
        let held = self.types.get(&type_url)?.acked.get(name)?;
        Some(&held.version)
    }
}

impl Held {
    fn of(resource: &Arc<Resource>) -> Held {
        Held {
            version: resource.version.clone(),
            resource: Some(resource.clone()),
        }
    }
}

/// Settles the response in flight with the client's verdict.
fn settle(state: &mut TypeState, error: Option<&String>) -> RequestOutcome {
    let Some(in_flight) = state.in_flight.take() else {
        return RequestOutcome::Subscribed;
    };
    if let Some(message) = error {
        let nack = Nack {
            version: in_flight.version,
            nonce: in_flight.nonce,
            message: message.clone(),
            resources: in_flight
                .changes
                .iter()
                .filter(|(_, r)| r.is_some())
                .map(|(name, _)| name.clone())
                .collect(),
        };
        state.last_nack = Some(nack.clone());
        return RequestOutcome::Nacked(nack);
    }
    for (name, resource) in in_flight.changes {
        match resource {
            Some(resource) => {
                state.acked.insert(name, Held::of(&resource));
            }
            None => {
                state.acked.remove(&name);
            }
        }
    }
    state.acked_version = in_flight.version;
    RequestOutcome::Acked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resource::ResourceUpdate;
    use envoy_types::pb::google::rpc::Status;

    fn resource(type_url: TypeUrl, name: &str, content: u32, references: &[&str]) -> Arc<Resource> {
        let body = envoy_types::pb::google::protobuf::UInt32Value { value: content };
        Resource::new(
            type_url,
            name,
            &body,
            references.iter().map(|r| r.to_string()).collect(),
        )
    }

    fn put(snapshot: &mut Snapshot, resource: Arc<Resource>, type_url: TypeUrl) {
        let groups = type_url.is_per_group().then(|| Group::ALL.to_vec());
        snapshot.apply([ResourceUpdate {
            type_url,
            groups,
            name: resource.name.clone(),
            resource: Some(resource),
        }]);
    }

    fn remove(snapshot: &mut Snapshot, type_url: TypeUrl, name: &str) {
        snapshot.apply([ResourceUpdate {
            type_url,
            groups: None,
            name: name.to_owned(),
            resource: None,
        }]);
    }

    /// A snapshot with cluster `a` (and its endpoints) and route `r` naming it.
    fn base() -> Snapshot {
        let mut snapshot = Snapshot::default();
        put(
            &mut snapshot,
            resource(TypeUrl::Cluster, "a", 1, &[]),
            TypeUrl::Cluster,
        );
        put(
            &mut snapshot,
            resource(TypeUrl::ClusterLoadAssignment, "a", 1, &[]),
            TypeUrl::ClusterLoadAssignment,
        );
        put(
            &mut snapshot,
            resource(TypeUrl::Listener, "l", 1, &[]),
            TypeUrl::Listener,
        );
        put(
            &mut snapshot,
            resource(TypeUrl::RouteConfiguration, "r", 1, &["a"]),
            TypeUrl::RouteConfiguration,
        );
        snapshot
    }

    fn sotw(type_url: TypeUrl, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.as_str().to_owned(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        }
    }

    fn sotw_responses(responses: Vec<Response>) -> Vec<DiscoveryResponse> {
        responses
            .into_iter()
            .map(|r| match r {
                Response::Sotw(r) => r,
                Response::Delta(_) => panic!("a delta response on a SotW stream"),
            })
            .collect()
    }

    fn ack(stream: &mut StreamState, response: &DiscoveryResponse, names: &[&str]) {
        let type_url = TypeUrl::parse(&response.type_url).unwrap();
        let outcome = stream.on_sotw_request(&sotw(
            type_url,
            names,
            &response.version_info,
            &response.nonce,
        ));
        assert_eq!(outcome, RequestOutcome::Acked);
    }

    fn short(responses: &[DiscoveryResponse]) -> Vec<(&'static str, usize)> {
        responses
            .iter()
            .map(|r| {
                (
                    TypeUrl::parse(&r.type_url).unwrap().short(),
                    r.resources.len(),
                )
            })
            .collect()
    }

    #[test]
    fn sotw_answers_each_request_once_and_ignores_stale_nonces() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""));
        let first = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&first), [("CDS", 1)]);
        assert!(stream.poll(&snapshot).is_empty(), "one response in flight");

        let stale = stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", "no-such-nonce"));
        assert_eq!(stale, RequestOutcome::StaleNonce);
        ack(&mut stream, &first[0], &[]);
        assert!(stream.poll(&snapshot).is_empty(), "nothing changed");

        let mut changed = snapshot.clone();
        put(
            &mut changed,
            resource(TypeUrl::Cluster, "b", 1, &[]),
            TypeUrl::Cluster,
        );
        let second = sotw_responses(stream.poll(&changed));
        assert_eq!(short(&second), [("CDS", 2)], "CDS is sent whole");
        assert_ne!(second[0].version_info, first[0].version_info);
    }

    #[test]
    fn a_request_after_the_ack_with_the_same_nonce_changes_the_subscription() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &[], "", ""));
        let mut next = snapshot.clone();
        stream.poll(&next);
        put(
            &mut next,
            resource(TypeUrl::ClusterLoadAssignment, "b", 1, &[]),
            TypeUrl::ClusterLoadAssignment,
        );
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a"], "", ""));
        let first = sotw_responses(stream.poll(&next));
        assert_eq!(short(&first), [("EDS", 1)]);
        ack(&mut stream, &first[0], &["a"]);
        // Envoy learns of cluster b and asks for its endpoints, echoing the last nonce.
        let outcome = stream.on_sotw_request(&sotw(
            TypeUrl::ClusterLoadAssignment,
            &["a", "b"],
            &first[0].version_info,
            &first[0].nonce,
        ));
        assert_eq!(outcome, RequestOutcome::Subscribed);
        assert_eq!(short(&sotw_responses(stream.poll(&next))), [("EDS", 1)]);
    }

    #[test]
    fn a_nack_is_recorded_and_the_rejected_version_is_not_sent_again() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Listener, &[], "", ""));
        let sent = sotw_responses(stream.poll(&snapshot));
        let nack = DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad listener".into(),
                details: vec![],
            }),
            ..sotw(TypeUrl::Listener, &[], "", &sent[0].nonce)
        };
        let RequestOutcome::Nacked(recorded) = stream.on_sotw_request(&nack) else {
            panic!("a NACK")
        };
        assert_eq!(recorded.message, "bad listener");
        assert_eq!(recorded.resources, ["l"]);
        assert!(
            stream.poll(&snapshot).is_empty(),
            "no re-send of the rejected version"
        );
        let status = &stream.status()[&TypeUrl::Listener];
        assert_eq!(status.acked_version, "");
        assert!(status.last_nack.is_some());

        let mut fixed = snapshot.clone();
        put(
            &mut fixed,
            resource(TypeUrl::Listener, "l", 2, &[]),
            TypeUrl::Listener,
        );
        assert_eq!(short(&sotw_responses(stream.poll(&fixed))), [("LDS", 1)]);
    }

    #[test]
    fn routes_wait_for_their_clusters_and_endpoints_to_be_acked() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::RouteConfiguration, &["r"], "", ""));
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""));
        let cds = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&cds), [("CDS", 1)], "no route before its cluster");
        ack(&mut stream, &cds[0], &[]);
        assert!(
            stream.poll(&snapshot).is_empty(),
            "no route before the endpoints"
        );
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a"], "", ""));
        let eds = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&eds), [("EDS", 1)]);
        ack(&mut stream, &eds[0], &["a"]);
        assert_eq!(short(&sotw_responses(stream.poll(&snapshot))), [("RDS", 1)]);
    }

    /// Brings a SotW stream to the point where it holds everything in `snapshot`.
    fn converged(snapshot: &Snapshot) -> StreamState {
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""));
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a"], "", ""));
        stream.on_sotw_request(&sotw(TypeUrl::RouteConfiguration, &["r"], "", ""));
        for _ in 0..4 {
            for response in sotw_responses(stream.poll(snapshot)) {
                let names: Vec<&str> = match TypeUrl::parse(&response.type_url).unwrap() {
                    TypeUrl::ClusterLoadAssignment => vec!["a"],
                    TypeUrl::RouteConfiguration => vec!["r"],
                    _ => vec![],
                };
                ack(&mut stream, &response, &names);
            }
        }
        assert!(stream.poll(snapshot).is_empty());
        stream
    }

    #[test]
    fn a_removed_cluster_stays_until_the_routes_stop_naming_it() {
        let snapshot = base();
        let mut stream = converged(&snapshot);
        let mut next = snapshot.clone();
        remove(&mut next, TypeUrl::Cluster, "a");
        remove(&mut next, TypeUrl::ClusterLoadAssignment, "a");
        put(
            &mut next,
            resource(TypeUrl::Cluster, "b", 1, &[]),
            TypeUrl::Cluster,
        );
        put(
            &mut next,
            resource(TypeUrl::ClusterLoadAssignment, "b", 1, &[]),
            TypeUrl::ClusterLoadAssignment,
        );
        put(
            &mut next,
            resource(TypeUrl::RouteConfiguration, "r", 2, &["b"]),
            TypeUrl::RouteConfiguration,
        );
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&cds), [("CDS", 2)], "a is kept beside b");
        ack(&mut stream, &cds[0], &[]);
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a", "b"], "", ""));
        let eds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&eds), [("EDS", 1)]);
        ack(&mut stream, &eds[0], &["a", "b"]);
        let rds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&rds), [("RDS", 1)]);
        ack(&mut stream, &rds[0], &["r"]);
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&cds), [("CDS", 1)], "a goes once no route names it");
    }

    #[test]
    fn a_changed_cluster_gets_its_unchanged_endpoints_again() {
        let snapshot = base();
        let mut stream = converged(&snapshot);
        let mut next = snapshot.clone();
        put(
            &mut next,
            resource(TypeUrl::Cluster, "a", 2, &[]),
            TypeUrl::Cluster,
        );
        let responses = sotw_responses(stream.poll(&next));
        assert_eq!(short(&responses), [("CDS", 1), ("EDS", 1)]);
    }

    #[test]
    fn a_resource_that_does_not_exist_yet_is_sent_when_it_appears() {
        let snapshot = base();
        let mut stream = converged(&snapshot);
        stream.on_sotw_request(&sotw(TypeUrl::RouteConfiguration, &["r", "later"], "", ""));
        assert!(stream.poll(&snapshot).is_empty());
        let mut next = snapshot.clone();
        put(
            &mut next,
            resource(TypeUrl::RouteConfiguration, "later", 1, &["a"]),
            TypeUrl::RouteConfiguration,
        );
        let rds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&rds), [("RDS", 1)], "only what changed");
    }

    fn delta(
        type_url: TypeUrl,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.as_str().to_owned(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        }
    }

    fn delta_responses(responses: Vec<Response>) -> Vec<DeltaDiscoveryResponse> {
        responses
            .into_iter()
            .map(|r| match r {
                Response::Delta(r) => r,
                Response::Sotw(_) => panic!("a SotW response on a delta stream"),
            })
            .collect()
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn delta_reconnect_sends_only_what_the_client_lacks_and_removes_what_is_gone() {
        let mut snapshot = base();
        put(
            &mut snapshot,
            resource(TypeUrl::Cluster, "b", 1, &[]),
            TypeUrl::Cluster,
        );
        let a = snapshot.resources(Group::All, TypeUrl::Cluster)["a"].clone();
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        let mut request = delta(TypeUrl::Cluster, &[], &[], "");
        request.initial_resource_versions = [
            ("a".to_string(), a.version.clone()),
            ("gone".to_string(), "v0".to_string()),
        ]
        .into();
        stream.on_delta_request(&request);
        let responses = delta_responses(stream.poll(&snapshot));
        assert_eq!(responses.len(), 1);
        assert_eq!(names(&responses[0]), ["b"]);
        assert_eq!(responses[0].removed_resources, ["gone"]);
    }

    #[test]
    fn delta_applies_subscriptions_despite_a_stale_nonce_and_resends_on_subscribe() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        stream.on_delta_request(&delta(TypeUrl::ClusterLoadAssignment, &["a"], &[], ""));
        let first = delta_responses(stream.poll(&snapshot));
        assert_eq!(names(&first[0]), ["a"]);
        let outcome = stream.on_delta_request(&delta(
            TypeUrl::ClusterLoadAssignment,
            &[],
            &[],
            &first[0].nonce,
        ));
        assert_eq!(outcome, RequestOutcome::Acked);

        stream.on_delta_request(&delta(TypeUrl::ClusterLoadAssignment, &["a"], &[], "stale"));
        let again = delta_responses(stream.poll(&snapshot));
        assert_eq!(names(&again[0]), ["a"], "a subscribed name is always sent");

        stream.on_delta_request(&delta(
            TypeUrl::ClusterLoadAssignment,
            &[],
            &["a"],
            &again[0].nonce,
        ));
        let mut next = snapshot.clone();
        put(
            &mut next,
            resource(TypeUrl::ClusterLoadAssignment, "a", 2, &[]),
            TypeUrl::ClusterLoadAssignment,
        );
        assert!(stream.poll(&next).is_empty(), "unsubscribed");
    }

    #[test]
    fn delta_nack_is_not_answered_with_the_same_resources() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        stream.on_delta_request(&delta(TypeUrl::Listener, &[], &[], ""));
        let sent = delta_responses(stream.poll(&snapshot));
        let nack = DeltaDiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "no".into(),
                details: vec![],
            }),
            ..delta(TypeUrl::Listener, &[], &[], &sent[0].nonce)
        };
        assert!(matches!(
            stream.on_delta_request(&nack),
            RequestOutcome::Nacked(_)
        ));
        assert!(stream.poll(&snapshot).is_empty());
    }
}
