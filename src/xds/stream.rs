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

use imbl::ordmap::DiffItem;

use crate::xds::resource::{Group, Resource, ResourceMap, SetDigest, Snapshot, TypeUrl};

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
    /// What the client holds of this type once it accepts the response.
    changes: BTreeMap<String, Option<Held>>,
}

/// What the client holds of a resource: the version, and the resource itself when this stream
/// sent it (a reconnecting delta client only tells versions).
#[derive(Debug, Clone)]
struct Held {
    version: String,
    resource: Option<Arc<Resource>>,
}

impl Held {
    fn of(resource: &Arc<Resource>) -> Held {
        Held {
            version: resource.version.clone(),
            resource: Some(resource.clone()),
        }
    }

    fn references(&self) -> &[String] {
        self.resource
            .as_ref()
            .map(|r| r.references.as_slice())
            .unwrap_or_default()
    }
}

/// Which of a type's views of the client a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Sent,
    Acked,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Whether the type was ever requested on this stream.
    requested: bool,
    /// SotW: a request is open and waits for an answer.
    open_request: bool,
    /// Whether the current subscription got its first answer.
    answered: bool,
    /// What was sent (accepted or not): never re-send what the client already got.
    sent: BTreeMap<String, Held>,
    /// The version of `sent` as a whole, kept up to date as entries change.
    sent_digest: SetDigest,
    /// What the client ACKed.
    acked: BTreeMap<String, Held>,
    acked_version: String,
    /// Must be sent even if unchanged (delta subscribe, endpoints of a changed cluster).
    force: BTreeSet<String>,
    /// The snapshot's map of this type when this stream last answered: diffing the next
    /// snapshot against it finds what changed without walking every resource.
    seen: Option<ResourceMap>,
    /// Names to look at again on the next answer: new subscriptions, routes waiting for their
    /// clusters, clusters that routes may no longer name.
    recheck: BTreeSet<String>,
    /// The nonce of the last response sent: a SotW request naming any other is stale.
    last_nonce: String,
    in_flight: Option<InFlight>,
    last_nack: Option<Nack>,
}

impl TypeState {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Forgets what was seen, so that the next answer looks at every resource again.
    fn look_again(&mut self) {
        self.seen = None;
    }
}

/// Per-type view of a stream, for `/debug/proxies`.
#[derive(Debug, Clone, Serialize)]
pub struct TypeStatus {
    pub acked_version: String,
    pub acked_resources: usize,
    pub pending: bool,
    pub last_nack: Option<Nack>,
    pub sync: SyncStatus,
}

/// Where a type, or one resource, stands with the client, as `istioctl proxy-status` and
/// CSDS's `ConfigStatus` put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    /// What was sent is ACKed.
    Synced,
    /// A response was sent and is not ACKed or NACKed yet.
    Stale,
    /// The client rejected it: for a type, its last response; for a resource, the version
    /// sent (it is not sent again).
    Nacked,
    /// Nothing of this type was sent on this stream.
    NotSent,
}

/// One resource as this stream sent it.
#[derive(Debug, Clone)]
pub struct SentResource {
    pub name: String,
    pub version: String,
    /// `None` when the client reported the resource on reconnecting (delta) and this stream
    /// never sent it.
    pub resource: Option<Arc<Resource>>,
    pub sync: SyncStatus,
}

#[derive(Debug)]
pub struct StreamState {
    mode: Mode,
    group: Group,
    next_nonce: u64,
    types: BTreeMap<TypeUrl, TypeState>,
    /// For each cluster, how many route configurations this client holds (sent or ACKed) name
    /// it: a cluster is removed from the client only once this drops to zero.
    cluster_users: BTreeMap<String, usize>,
}

impl StreamState {
    pub fn new(mode: Mode, group: Group) -> Self {
        StreamState {
            mode,
            group,
            next_nonce: 0,
            types: BTreeMap::new(),
            cluster_users: BTreeMap::new(),
        }
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
                outcome = self.settle(type_url, request.error_detail.as_ref().map(|s| &s.message));
            }
        }
        let state = self.types.entry(type_url).or_default();
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let wildcard = type_url.is_full_state() && names.is_empty();
        if names != state.names || wildcard != state.wildcard || !state.requested {
            // A changed subscription is answered even when nothing it names changed, so that
            // a client asking for a resource that does not exist yet still gets a response.
            state.answered = false;
            state
                .recheck
                .extend(names.difference(&state.names).cloned());
        }
        let gone: Vec<String> = state.names.difference(&names).cloned().collect();
        state.names = names;
        state.wildcard = wildcard;
        state.requested = true;
        state.open_request = true;
        for name in gone {
            self.forget(type_url, &name);
        }
        outcome
    }

    pub fn on_delta_request(&mut self, request: &DeltaDiscoveryRequest) -> RequestOutcome {
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return RequestOutcome::UnknownType(request.type_url.clone());
        };
        let state = self.types.entry(type_url).or_default();
        let first = !state.requested;
        if first {
            state.requested = true;
            // The legacy wildcard: a first request for a full-state type that names nothing.
            state.wildcard =
                type_url.is_full_state() && request.resource_names_subscribe.is_empty();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
                state.look_again();
            } else {
                state.names.insert(name.clone());
                state.force.insert(name.clone());
            }
        }
        let mut gone = Vec::new();
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
                gone.extend(
                    state
                        .sent
                        .keys()
                        .filter(|n| !state.names.contains(*n))
                        .cloned(),
                );
            } else if state.names.remove(name) {
                state.force.remove(name);
                if !state.wildcard {
                    gone.push(name.clone());
                }
            }
        }
        if first {
            let mut initial: Vec<_> = request.initial_resource_versions.iter().collect();
            initial.sort();
            for (name, version) in initial {
                let held = Held {
                    version: version.clone(),
                    resource: None,
                };
                self.hold(type_url, View::Sent, name, Some(held.clone()));
                self.hold(type_url, View::Acked, name, Some(held));
            }
        }
        for name in gone {
            self.forget(type_url, &name);
        }
        if request.response_nonce.is_empty() {
            return RequestOutcome::Subscribed;
        }
        let state = self.types.entry(type_url).or_default();
        match &state.in_flight {
            Some(in_flight) if in_flight.nonce == request.response_nonce => {
                self.settle(type_url, request.error_detail.as_ref().map(|s| &s.message))
            }
            // Delta never drops a request for a stale nonce: its subscription changes are
            // already applied above.
            _ => RequestOutcome::Subscribed,
        }
    }

    /// Drops a resource the client no longer subscribes to: it deletes it itself.
    fn forget(&mut self, type_url: TypeUrl, name: &str) {
        self.hold(type_url, View::Sent, name, None);
        self.hold(type_url, View::Acked, name, None);
    }

    /// Records what the client holds of one resource, keeping the set digest and the cluster
    /// references of route configurations up to date.
    fn hold(&mut self, type_url: TypeUrl, view: View, name: &str, held: Option<Held>) {
        let state = self.types.entry(type_url).or_default();
        let map = match view {
            View::Sent => &mut state.sent,
            View::Acked => &mut state.acked,
        };
        let previous = match held {
            Some(held) => {
                if view == View::Sent {
                    state.sent_digest.toggle(name, &held.version);
                }
                let references = held.references().to_vec();
                let previous = map.insert(name.to_owned(), held);
                if type_url == TypeUrl::RouteConfiguration {
                    for cluster in references {
                        *self.cluster_users.entry(cluster).or_default() += 1;
                    }
                }
                previous
            }
            None => map.remove(name),
        };
        let Some(previous) = previous else {
            return;
        };
        let state = self.types.entry(type_url).or_default();
        if view == View::Sent {
            state.sent_digest.toggle(name, &previous.version);
        }
        if type_url != TypeUrl::RouteConfiguration {
            return;
        }
        for cluster in previous.references() {
            let Some(users) = self.cluster_users.get_mut(cluster) else {
                continue;
            };
            *users -= 1;
            if *users == 0 {
                self.cluster_users.remove(cluster);
                self.types
                    .entry(TypeUrl::Cluster)
                    .or_default()
                    .recheck
                    .insert(cluster.clone());
            }
        }
    }

    /// Settles the response in flight with the client's verdict.
    fn settle(&mut self, type_url: TypeUrl, error: Option<&String>) -> RequestOutcome {
        let state = self.types.entry(type_url).or_default();
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
                    .filter(|(_, held)| held.is_some())
                    .map(|(name, _)| name.clone())
                    .collect(),
            };
            state.last_nack = Some(nack.clone());
            return RequestOutcome::Nacked(nack);
        }
        state.acked_version = in_flight.version;
        for (name, held) in in_flight.changes {
            self.hold(type_url, View::Acked, &name, held);
        }
        RequestOutcome::Acked
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

    fn acked_and_settled(&self, type_url: TypeUrl, name: &str) -> bool {
        self.types.get(&type_url).is_some_and(|state| {
            state.acked.contains_key(name)
                && !state.force.contains(name)
                && state
                    .in_flight
                    .as_ref()
                    .is_none_or(|f| !f.changes.contains_key(name))
        })
    }

    /// Whether every cluster a route names is ACKed, with its endpoints where EDS feeds it.
    fn clusters_ready(&self, route: &Resource, snapshot: &Snapshot) -> bool {
        let endpoints = snapshot.resources(self.group, TypeUrl::ClusterLoadAssignment);
        route.references.iter().all(|cluster| {
            self.acked_and_settled(TypeUrl::Cluster, cluster)
                && (!endpoints.contains_key(cluster)
                    || self.acked_and_settled(TypeUrl::ClusterLoadAssignment, cluster))
        })
    }

    /// The names whose desired state may differ from what was sent: what the snapshot changed
    /// since the last answer, plus the names marked for another look.
    fn candidates(&mut self, type_url: TypeUrl, available: &ResourceMap) -> BTreeSet<String> {
        let state = self.types.entry(type_url).or_default();
        let mut names = std::mem::take(&mut state.recheck);
        names.extend(state.force.iter().cloned());
        match &state.seen {
            Some(seen) => names.extend(seen.diff(available).map(|item| match item {
                DiffItem::Add(name, _) | DiffItem::Remove(name, _) => name.clone(),
                DiffItem::Update { new: (name, _), .. } => name.clone(),
            })),
            None => {
                names.extend(state.sent.keys().cloned());
                if state.wildcard {
                    names.extend(available.keys().cloned());
                } else {
                    names.extend(state.names.iter().cloned());
                }
            }
        }
        state.seen = Some(available.clone());
        names
    }

    /// What the client should hold of `name` now: `None` when it should not hold it.
    fn desired(
        &mut self,
        type_url: TypeUrl,
        name: &str,
        available: &ResourceMap,
        snapshot: &Snapshot,
    ) -> Option<Arc<Resource>> {
        let state = &self.types[&type_url];
        let previous = || state.sent.get(name).and_then(|h| h.resource.clone());
        let current = state
            .subscribed(name)
            .then(|| available.get(name).cloned())
            .flatten();
        match (type_url, current) {
            // A cluster the client's routes still name stays until they stop naming it.
            (TypeUrl::Cluster, None) if self.cluster_users.contains_key(name) => previous(),
            // A route whose clusters are not ready waits; the client keeps what it has.
            (TypeUrl::RouteConfiguration, Some(route))
                if !self.clusters_ready(&route, snapshot) =>
            {
                let previous = previous();
                self.types
                    .entry(type_url)
                    .or_default()
                    .recheck
                    .insert(name.to_owned());
                previous
            }
            (_, current) => current,
        }
    }

    fn respond(&mut self, type_url: TypeUrl, snapshot: &Snapshot) -> Option<Response> {
        let state = self.types.get(&type_url)?;
        let waiting = match self.mode {
            Mode::StateOfTheWorld => !state.open_request,
            Mode::Delta => !state.requested,
        };
        if waiting || state.in_flight.is_some() {
            return None;
        }
        let available = snapshot.resources(self.group, type_url).clone();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for name in self.candidates(type_url, &available) {
            let desired = self.desired(type_url, &name, &available, snapshot);
            let state = &self.types[&type_url];
            match desired {
                Some(resource) => {
                    let unchanged = state
                        .sent
                        .get(&name)
                        .is_some_and(|held| held.version == resource.version);
                    if !unchanged || state.force.contains(&name) {
                        changed.push(resource);
                    }
                }
                None => {
                    if state.sent.contains_key(&name)
                        && (type_url.is_full_state() || !state.subscribed(&name))
                    {
                        removed.push(name);
                    }
                }
            }
        }
        let state = self.types.get_mut(&type_url)?;
        // Envoy waits for the first LDS and CDS (and SRDS) answer before it starts serving, so
        // those are answered even when there is nothing in them.
        let first_answer = type_url.is_full_state() && !state.answered;
        if changed.is_empty() && removed.is_empty() && !first_answer {
            return None;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let mut changes: BTreeMap<String, Option<Held>> = changed
            .iter()
            .map(|resource| (resource.name.clone(), Some(Held::of(resource))))
            .collect();
        changes.extend(removed.iter().map(|name| (name.clone(), None)));
        for (name, held) in &changes {
            self.types.get_mut(&type_url)?.force.remove(name);
            self.hold(type_url, View::Sent, name, held.clone());
        }
        if type_url == TypeUrl::Cluster {
            self.refresh_endpoints_of(&changed);
        }
        let state = self.types.get_mut(&type_url)?;
        let version = state.sent_digest.version();
        state.open_request = false;
        state.answered = true;
        state.last_nonce = nonce.clone();
        state.in_flight = Some(InFlight {
            nonce: nonce.clone(),
            version: version.clone(),
            changes,
        });
        let response = match self.mode {
            Mode::StateOfTheWorld => {
                // SotW carries every resource of a full-state type; of the others, what changed.
                let resources = if type_url.is_full_state() {
                    state
                        .sent
                        .values()
                        .filter_map(|held| held.resource.as_ref())
                        .map(|r| r.body.clone())
                        .collect()
                } else {
                    changed.iter().map(|r| r.body.clone()).collect()
                };
                Response::Sotw(DiscoveryResponse {
                    version_info: version,
                    resources,
                    type_url: type_url.as_str().to_owned(),
                    nonce,
                    ..Default::default()
                })
            }
            Mode::Delta => Response::Delta(DeltaDiscoveryResponse {
                system_version_info: version,
                resources: changed
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
                        sync: type_sync(state),
                    },
                )
            })
            .collect()
    }

    /// What this stream sent of `type_url` (the latest version of each resource, accepted or
    /// not), and where each resource stands.
    pub fn sent(&self, type_url: TypeUrl) -> Vec<SentResource> {
        let Some(state) = self.types.get(&type_url) else {
            return Vec::new();
        };
        state
            .sent
            .iter()
            .map(|(name, held)| {
                let in_flight = state
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.changes.contains_key(name));
                let acked = state
                    .acked
                    .get(name)
                    .is_some_and(|a| a.version == held.version);
                let sync = match (in_flight, acked) {
                    (true, _) => SyncStatus::Stale,
                    (false, true) => SyncStatus::Synced,
                    // Settled but not accepted: the client rejected this version.
                    (false, false) => SyncStatus::Nacked,
                };
                SentResource {
                    name: name.clone(),
                    version: held.version.clone(),
                    resource: held.resource.clone(),
                    sync,
                }
            })
            .collect()
    }

    /// The version of a resource this Envoy has ACKed.
    pub fn acked_version(&self, type_url: TypeUrl, name: &str) -> Option<&str> {
        let held = self.types.get(&type_url)?.acked.get(name)?;
        Some(&held.version)
    }
}

/// A type is NACKED while its last response is the rejected one: any later response changes
/// the last nonce, and is then either in flight, ACKed or itself the last NACK.
fn type_sync(state: &TypeState) -> SyncStatus {
    if state.in_flight.is_some() {
        SyncStatus::Stale
    } else if state
        .last_nack
        .as_ref()
        .is_some_and(|nack| nack.nonce == state.last_nonce)
    {
        SyncStatus::Nacked
    } else if state.last_nonce.is_empty() {
        SyncStatus::NotSent
    } else {
        SyncStatus::Synced
    }
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
    fn sync_status_follows_the_last_response_of_each_type() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Listener, &[], "", ""));
        assert_eq!(
            stream.status()[&TypeUrl::Listener].sync,
            SyncStatus::NotSent
        );
        let sent = sotw_responses(stream.poll(&snapshot));
        assert_eq!(stream.status()[&TypeUrl::Listener].sync, SyncStatus::Stale);
        assert_eq!(stream.sent(TypeUrl::Listener)[0].sync, SyncStatus::Stale);
        let nack = DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad listener".into(),
                details: vec![],
            }),
            ..sotw(TypeUrl::Listener, &[], "", &sent[0].nonce)
        };
        stream.on_sotw_request(&nack);
        assert_eq!(stream.status()[&TypeUrl::Listener].sync, SyncStatus::Nacked);
        let rejected = &stream.sent(TypeUrl::Listener)[0];
        assert_eq!(
            (rejected.name.as_str(), rejected.sync),
            ("l", SyncStatus::Nacked)
        );

        let mut fixed = snapshot.clone();
        put(
            &mut fixed,
            resource(TypeUrl::Listener, "l", 2, &[]),
            TypeUrl::Listener,
        );
        let resent = sotw_responses(stream.poll(&fixed));
        ack(&mut stream, &resent[0], &[]);
        let status = &stream.status()[&TypeUrl::Listener];
        assert_eq!(status.sync, SyncStatus::Synced, "the NACK is history");
        assert!(status.last_nack.is_some());
        assert_eq!(stream.sent(TypeUrl::Listener)[0].sync, SyncStatus::Synced);
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
