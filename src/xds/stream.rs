//! The xDS protocol for one Envoy stream, as a pure state machine: requests and snapshots in,
//! responses out. No I/O, so every protocol rule is unit-tested here.
//!
//! Rules it keeps (Envoy's xDS protocol document, and the field notes):
//! - one response in flight per type; SotW answers only an open request, and ignores requests
//!   whose nonce is stale; delta applies subscription changes whatever the nonce;
//! - a NACK (`error_detail`) is recorded and never answered by re-sending the rejected version;
//! - LDS, CDS and SRDS are sent whole in SotW; RDS and EDS carry only what changed; a large
//!   change goes out in several responses of about [`MAX_RESPONSE_BYTES`] where the protocol
//!   allows (delta; EDS and RDS in SotW);
//! - make-before-break: a route configuration goes out only once every cluster it names is
//!   ACKed by the Envoy, along with that cluster's endpoints; a cluster leaves the Envoy only
//!   once no route configuration the Envoy may hold can name it;
//! - after a cluster changes, its endpoints are sent again, since Envoy warms it until they come.
//!
//! Reconnects. An Envoy that reconnects (to a restarted sluice, or to another replica) keeps
//! serving what it holds and says what that is: delta lists each resource it holds with its
//! version (`initial_resource_versions`); SotW gives per type the `version_info` it last
//! accepted, and for EDS and RDS the names it holds. Envoy sends one request for every type it
//! ever subscribed to, all at once, when a stream opens (`GrpcMuxImpl::onStreamEstablished`),
//! so a reconnecting stream answers nothing until [`StreamState::reconnected`] says they are in.
//! Then:
//! - what the Envoy holds at the version the snapshot has is adopted as sent and ACKed and is
//!   not sent again: per resource in delta (versions are content hashes, the same in every
//!   process); per type in SotW, when the reported `version_info` is the digest of the set the
//!   snapshot has for the names the Envoy asks for;
//! - any other route configuration the Envoy holds has unknown content, so it may name any
//!   cluster: until each is replaced and ACKed (or unsubscribed), no cluster leaves the Envoy.
//!   Delta keeps a cluster by not removing it. SotW must list a cluster in every CDS response
//!   to keep it, which takes its body: the Envoy's EDS request names the clusters it holds, and
//!   [`StreamState::clusters_to_look_up`] has the control plane rebuild those the snapshot no
//!   longer has. Once no route of unknown content is left, a cluster that no route names goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
use serde::Serialize;

use imbl::OrdMap;
use imbl::ordmap::DiffItem;

use crate::xds::held::{Held, HeldMap, RemoveFreeing, Renamed, Subscription, same};
use crate::xds::request::SotwRequest;
use crate::xds::resource::{
    Group, Resource, ResourceMap, SetDigest, Snapshot, TypeUrl, encode_sotw_resources,
};

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
    Sotw(SotwResponse),
    Delta(DeltaResponse),
}

/// A response whose resources are already encoded, appended to the rest of the message on the
/// wire (protobuf reads a repeated field's entries wherever they come). A SotW answer that
/// carries every resource the snapshot has of a full-state type for the stream's group carries
/// them as the snapshot encoded them once for the whole group
/// ([`Snapshot::encoded_resources`]); a delta response's resources are encoded into one buffer
/// when it is made, so a response waiting to be sent holds no copy of each.
#[derive(Debug, Clone, PartialEq)]
pub struct WireResponse<M> {
    pub message: M,
    pub encoded_resources: Option<Bytes>,
}

pub type SotwResponse = WireResponse<DiscoveryResponse>;
pub type DeltaResponse = WireResponse<DeltaDiscoveryResponse>;

impl<M: prost::Message + Default> WireResponse<M> {
    /// The message as Envoy reads it, the encoded resources included.
    #[cfg(test)]
    pub(crate) fn decoded(&self) -> M {
        let mut bytes = self.message.encode_to_vec();
        bytes.extend_from_slice(self.encoded_resources.as_deref().unwrap_or_default());
        M::decode(bytes.as_slice()).expect("sluice encodes valid messages")
    }
}

/// The `resources` field of a delta response holding these, encoded into one buffer of exactly
/// their size; `None` for none.
fn encode_delta_resources(resources: &[Arc<Resource>]) -> Option<Bytes> {
    if resources.is_empty() {
        return None;
    }
    // Each entry alone in a response encodes as one entry of the `resources` field.
    let entries: Vec<DeltaDiscoveryResponse> = resources
        .iter()
        .map(|r| DeltaDiscoveryResponse {
            resources: vec![DeltaResource {
                name: r.name.clone(),
                version: r.version.clone(),
                resource: Some(r.body.clone()),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let mut encoded = Vec::with_capacity(entries.iter().map(prost::Message::encoded_len).sum());
    for entry in &entries {
        prost::Message::encode(entry, &mut encoded).expect("a Vec grows to fit any message");
    }
    Some(Bytes::from(encoded))
}

/// A cluster, and its endpoints when EDS feeds it, as the control plane would serve them now:
/// what a reconnecting SotW Envoy is sent to keep a cluster the snapshot no longer has.
#[derive(Debug, Clone)]
pub struct ClusterResources {
    pub cluster: Arc<Resource>,
    pub endpoints: Option<Arc<Resource>>,
}

#[derive(Debug, Clone)]
struct InFlight {
    nonce: String,
    version: String,
    /// What the response carries and what it removes, each in name order: what the client
    /// holds of this type once it accepts the response.
    sent: Vec<Arc<Resource>>,
    removed: Vec<String>,
}

impl InFlight {
    fn carries(&self, name: &str) -> bool {
        self.sent
            .binary_search_by(|resource| resource.name.as_str().cmp(name))
            .is_ok()
            || self
                .removed
                .binary_search_by(|n| n.as_str().cmp(name))
                .is_ok()
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.sent.iter().map(|r| &r.name).chain(&self.removed)
    }
}

/// Which of a type's views of the client a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Sent,
    Acked,
}

/// What the client should hold of a resource.
enum Want {
    /// This version.
    Hold(Arc<Resource>),
    /// Whatever it holds now, if anything.
    Keep,
    /// Nothing.
    Drop,
}

/// Whether the Envoy on this stream already held config when the stream opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// No request yet.
    Unknown,
    /// Its first request said it holds nothing.
    Fresh,
    /// It holds config, and the rest of its reconnect requests may still be coming.
    Reconnecting,
    /// It holds config, and all its reconnect requests are in.
    Reconnected,
}

/// A stream's state per type, each allocated when its type is first used: a stream uses four
/// to six types, and every connected Envoy has one of these.
#[derive(Debug, Default)]
struct TypeStates([Option<Box<TypeState>>; TypeUrl::ALL.len()]);

impl TypeStates {
    fn get(&self, type_url: &TypeUrl) -> Option<&TypeState> {
        self.0[*type_url as usize].as_deref()
    }

    fn get_mut(&mut self, type_url: &TypeUrl) -> Option<&mut TypeState> {
        self.0[*type_url as usize].as_deref_mut()
    }

    fn or_default(&mut self, type_url: TypeUrl) -> &mut TypeState {
        self.0[type_url as usize].get_or_insert_default()
    }

    fn iter(&self) -> impl Iterator<Item = (TypeUrl, &TypeState)> {
        TypeUrl::ALL
            .into_iter()
            .filter_map(|type_url| Some((type_url, self.get(&type_url)?)))
    }
}

impl std::ops::Index<&TypeUrl> for TypeStates {
    type Output = TypeState;

    fn index(&self, type_url: &TypeUrl) -> &TypeState {
        self.get(type_url)
            .unwrap_or_else(|| panic!("no state for {}", type_url.as_str()))
    }
}

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// Whether the type was ever requested on this stream.
    requested: bool,
    /// SotW: a request is open and waits for an answer.
    open_request: bool,
    /// Whether the current subscription got its first answer.
    answered: bool,
    /// What was sent (accepted or not): never re-send what the client already got.
    sent: HeldMap,
    /// The version of `sent` as a whole, kept up to date as entries change.
    sent_digest: SetDigest,
    /// What the client ACKed, kept as the names where it differs from `sent` (`None`: it ACKed
    /// nothing of that name). Once a stream settles nearly all it was sent is ACKed, and a
    /// second full map per stream doubled the memory every connected Envoy costs.
    acked_apart: BTreeMap<String, Option<Held>>,
    acked_version: String,
    /// Names held (sent or ACKed) whose content is unknown.
    unresolved: BTreeSet<String>,
    /// SotW: the `version_info` of this type's first request on a reconnect, not yet compared
    /// with the snapshot.
    reported: Option<String>,
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
    /// What the client ACKed of `name`.
    fn acked(&self, name: &str) -> Option<Held> {
        match self.acked_apart.get(name) {
            Some(apart) => apart.clone(),
            None => self.sent.get(name),
        }
    }

    fn acked_len(&self) -> usize {
        let mut len = self.sent.len();
        for (name, apart) in &self.acked_apart {
            len += usize::from(apart.is_some());
            len -= usize::from(self.sent.contains_key(name));
        }
        len
    }

    /// Records what was sent of `name`; returns what was sent before.
    fn set_sent(&mut self, name: &str, held: Option<Held>) -> Option<Held> {
        let previous = self.sent.set(name, held);
        let now = self.sent.get(name);
        self.subscription
            .held_changed(name, previous.is_some(), now.is_some());
        match self.acked_apart.get(name) {
            // Until now the client had ACKed what was sent: it still holds that.
            None if !same(previous.as_ref(), now.as_ref()) => {
                self.acked_apart.insert(name.to_owned(), previous.clone());
            }
            Some(acked) if same(acked.as_ref(), now.as_ref()) => {
                self.acked_apart.remove_freeing(name);
            }
            _ => {}
        }
        previous
    }

    /// Records what the client ACKed of `name`; returns what it had ACKed before.
    fn set_acked(&mut self, name: &str, held: Option<Held>) -> Option<Held> {
        let previous = self.acked(name);
        if same(held.as_ref(), self.sent.get(name).as_ref()) {
            self.acked_apart.remove_freeing(name);
        } else {
            self.acked_apart.insert(name.to_owned(), held);
        }
        previous
    }

    fn subscribed(&self, name: &str) -> bool {
        self.subscription.covers(name, &self.sent)
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

/// The clusters the route configurations a client holds may name. A count per stream cost as
/// much as all else a stream keeps; the snapshot counts the clusters its routes name for each
/// group, and a stream corrects that count where what it holds differs from the snapshot's.
#[derive(Debug, Default)]
struct NamedClusters {
    /// A route configuration of unknown content is held: it may name any cluster.
    any: bool,
    /// The snapshot's count for the stream's group.
    counted: OrdMap<String, usize>,
    /// What the routes sent name minus what the snapshot's name, where they differ.
    apart: BTreeMap<String, isize>,
    /// What the routes ACKed apart from those sent name.
    acked: BTreeSet<String>,
}

impl NamedClusters {
    fn may_name(&self, cluster: &str) -> bool {
        let counted = self.counted.get(cluster).map_or(0, |n| *n as isize);
        self.any
            || self.acked.contains(cluster)
            || counted + self.apart.get(cluster).copied().unwrap_or_default() > 0
    }
}

#[derive(Debug)]
pub struct StreamState {
    mode: Mode,
    group: Group,
    next_nonce: u64,
    types: TypeStates,
    start: Start,
    /// SotW: the clusters a reconnecting Envoy named in its first EDS request, that is the
    /// clusters it holds that EDS feeds.
    held_endpoints: Option<BTreeSet<String>>,
    /// Whether [`StreamState::clusters_to_look_up`] has asked for them.
    looked_up: bool,
    /// Whether the stream answered since the Envoy's reconnect requests were in.
    polled: bool,
    /// Clusters the Envoy held on reconnect that the snapshot lacks, rebuilt by the control
    /// plane: SotW keeps them in CDS while a route may name them.
    retired: BTreeMap<String, ClusterResources>,
    /// When tracked: the resources the client ACKed or rejected since the last
    /// [`StreamState::take_settled`], so that whoever reports on them looks only at those.
    settled: Option<Vec<(TypeUrl, String)>>,
}

fn digest_of(resources: &[Arc<Resource>]) -> String {
    let mut digest = SetDigest::default();
    for resource in resources {
        digest.toggle(&resource.name, &resource.version);
    }
    digest.version()
}

impl StreamState {
    pub fn new(mode: Mode, group: Group) -> Self {
        StreamState {
            mode,
            group,
            next_nonce: 0,
            types: TypeStates::default(),
            start: Start::Unknown,
            held_endpoints: None,
            looked_up: false,
            polled: false,
            retired: BTreeMap::new(),
            settled: None,
        }
    }

    /// Starts recording what the client ACKs or rejects, for [`StreamState::take_settled`].
    pub fn track_settled(&mut self) {
        self.settled.get_or_insert_with(Vec::new);
    }

    /// The resources the client ACKed or rejected since the last call (none unless
    /// [`StreamState::track_settled`]).
    pub fn take_settled(&mut self) -> Vec<(TypeUrl, String)> {
        self.settled
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether the Envoy holds config from an earlier stream and may still be sending the
    /// requests it sends on reconnecting; nothing is answered until [`Self::reconnected`].
    pub fn awaits_reconnect(&self) -> bool {
        self.start == Start::Reconnecting
    }

    /// Whether the stream has yet to give its first answers: its Envoy's reconnect requests are
    /// still coming in, or have not been answered.
    pub fn settling(&self) -> bool {
        match self.start {
            Start::Unknown | Start::Reconnecting => true,
            Start::Fresh => false,
            Start::Reconnected => !self.polled,
        }
    }

    /// Whether the client has ACKed exactly what the snapshot has for it, of every type.
    pub fn in_step(&self, snapshot: &Snapshot) -> bool {
        TypeUrl::ALL.into_iter().all(|type_url| {
            let available = snapshot.resources(self.group, type_url);
            match self.types.get(&type_url) {
                None => available.is_empty(),
                Some(state) => {
                    state.in_flight.is_none()
                        && (state.sent.is(available)
                            || (state.sent.len() == 0 && available.is_empty()))
                }
            }
        })
    }

    /// All the requests the Envoy sends on reconnecting are in: answering may start.
    pub fn reconnected(&mut self) {
        if self.start == Start::Reconnecting {
            self.start = Start::Reconnected;
        }
    }

    /// SotW, once after reconnecting: the clusters the Envoy holds that the snapshot lacks.
    /// The control plane rebuilds them and hands them to [`Self::keep_clusters`], so that they
    /// stay in CDS while a route the Envoy holds may name them.
    pub fn clusters_to_look_up(&mut self, snapshot: &Snapshot) -> Vec<String> {
        if self.start != Start::Reconnected || self.looked_up {
            return Vec::new();
        }
        self.looked_up = true;
        let clusters = snapshot.resources(self.group, TypeUrl::Cluster);
        self.held_endpoints
            .iter()
            .flatten()
            .filter(|name| !clusters.contains_key(*name))
            .cloned()
            .collect()
    }

    /// Clusters rebuilt for [`Self::clusters_to_look_up`].
    pub fn keep_clusters(&mut self, found: Vec<ClusterResources>) {
        for resources in found {
            self.retired
                .insert(resources.cluster.name.clone(), resources);
        }
    }

    fn note_start(&mut self, holds_config: bool) {
        if self.start == Start::Unknown {
            self.start = if holds_config {
                Start::Reconnecting
            } else {
                Start::Fresh
            };
        }
    }

    /// Takes a SotW request; `snapshot` is the latest, if any, whose names a request may give.
    pub fn on_sotw_request(
        &mut self,
        request: &SotwRequest,
        snapshot: Option<&Snapshot>,
    ) -> RequestOutcome {
        let Some(type_url) = TypeUrl::parse(request.type_url()) else {
            return RequestOutcome::UnknownType(request.type_url().to_owned());
        };
        self.note_start(!request.version_info().is_empty());
        let state = self.types.or_default(type_url);
        let mut outcome = RequestOutcome::Subscribed;
        if !request.response_nonce().is_empty() {
            if request.response_nonce() != state.last_nonce {
                return RequestOutcome::StaleNonce;
            }
            // The first request naming a response settles it; later ones with the same nonce
            // only change the subscription.
            if state.in_flight.is_some() {
                outcome = self.settle(type_url, request.error_detail().map(|s| &s.message));
            }
        }
        let group = self.group;
        let state = self.types.or_default(type_url);
        let first = !state.requested;
        let wildcard = type_url.is_full_state() && request.names().len() == 0;
        let mut gone = Vec::new();
        if state.requested && !wildcard && !state.subscription.wildcard() {
            // Most requests name what the client was sent, or all the snapshot has: an ACK, or
            // a client in step asking for a new cluster's endpoints. Recognised by the names'
            // digest, without comparing each name with what is held.
            let named_all = snapshot.filter(|snapshot| {
                request.names_digest() == snapshot.names_digest(group, type_url)
            });
            let renamed = match named_all {
                Some(snapshot) => state
                    .subscription
                    .name_all(snapshot.resources(group, type_url), &state.sent),
                None if state
                    .subscription
                    .names_exactly_held(request.names_utf8(), &state.sent) =>
                {
                    Renamed::default()
                }
                None => state.subscription.rename(request.names(), &state.sent),
            };
            if renamed == Renamed::default() {
                state.open_request = true;
                return outcome;
            }
            // A changed subscription is answered even when nothing it names changed, so that a
            // client asking for a resource that does not exist yet still gets a response.
            state.answered = false;
            state.recheck.extend(renamed.added);
            gone = renamed.dropped;
        } else {
            let names: BTreeSet<String> = request.names().map(str::to_owned).collect();
            let before = state.subscription.names(&state.sent);
            if names != before || wildcard != state.subscription.wildcard() || !state.requested {
                state.answered = false;
                state.recheck.extend(names.difference(&before).cloned());
                gone.extend(before.difference(&names).cloned());
                state.subscription.replace(names, wildcard, &state.sent);
            }
        }
        state.requested = true;
        state.open_request = true;
        for name in gone {
            self.forget(type_url, &name);
        }
        if first && !request.version_info().is_empty() {
            self.note_reported(type_url, request.version_info());
        }
        outcome
    }

    /// SotW: the first request of a type on a reconnect carries the version the Envoy last
    /// accepted. Its EDS names are the clusters it holds; its RDS names are routes of unknown
    /// content until the version proves otherwise.
    fn note_reported(&mut self, type_url: TypeUrl, version: &str) {
        let state = self.types.or_default(type_url);
        state.reported = Some(version.to_owned());
        state.acked_version = version.to_owned();
        let names = state.subscription.names(&state.sent);
        match type_url {
            TypeUrl::ClusterLoadAssignment => {
                self.held_endpoints = Some(names.into_iter().collect());
            }
            TypeUrl::RouteConfiguration => {
                for name in names {
                    self.hold(type_url, View::Sent, &name, Some(Held::unknown("")));
                    self.hold(type_url, View::Acked, &name, Some(Held::unknown("")));
                }
            }
            _ => {}
        }
    }

    pub fn on_delta_request(&mut self, request: &DeltaDiscoveryRequest) -> RequestOutcome {
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return RequestOutcome::UnknownType(request.type_url.clone());
        };
        let initial = &request.initial_resource_versions;
        self.note_start(!initial.is_empty());
        let state = self.types.or_default(type_url);
        let first = !state.requested;
        if first {
            state.requested = true;
            // The legacy wildcard: a first request for a full-state type that names nothing.
            let wildcard = type_url.is_full_state() && request.resource_names_subscribe.is_empty();
            state.subscription.set_wildcard(wildcard, &state.sent);
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.subscription.set_wildcard(true, &state.sent);
                state.look_again();
            } else {
                state.subscription.insert(name, &state.sent);
                // A reconnecting client that names what it already holds gets it again only if
                // its version differs.
                if !(first && initial.contains_key(name)) {
                    state.force.insert(name.clone());
                }
            }
        }
        let mut gone = Vec::new();
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.subscription.set_wildcard(false, &state.sent);
                let named = |n: &&String| state.subscription.names_contains(n, &state.sent);
                gone.extend(state.sent.names().filter(|n| !named(n)).cloned());
            } else if state.subscription.remove(name, &state.sent) {
                state.force.remove_freeing(name);
                if !state.subscription.wildcard() {
                    gone.push(name.clone());
                }
            }
        }
        if first && !initial.is_empty() {
            let mut held: Vec<_> = initial.iter().collect();
            held.sort();
            for (name, version) in held {
                self.hold(type_url, View::Sent, name, Some(Held::unknown(version)));
                self.hold(type_url, View::Acked, name, Some(Held::unknown(version)));
            }
            // The client is past its initial fetch: it needs no answer unless something
            // differs.
            let state = self.types.or_default(type_url);
            state.answered = true;
            state.acked_version = state.sent_digest.version();
        }
        for name in gone {
            self.forget(type_url, &name);
        }
        if request.response_nonce.is_empty() {
            return RequestOutcome::Subscribed;
        }
        let state = self.types.or_default(type_url);
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

    /// Records what the client holds of one resource, keeping the set digest, the names of
    /// unknown content and the cluster references of route configurations up to date.
    fn hold(&mut self, type_url: TypeUrl, view: View, name: &str, held: Option<Held>) {
        let state = self.types.or_default(type_url);
        if let (View::Sent, Some(held)) = (view, &held) {
            state.sent_digest.toggle(name, held.version());
        }
        let previous = match view {
            View::Sent => state.set_sent(name, held),
            View::Acked => state.set_acked(name, held),
        };
        if let (View::Sent, Some(previous)) = (view, &previous) {
            state.sent_digest.toggle(name, previous.version());
        }
        let unknown = |held: Option<Held>| held.is_some_and(|h| h.resource().is_none());
        let last_resolved = if unknown(state.sent.get(name)) || unknown(state.acked(name)) {
            state.unresolved.insert(name.to_owned());
            false
        } else {
            state.unresolved.remove_freeing(name) && state.unresolved.is_empty()
        };
        if type_url != TypeUrl::RouteConfiguration {
            return;
        }
        let clusters = self.types.or_default(TypeUrl::Cluster);
        // A cluster the route's previous version named may have lost its last user.
        clusters
            .recheck
            .extend(previous.iter().flat_map(Held::references).cloned());
        if last_resolved {
            // No route of unknown content is left: every cluster may have lost its last user.
            let held: Vec<String> = clusters.sent.names().cloned().collect();
            clusters.recheck.extend(held);
        }
    }

    /// Settles the response in flight with the client's verdict.
    fn settle(&mut self, type_url: TypeUrl, error: Option<&String>) -> RequestOutcome {
        let state = self.types.or_default(type_url);
        let Some(in_flight) = state.in_flight.take() else {
            return RequestOutcome::Subscribed;
        };
        if let Some(settled) = &mut self.settled {
            settled.extend(in_flight.names().map(|name| (type_url, name.clone())));
        }
        if let Some(message) = error {
            let nack = Nack {
                version: in_flight.version,
                nonce: in_flight.nonce,
                message: message.clone(),
                resources: in_flight.sent.iter().map(|r| r.name.clone()).collect(),
            };
            state.last_nack = Some(nack.clone());
            return RequestOutcome::Nacked(nack);
        }
        state.acked_version = in_flight.version;
        for resource in &in_flight.sent {
            self.hold(
                type_url,
                View::Acked,
                &resource.name,
                Some(Held::of(resource)),
            );
        }
        for name in &in_flight.removed {
            self.hold(type_url, View::Acked, name, None);
        }
        RequestOutcome::Acked
    }

    /// The responses the snapshot calls for now, in the order Envoy must apply them.
    pub fn poll(&mut self, snapshot: &Snapshot) -> Vec<Response> {
        if self.start == Start::Reconnecting {
            return Vec::new();
        }
        self.polled = true;
        for type_url in TypeUrl::ALL {
            self.adopt(type_url, snapshot);
        }
        let mut responses = Vec::new();
        for type_url in TypeUrl::ALL {
            if let Some(response) = self.respond(type_url, snapshot) {
                responses.push(response);
            }
            if let Some(state) = self.types.get_mut(&type_url) {
                state.sent.share(snapshot.resources(self.group, type_url));
            }
        }
        responses
    }

    /// Takes what the Envoy reported holding as sent and ACKed wherever its version proves it
    /// is what the snapshot has, so that it is neither sent again nor of unknown content.
    fn adopt(&mut self, type_url: TypeUrl, snapshot: &Snapshot) {
        let Some(state) = self.types.get_mut(&type_url) else {
            return;
        };
        if let Some(version) = state.reported.take() {
            let candidates = self.reported_candidates(type_url, snapshot);
            if let Some(held) = candidates.into_iter().find(|set| digest_of(set) == version) {
                self.adopt_set(type_url, held);
            }
        }
        let state = &self.types[&type_url];
        let available = snapshot.resources(self.group, type_url);
        let mut known = Vec::new();
        for name in &state.unresolved {
            let Some(resource) = available.get(name) else {
                continue;
            };
            for (view, held) in [
                (View::Sent, state.sent.get(name)),
                (View::Acked, state.acked(name)),
            ] {
                let same =
                    held.is_some_and(|h| h.resource().is_none() && h.version() == resource.version);
                if same {
                    known.push((view, resource.clone()));
                }
            }
        }
        for (view, resource) in known {
            self.hold(type_url, view, &resource.name, Some(Held::of(&resource)));
        }
    }

    /// SotW: the sets the Envoy may hold of a type, one of which its reported version may be
    /// the digest of: what the snapshot has for the names it asks for; for CDS also the clusters
    /// it reported holding, with the rebuilt bodies of those the snapshot lacks.
    fn reported_candidates(
        &mut self,
        type_url: TypeUrl,
        snapshot: &Snapshot,
    ) -> Vec<Vec<Arc<Resource>>> {
        let available = snapshot.resources(self.group, type_url);
        let state = &self.types[&type_url];
        let retired_endpoints = |name: &String| {
            (type_url == TypeUrl::ClusterLoadAssignment)
                .then(|| self.retired.get(name)?.endpoints.clone())
                .flatten()
        };
        let asked: Vec<Arc<Resource>> = if state.subscription.wildcard() {
            available.values().cloned().collect()
        } else {
            state
                .subscription
                .names(&state.sent)
                .iter()
                .filter_map(|name| {
                    available
                        .get(name)
                        .cloned()
                        .or_else(|| retired_endpoints(name))
                })
                .collect()
        };
        let mut candidates = vec![asked];
        if type_url == TypeUrl::Cluster
            && let Some(held) = self.held_endpoints.take()
        {
            // A cluster without endpoints in the snapshot is fed by DNS, not EDS: the EDS
            // request does not name it.
            let endpoints = snapshot.resources(self.group, TypeUrl::ClusterLoadAssignment);
            let mut set: Vec<Arc<Resource>> = available
                .values()
                .filter(|c| held.contains(&c.name) || !endpoints.contains_key(&c.name))
                .cloned()
                .collect();
            set.extend(
                held.iter()
                    .filter(|name| !available.contains_key(*name))
                    .filter_map(|name| Some(self.retired.get(name)?.cluster.clone())),
            );
            candidates.push(set);
        }
        candidates
    }

    /// Records that the Envoy holds exactly `held` of a type, sent and ACKed.
    fn adopt_set(&mut self, type_url: TypeUrl, held: Vec<Arc<Resource>>) {
        let state = self.types.or_default(type_url);
        state.answered = true;
        let names: BTreeSet<&str> = held.iter().map(|r| r.name.as_str()).collect();
        let absent: Vec<String> = state
            .sent
            .names()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in absent {
            self.forget(type_url, &name);
        }
        for resource in &held {
            self.hold(
                type_url,
                View::Sent,
                &resource.name,
                Some(Held::of(resource)),
            );
            self.hold(
                type_url,
                View::Acked,
                &resource.name,
                Some(Held::of(resource)),
            );
        }
    }

    fn acked_and_settled(&self, type_url: TypeUrl, name: &str) -> bool {
        self.types.get(&type_url).is_some_and(|state| {
            state.acked(name).is_some()
                && !state.force.contains(name)
                && state.in_flight.as_ref().is_none_or(|f| !f.carries(name))
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

    /// The clusters the route configurations this client holds (sent or ACKed) may name.
    fn named_clusters(&self, snapshot: &Snapshot) -> NamedClusters {
        let mut named = NamedClusters::default();
        let Some(routes) = self.types.get(&TypeUrl::RouteConfiguration) else {
            return named;
        };
        named.any = !routes.unresolved.is_empty();
        named.counted = snapshot.cluster_users(self.group).clone();
        let available = snapshot.resources(self.group, TypeUrl::RouteConfiguration);
        let mut count = |route: &Resource, by: isize| {
            for cluster in &route.references {
                *named.apart.entry(cluster.clone()).or_default() += by;
            }
        };
        for item in routes.sent.known_map().diff(available) {
            match item {
                DiffItem::Remove(_, sent) => count(sent, 1),
                DiffItem::Add(_, served) => count(served, -1),
                DiffItem::Update {
                    old: (_, sent),
                    new: (_, served),
                } => {
                    count(sent, 1);
                    count(served, -1);
                }
            }
        }
        named.acked = routes
            .acked_apart
            .values()
            .flatten()
            .flat_map(Held::references)
            .cloned()
            .collect();
        named
    }

    /// The names whose desired state may differ from what was sent: what the snapshot changed
    /// since the last answer, plus the names marked for another look.
    fn candidates(&mut self, type_url: TypeUrl, available: &ResourceMap) -> BTreeSet<String> {
        let state = self.types.or_default(type_url);
        let mut names = std::mem::take(&mut state.recheck);
        names.extend(state.force.iter().cloned());
        match &state.seen {
            Some(seen) => names.extend(seen.diff(available).map(|item| match item {
                DiffItem::Add(name, _) | DiffItem::Remove(name, _) => name.clone(),
                DiffItem::Update { new: (name, _), .. } => name.clone(),
            })),
            None => {
                names.extend(state.sent.names().cloned());
                if state.subscription.wildcard() {
                    names.extend(available.keys().cloned());
                } else {
                    names.extend(state.subscription.names(&state.sent));
                }
                if type_url == TypeUrl::Cluster {
                    names.extend(self.retired.keys().cloned());
                }
            }
        }
        self.types.or_default(type_url).seen = Some(available.clone());
        names
    }

    /// What the client should hold of `name` now. `named` caches [`Self::named_clusters`] over
    /// one answer, which changes no route configuration.
    fn desired(
        &mut self,
        type_url: TypeUrl,
        name: &str,
        available: &ResourceMap,
        snapshot: &Snapshot,
        named: &mut Option<NamedClusters>,
    ) -> Want {
        let state = &self.types[&type_url];
        let subscribed = state.subscribed(name);
        let current = subscribed.then(|| available.get(name).cloned()).flatten();
        match (type_url, current) {
            // A route whose clusters are not ready waits; the client keeps what it has.
            (TypeUrl::RouteConfiguration, Some(route))
                if !self.clusters_ready(&route, snapshot) =>
            {
                self.types
                    .or_default(type_url)
                    .recheck
                    .insert(name.to_owned());
                Want::Keep
            }
            (_, Some(resource)) => Want::Hold(resource),
            // A cluster a route may still name stays until no route can name it.
            (TypeUrl::Cluster, None)
                if named
                    .get_or_insert_with(|| self.named_clusters(snapshot))
                    .may_name(name) =>
            {
                self.kept_cluster(name)
            }
            (TypeUrl::ClusterLoadAssignment, None) if subscribed => self
                .retired
                .get(name)
                .and_then(|kept| kept.endpoints.clone())
                .map_or(Want::Drop, Want::Hold),
            _ => Want::Drop,
        }
    }

    /// How a cluster the snapshot no longer has stays with the client.
    fn kept_cluster(&self, name: &str) -> Want {
        match self.types[&TypeUrl::Cluster].sent.get(name) {
            Some(Held::Known(resource)) => Want::Hold(resource),
            // Delta keeps a cluster by not removing it, whatever its content.
            Some(_) if self.mode == Mode::Delta => Want::Keep,
            // SotW keeps it only by sending it: with the body rebuilt on reconnect, if any.
            _ => self
                .retired
                .get(name)
                .map_or(Want::Drop, |kept| Want::Hold(kept.cluster.clone())),
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
        let mut changed: Vec<Arc<Resource>> = Vec::new();
        let mut removed = Vec::new();
        let spread = self.mode == Mode::Delta || !type_url.is_full_state();
        let mut bytes = 0;
        let mut candidates = self.candidates(type_url, &available).into_iter();
        let mut named = None;
        while let Some(name) = candidates.next() {
            let desired = self.desired(type_url, &name, &available, snapshot, &mut named);
            let state = &self.types[&type_url];
            match desired {
                Want::Hold(resource) => {
                    let unchanged = state
                        .sent
                        .get(&name)
                        .is_some_and(|held| held.version() == resource.version);
                    if !unchanged || state.force.contains(&name) {
                        bytes += resource.body.value.len();
                        if spread && bytes > MAX_RESPONSE_BYTES && !changed.is_empty() {
                            // The rest waits for this response's ACK, unexamined: looking at
                            // every remaining name once per response would cost the square of
                            // a large change.
                            let state = self.types.get_mut(&type_url)?;
                            state.recheck.insert(name);
                            state.recheck.extend(candidates);
                            break;
                        }
                        changed.push(resource);
                    }
                }
                Want::Keep => {}
                Want::Drop => {
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
        changed.sort_by(|a, b| a.name.cmp(&b.name));
        removed.sort();
        for resource in &changed {
            self.types
                .get_mut(&type_url)?
                .force
                .remove_freeing(&resource.name);
            self.hold(
                type_url,
                View::Sent,
                &resource.name,
                Some(Held::of(resource)),
            );
        }
        for name in &removed {
            self.types.get_mut(&type_url)?.force.remove_freeing(name);
            self.hold(type_url, View::Sent, name, None);
        }
        if type_url == TypeUrl::Cluster {
            self.refresh_endpoints_of(&changed);
            for name in &removed {
                self.retired.remove_freeing(name);
            }
        }
        let state = self.types.get_mut(&type_url)?;
        let version = state.sent_digest.version();
        state.open_request = false;
        state.answered = true;
        state.last_nonce = nonce.clone();
        let response = match self.mode {
            Mode::StateOfTheWorld => {
                // SotW carries every resource of a full-state type; of the others, what changed.
                let encoded_resources = if !type_url.is_full_state() {
                    (!changed.is_empty()).then(|| encode_sotw_resources(&changed))
                } else {
                    state.sent.share(&available);
                    Some(if state.sent.is(&available) {
                        snapshot.encoded_resources(self.group, type_url)
                    } else {
                        encode_sotw_resources(state.sent.known_map().values())
                    })
                };
                Response::Sotw(SotwResponse {
                    message: DiscoveryResponse {
                        version_info: version.clone(),
                        type_url: type_url.as_str().to_owned(),
                        nonce: nonce.clone(),
                        ..Default::default()
                    },
                    encoded_resources,
                })
            }
            Mode::Delta => Response::Delta(DeltaResponse {
                message: DeltaDiscoveryResponse {
                    system_version_info: version.clone(),
                    type_url: type_url.as_str().to_owned(),
                    removed_resources: removed.clone(),
                    nonce: nonce.clone(),
                    ..Default::default()
                },
                encoded_resources: encode_delta_resources(&changed),
            }),
        };
        state.in_flight = Some(InFlight {
            nonce,
            version,
            sent: changed,
            removed,
        });
        Some(response)
    }

    /// Envoy keeps a new or changed cluster warming until its endpoints arrive, even unchanged
    /// ones, so the endpoints of every cluster that changed go out again.
    fn refresh_endpoints_of(&mut self, clusters: &[Arc<Resource>]) {
        let endpoints = self.types.or_default(TypeUrl::ClusterLoadAssignment);
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
                    type_url,
                    TypeStatus {
                        acked_version: state.acked_version.clone(),
                        acked_resources: state.acked_len(),
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
            .entries()
            .into_iter()
            .map(|(name, held)| {
                let in_flight = state.in_flight.as_ref().is_some_and(|f| f.carries(name));
                let acked = state
                    .acked(name)
                    .is_some_and(|a| a.version() == held.version());
                let sync = match (in_flight, acked) {
                    (true, _) => SyncStatus::Stale,
                    (false, true) => SyncStatus::Synced,
                    // Settled but not accepted: the client rejected this version.
                    (false, false) => SyncStatus::Nacked,
                };
                SentResource {
                    name: name.clone(),
                    version: held.version().to_owned(),
                    resource: held.resource().cloned(),
                    sync,
                }
            })
            .collect()
    }

    /// Whether this Envoy has ACKed `version` of a resource.
    pub fn acked_at(&self, type_url: TypeUrl, name: &str, version: &str) -> bool {
        self.types
            .get(&type_url)
            .and_then(|state| state.acked(name))
            .is_some_and(|held| held.version() == version)
    }
}

/// Roughly the most resource bytes one response carries where the protocol lets a type's
/// changes be spread over several (delta, and EDS and RDS in SotW); the rest follow, one
/// response per ACK. tonic keeps each stream's encode buffer at the size of the largest message
/// it sent, so one response with everything a fleet-wide Envoy needs at start (megabytes at
/// 1,000 ingresses) stayed allocated for every connected Envoy.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
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
        snapshot.apply([ResourceUpdate {
            type_url,
            groups: Some(Group::ALL.to_vec()),
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

    /// Cluster b and its endpoints.
    fn put_cluster_b(snapshot: &mut Snapshot) {
        put(
            snapshot,
            resource(TypeUrl::Cluster, "b", 1, &[]),
            TypeUrl::Cluster,
        );
        put(
            snapshot,
            resource(TypeUrl::ClusterLoadAssignment, "b", 1, &[]),
            TypeUrl::ClusterLoadAssignment,
        );
    }

    fn sotw(type_url: TypeUrl, names: &[&str], version: &str, nonce: &str) -> SotwRequest {
        discovery(type_url, names, version, nonce).into()
    }

    fn discovery(
        type_url: TypeUrl,
        names: &[&str],
        version: &str,
        nonce: &str,
    ) -> DiscoveryRequest {
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
                Response::Sotw(r) => r.decoded(),
                Response::Delta(_) => panic!("a delta response on a SotW stream"),
            })
            .collect()
    }

    fn ack(stream: &mut StreamState, response: &DiscoveryResponse, names: &[&str]) {
        let type_url = TypeUrl::parse(&response.type_url).unwrap();
        let outcome = stream.on_sotw_request(
            &sotw(type_url, names, &response.version_info, &response.nonce),
            None,
        );
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
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""), None);
        let first = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&first), [("CDS", 1)]);
        assert!(stream.poll(&snapshot).is_empty(), "one response in flight");

        let stale = stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", "no-such-nonce"), None);
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
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &[], "", ""), None);
        let mut next = snapshot.clone();
        stream.poll(&next);
        put(
            &mut next,
            resource(TypeUrl::ClusterLoadAssignment, "b", 1, &[]),
            TypeUrl::ClusterLoadAssignment,
        );
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a"], "", ""), None);
        let first = sotw_responses(stream.poll(&next));
        assert_eq!(short(&first), [("EDS", 1)]);
        ack(&mut stream, &first[0], &["a"]);
        // Envoy learns of cluster b and asks for its endpoints, echoing the last nonce.
        let outcome = stream.on_sotw_request(
            &sotw(
                TypeUrl::ClusterLoadAssignment,
                &["a", "b"],
                &first[0].version_info,
                &first[0].nonce,
            ),
            None,
        );
        assert_eq!(outcome, RequestOutcome::Subscribed);
        assert_eq!(short(&sotw_responses(stream.poll(&next))), [("EDS", 1)]);
    }

    #[test]
    fn a_nack_is_recorded_and_the_rejected_version_is_not_sent_again() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Listener, &[], "", ""), None);
        let sent = sotw_responses(stream.poll(&snapshot));
        let nack: SotwRequest = DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad listener".into(),
                details: vec![],
            }),
            ..discovery(TypeUrl::Listener, &[], "", &sent[0].nonce)
        }
        .into();
        let RequestOutcome::Nacked(recorded) = stream.on_sotw_request(&nack, None) else {
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
    fn acked_stays_what_the_client_accepted_while_other_versions_are_sent() {
        let v1 = Held::of(&resource(TypeUrl::Cluster, "a", 1, &[]));
        let v2 = Held::of(&resource(TypeUrl::Cluster, "a", 2, &[]));
        let version = |held: Option<&Held>| held.map(|h| h.version().to_owned());
        let mut state = TypeState::default();
        state.set_sent("a", Some(v1.clone()));
        assert_eq!(state.acked("a").map(|h| h.version().to_owned()), None);
        assert_eq!(state.acked_len(), 0);
        state.set_acked("a", Some(v1.clone()));
        assert!(
            state.acked_apart.is_empty(),
            "a settled name costs one entry"
        );
        assert_eq!(state.acked_len(), 1);
        state.set_sent("a", Some(v2.clone()));
        assert_eq!(
            version(state.acked("a").as_ref()),
            Some(v1.version().to_owned())
        );
        // Rejected: the client keeps v1 however often the sent version changes.
        state.set_sent("a", None);
        assert_eq!(
            version(state.acked("a").as_ref()),
            Some(v1.version().to_owned())
        );
        assert_eq!(state.acked_len(), 1);
        state.set_sent("a", Some(v1.clone()));
        assert!(state.acked_apart.is_empty());
        state.set_sent("a", Some(v2.clone()));
        let previous = state.set_acked("a", Some(v2.clone()));
        assert_eq!(version(previous.as_ref()), Some(v1.version().to_owned()));
        assert!(state.acked_apart.is_empty());
        // Content learnt for a version the client holds is not the same record as an unknown one.
        state.set_acked("a", Some(Held::unknown(v2.version())));
        assert!(state.acked("a").is_some_and(|h| h.resource().is_none()));
        state.set_sent("a", None);
        state.set_acked("a", None);
        assert!(state.acked_apart.is_empty());
        assert_eq!(state.acked_len(), 0);
    }

    #[test]
    fn sync_status_follows_the_last_response_of_each_type() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Listener, &[], "", ""), None);
        assert_eq!(
            stream.status()[&TypeUrl::Listener].sync,
            SyncStatus::NotSent
        );
        let sent = sotw_responses(stream.poll(&snapshot));
        assert_eq!(stream.status()[&TypeUrl::Listener].sync, SyncStatus::Stale);
        assert_eq!(stream.sent(TypeUrl::Listener)[0].sync, SyncStatus::Stale);
        let nack: SotwRequest = DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad listener".into(),
                details: vec![],
            }),
            ..discovery(TypeUrl::Listener, &[], "", &sent[0].nonce)
        }
        .into();
        stream.on_sotw_request(&nack, None);
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
        stream.on_sotw_request(&sotw(TypeUrl::RouteConfiguration, &["r"], "", ""), None);
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""), None);
        let cds = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&cds), [("CDS", 1)], "no route before its cluster");
        ack(&mut stream, &cds[0], &[]);
        assert!(
            stream.poll(&snapshot).is_empty(),
            "no route before the endpoints"
        );
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a"], "", ""), None);
        let eds = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&eds), [("EDS", 1)]);
        ack(&mut stream, &eds[0], &["a"]);
        assert_eq!(short(&sotw_responses(stream.poll(&snapshot))), [("RDS", 1)]);
    }

    /// Brings a SotW stream to the point where it holds everything in `snapshot`.
    fn converged(snapshot: &Snapshot) -> StreamState {
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""), None);
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["a"], "", ""), None);
        stream.on_sotw_request(&sotw(TypeUrl::Listener, &[], "", ""), None);
        stream.on_sotw_request(&sotw(TypeUrl::RouteConfiguration, &["r"], "", ""), None);
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
    fn a_stream_is_in_step_once_it_acked_what_the_snapshot_has() {
        let snapshot = base();
        let mut fresh = StreamState::new(Mode::StateOfTheWorld, Group::All);
        assert!(!fresh.in_step(&snapshot));
        fresh.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""), None);
        assert_eq!(short(&sotw_responses(fresh.poll(&snapshot))), [("CDS", 1)]);
        assert!(!fresh.in_step(&snapshot), "clusters sent, not ACKed");
        let mut stream = converged(&snapshot);
        assert!(stream.in_step(&snapshot));
        let next = moved();
        assert!(!stream.in_step(&next), "the snapshot changed");
        let cds = sotw_responses(stream.poll(&next));
        ack(&mut stream, &cds[0], &[]);
        assert!(
            !stream.in_step(&next),
            "a is kept, which the snapshot lacks"
        );
    }

    #[test]
    fn a_removed_cluster_stays_until_the_routes_stop_naming_it() {
        let snapshot = base();
        let mut stream = converged(&snapshot);
        let next = moved();
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&cds), [("CDS", 2)], "a is kept beside b");
        ack(&mut stream, &cds[0], &[]);
        stream.on_sotw_request(
            &sotw(TypeUrl::ClusterLoadAssignment, &["a", "b"], "", ""),
            None,
        );
        let eds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&eds), [("EDS", 1)]);
        ack(&mut stream, &eds[0], &["a", "b"]);
        let rds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&rds), [("RDS", 1)]);
        assert!(
            stream.poll(&next).is_empty(),
            "a stays while the client may still hold the route naming it"
        );
        ack(&mut stream, &rds[0], &["r"]);
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&cds), [("CDS", 1)], "a goes once no route names it");
    }

    #[test]
    fn a_full_sotw_answer_carries_the_resources_the_snapshot_encoded_once() {
        let snapshot = base();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""), None);
        let responses = stream.poll(&snapshot);
        let [Response::Sotw(cds)] = responses.as_slice() else {
            panic!("one CDS answer: {responses:?}");
        };
        assert_eq!(
            cds.encoded_resources,
            Some(snapshot.encoded_resources(Group::All, TypeUrl::Cluster)),
            "the group's encoding, not the stream's"
        );
        assert!(cds.message.resources.is_empty());
        let available = snapshot.resources(Group::All, TypeUrl::Cluster);
        let bodies: Vec<_> = available.values().map(|r| r.body.clone()).collect();
        assert_eq!(cds.decoded().resources, bodies);
        assert_eq!(cds.decoded().nonce, cds.message.nonce);
    }

    fn shares(stream: &StreamState, snapshot: &Snapshot, type_url: TypeUrl) -> bool {
        stream.types[&type_url]
            .sent
            .is(snapshot.resources(Group::All, type_url))
    }

    #[test]
    fn a_stream_holding_what_the_snapshot_has_shares_its_maps() {
        let snapshot = base();
        let mut stream = converged(&snapshot);
        let types = [
            TypeUrl::Cluster,
            TypeUrl::ClusterLoadAssignment,
            TypeUrl::RouteConfiguration,
        ];
        assert!(types.iter().all(|t| shares(&stream, &snapshot, *t)));
        let next = moved();
        let cds = sotw_responses(stream.poll(&next));
        ack(&mut stream, &cds[0], &[]);
        assert!(
            !shares(&stream, &next, TypeUrl::Cluster),
            "a is kept, which the snapshot lacks"
        );
        stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["b"], "", ""), None);
        for _ in 0..4 {
            for response in sotw_responses(stream.poll(&next)) {
                let names: &[&str] = match TypeUrl::parse(&response.type_url).unwrap() {
                    TypeUrl::ClusterLoadAssignment => &["b"],
                    TypeUrl::RouteConfiguration => &["r"],
                    _ => &[],
                };
                ack(&mut stream, &response, names);
            }
        }
        assert!(stream.poll(&next).is_empty());
        assert!(types.iter().all(|t| shares(&stream, &next, *t)));
    }

    #[test]
    fn a_request_naming_all_the_snapshot_has_is_taken_as_its_names() {
        let snapshot = base();
        let mut next = snapshot.clone();
        put_cluster_b(&mut next);
        // The same requests, with the snapshot whose names they give and without it: the
        // same answers.
        let mut answers = Vec::new();
        for given in [Some(&next), None] {
            let mut stream = converged(&snapshot);
            let cds = sotw_responses(stream.poll(&next));
            assert_eq!(short(&cds), [("CDS", 2)], "SotW sends every cluster");
            ack(&mut stream, &cds[0], &[]);
            // Not in order, as Envoy names them.
            let request = sotw(TypeUrl::ClusterLoadAssignment, &["b", "a"], "", "");
            assert_eq!(
                request.names_digest(),
                next.names_digest(Group::All, TypeUrl::ClusterLoadAssignment)
            );
            stream.on_sotw_request(&request, given);
            let eds = sotw_responses(stream.poll(&next));
            assert_eq!(short(&eds), [("EDS", 1)]);
            assert_eq!(eds[0].resources.len(), 1, "only b's endpoints are new");
            let acked = stream.on_sotw_request(
                &sotw(
                    TypeUrl::ClusterLoadAssignment,
                    &["a", "b"],
                    &eds[0].version_info,
                    &eds[0].nonce,
                ),
                given,
            );
            assert_eq!(acked, RequestOutcome::Acked);
            assert!(stream.poll(&next).is_empty(), "the ACK changes nothing");
            assert!(stream.in_step(&next));
            // Naming fewer than the snapshot has drops the rest.
            stream.on_sotw_request(&sotw(TypeUrl::ClusterLoadAssignment, &["b"], "", ""), given);
            assert!(
                stream.poll(&next).is_empty(),
                "nothing to send for a dropped name"
            );
            let held: Vec<(String, String)> = stream
                .sent(TypeUrl::ClusterLoadAssignment)
                .into_iter()
                .map(|r| (r.name, r.version))
                .collect();
            assert_eq!(held.len(), 1);
            assert_eq!(held[0].0, "b");
            answers.push((eds[0].resources.clone(), held));
        }
        assert_eq!(answers[0], answers[1]);
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
        stream.on_sotw_request(
            &sotw(TypeUrl::RouteConfiguration, &["r", "later"], "", ""),
            None,
        );
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
                Response::Delta(r) => r.decoded(),
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
        assert!(
            stream.poll(&snapshot).is_empty(),
            "its other requests may be coming"
        );
        stream.reconnected();
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

    // -----------------------------------------------------------------------------------------
    // Reconnects: an Envoy that held config from an earlier stream (a restarted sluice, or
    // another replica).

    /// `base()` after the split of route `r` moved from cluster `a` to cluster `b`, and `a`
    /// went (in the config; make-before-break keeps it for the Envoy a while).
    fn moved() -> Snapshot {
        let mut next = base();
        remove(&mut next, TypeUrl::Cluster, "a");
        remove(&mut next, TypeUrl::ClusterLoadAssignment, "a");
        put_cluster_b(&mut next);
        put(
            &mut next,
            resource(TypeUrl::RouteConfiguration, "r", 2, &["b"]),
            TypeUrl::RouteConfiguration,
        );
        next
    }

    fn version(snapshot: &Snapshot, type_url: TypeUrl, name: &str) -> String {
        snapshot.resources(Group::All, type_url)[name]
            .version
            .clone()
    }

    /// The first delta request of a type from an Envoy that holds `held` (name, version).
    fn delta_reconnect(
        type_url: TypeUrl,
        subscribe: &[&str],
        held: &[(&str, String)],
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            initial_resource_versions: held
                .iter()
                .map(|(name, version)| (name.to_string(), version.clone()))
                .collect(),
            ..delta(type_url, subscribe, &[], "")
        }
    }

    /// Resources of about 30 KB each: three make more than one response may carry.
    fn large(snapshot: &mut Snapshot, type_url: TypeUrl, names: &[&str]) {
        for (i, name) in names.iter().enumerate() {
            let body = envoy_types::pb::google::protobuf::BytesValue {
                value: vec![i as u8; 30_000],
            };
            put(
                snapshot,
                Resource::new(type_url, *name, &body, vec![]),
                type_url,
            );
        }
    }

    #[test]
    fn delta_spreads_a_large_change_over_responses_one_per_ack() {
        let mut snapshot = Snapshot::default();
        large(&mut snapshot, TypeUrl::Cluster, &["a", "b", "c", "d", "e"]);
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        stream.on_delta_request(&delta(TypeUrl::Cluster, &[], &[], ""));
        let mut received = Vec::new();
        for expected in [2, 2, 1] {
            let responses = delta_responses(stream.poll(&snapshot));
            assert_eq!(responses.len(), 1);
            assert_eq!(responses[0].resources.len(), expected);
            assert!(
                delta_responses(stream.poll(&snapshot)).is_empty(),
                "one response in flight"
            );
            received.extend(names(&responses[0]).into_iter().map(str::to_owned));
            delta_ack(&mut stream, &responses[0]);
        }
        assert_eq!(received, ["a", "b", "c", "d", "e"]);
        assert!(stream.poll(&snapshot).is_empty());
        assert_eq!(stream.status()[&TypeUrl::Cluster].acked_resources, 5);
    }

    #[test]
    fn sotw_sends_full_state_types_whole_and_spreads_endpoints() {
        let mut snapshot = Snapshot::default();
        let clusters = ["a", "b", "c"];
        large(&mut snapshot, TypeUrl::Cluster, &clusters);
        large(&mut snapshot, TypeUrl::ClusterLoadAssignment, &clusters);
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""), None);
        let cds = sotw_responses(stream.poll(&snapshot));
        assert_eq!(short(&cds), [("CDS", 3)], "CDS is always the whole set");
        ack(&mut stream, &cds[0], &[]);
        stream.on_sotw_request(
            &sotw(TypeUrl::ClusterLoadAssignment, &clusters, "", ""),
            None,
        );
        let mut version = String::new();
        for expected in [2, 1] {
            let eds = sotw_responses(stream.poll(&snapshot));
            assert_eq!(short(&eds), [("EDS", expected)]);
            ack(&mut stream, &eds[0], &clusters);
            version = eds[0].version_info.clone();
        }
        assert!(stream.poll(&snapshot).is_empty());
        let all: Vec<_> = clusters
            .iter()
            .map(|name| {
                snapshot.resources(Group::All, TypeUrl::ClusterLoadAssignment)[*name].clone()
            })
            .collect();
        assert_eq!(
            version,
            digest_of(&all),
            "the last part's version is the whole set's"
        );
    }

    fn delta_ack(stream: &mut StreamState, response: &DeltaDiscoveryResponse) {
        let type_url = TypeUrl::parse(&response.type_url).unwrap();
        let outcome = stream.on_delta_request(&delta(type_url, &[], &[], &response.nonce));
        assert_eq!(outcome, RequestOutcome::Acked);
    }

    fn delta_short(
        responses: &[DeltaDiscoveryResponse],
    ) -> Vec<(&'static str, Vec<&str>, Vec<&str>)> {
        responses
            .iter()
            .map(|r| {
                (
                    TypeUrl::parse(&r.type_url).unwrap().short(),
                    names(r),
                    r.removed_resources.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn delta_reconnect_with_nothing_changed_sends_nothing() {
        let snapshot = base();
        let held = |type_url, name: &'static str| [(name, version(&snapshot, type_url, name))];
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::Cluster,
            &[],
            &held(TypeUrl::Cluster, "a"),
        ));
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::ClusterLoadAssignment,
            &["a"],
            &held(TypeUrl::ClusterLoadAssignment, "a"),
        ));
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::Listener,
            &[],
            &held(TypeUrl::Listener, "l"),
        ));
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::RouteConfiguration,
            &["r"],
            &held(TypeUrl::RouteConfiguration, "r"),
        ));
        stream.reconnected();
        assert!(stream.poll(&snapshot).is_empty(), "the Envoy has it all");
        for (type_url, status) in stream.status() {
            assert!(!status.acked_version.is_empty(), "{type_url} has a version");
        }

        let mut next = snapshot.clone();
        put(
            &mut next,
            resource(TypeUrl::Cluster, "a", 2, &[]),
            TypeUrl::Cluster,
        );
        let responses = delta_responses(stream.poll(&next));
        assert_eq!(
            delta_short(&responses),
            [("CDS", vec!["a"], vec![]), ("EDS", vec!["a"], vec![])],
            "changes still flow"
        );
    }

    #[test]
    fn delta_reconnect_keeps_clusters_until_the_routes_it_held_are_replaced_and_acked() {
        let old = base();
        let next = moved();
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::Cluster,
            &[],
            &[("a", version(&old, TypeUrl::Cluster, "a"))],
        ));
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::ClusterLoadAssignment,
            &["a"],
            &[("a", version(&old, TypeUrl::ClusterLoadAssignment, "a"))],
        ));
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::RouteConfiguration,
            &["r"],
            &[("r", version(&old, TypeUrl::RouteConfiguration, "r"))],
        ));
        stream.reconnected();
        let cds = delta_responses(stream.poll(&next));
        assert_eq!(
            delta_short(&cds),
            [("CDS", vec!["b"], vec![])],
            "a stays: the route the Envoy holds may name it"
        );
        delta_ack(&mut stream, &cds[0]);
        stream.on_delta_request(&delta(TypeUrl::ClusterLoadAssignment, &["b"], &[], ""));
        let eds = delta_responses(stream.poll(&next));
        assert_eq!(delta_short(&eds), [("EDS", vec!["b"], vec![])]);
        delta_ack(&mut stream, &eds[0]);
        let rds = delta_responses(stream.poll(&next));
        assert_eq!(delta_short(&rds), [("RDS", vec!["r"], vec![])]);
        assert!(
            stream.poll(&next).is_empty(),
            "a stays until the new route is ACKed"
        );
        delta_ack(&mut stream, &rds[0]);
        let cds = delta_responses(stream.poll(&next));
        assert_eq!(delta_short(&cds), [("CDS", vec![], vec!["a"])]);
    }

    #[test]
    fn delta_reconnect_keeps_clusters_while_a_held_route_is_subscribed() {
        let next = moved();
        let mut stream = StreamState::new(Mode::Delta, Group::All);
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::Cluster,
            &[],
            &[("a", "v0".to_string())],
        ));
        stream.on_delta_request(&delta_reconnect(
            TypeUrl::RouteConfiguration,
            &["gone"],
            &[("gone", "v0".to_string())],
        ));
        stream.reconnected();
        let cds = delta_responses(stream.poll(&next));
        assert_eq!(delta_short(&cds), [("CDS", vec!["b"], vec![])]);
        delta_ack(&mut stream, &cds[0]);
        assert!(stream.poll(&next).is_empty(), "route `gone` may name a");
        // Its scope went, so the Envoy drops the route.
        stream.on_delta_request(&delta(TypeUrl::RouteConfiguration, &[], &["gone"], ""));
        let cds = delta_responses(stream.poll(&next));
        assert_eq!(delta_short(&cds), [("CDS", vec![], vec!["a"])], "no leak");
    }

    /// A new SotW stream from the Envoy `previous` served, reporting what it accepted:
    /// CDS, EDS for `a`, RDS for `r`.
    fn sotw_reconnect(previous: &StreamState) -> StreamState {
        let versions = previous.status();
        let accepted = |type_url| versions[&type_url].acked_version.clone();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(
            &sotw(TypeUrl::Cluster, &[], &accepted(TypeUrl::Cluster), ""),
            None,
        );
        assert!(stream.awaits_reconnect());
        stream.on_sotw_request(
            &sotw(
                TypeUrl::ClusterLoadAssignment,
                &["a"],
                &accepted(TypeUrl::ClusterLoadAssignment),
                "",
            ),
            None,
        );
        stream.on_sotw_request(
            &sotw(
                TypeUrl::RouteConfiguration,
                &["r"],
                &accepted(TypeUrl::RouteConfiguration),
                "",
            ),
            None,
        );
        assert!(
            stream.poll(&base()).is_empty(),
            "its other requests may be coming"
        );
        stream.reconnected();
        assert!(stream.settling(), "not answered yet");
        stream
    }

    #[test]
    fn sotw_reconnect_with_nothing_changed_sends_nothing() {
        let snapshot = base();
        let mut stream = sotw_reconnect(&converged(&snapshot));
        assert!(stream.clusters_to_look_up(&snapshot).is_empty());
        assert!(stream.poll(&snapshot).is_empty(), "the Envoy has it all");
        assert!(!stream.settling());

        let mut next = snapshot.clone();
        put(
            &mut next,
            resource(TypeUrl::RouteConfiguration, "r", 2, &["a"]),
            TypeUrl::RouteConfiguration,
        );
        let rds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&rds), [("RDS", 1)], "changes still flow");
    }

    #[test]
    fn sotw_reconnect_keeps_a_cluster_the_held_routes_may_name_until_they_are_replaced() {
        let old = base();
        let next = moved();
        let mut stream = sotw_reconnect(&converged(&old));
        assert_eq!(stream.clusters_to_look_up(&next), ["a"]);
        assert!(stream.clusters_to_look_up(&next).is_empty(), "asked once");
        stream.keep_clusters(vec![ClusterResources {
            cluster: old.resources(Group::All, TypeUrl::Cluster)["a"].clone(),
            endpoints: Some(old.resources(Group::All, TypeUrl::ClusterLoadAssignment)["a"].clone()),
        }]);
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&cds), [("CDS", 2)], "a is kept beside b");
        ack(&mut stream, &cds[0], &[]);
        let eds_version = stream.status()[&TypeUrl::ClusterLoadAssignment]
            .acked_version
            .clone();
        stream.on_sotw_request(
            &sotw(
                TypeUrl::ClusterLoadAssignment,
                &["a", "b"],
                &eds_version,
                "",
            ),
            None,
        );
        let eds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&eds), [("EDS", 1)], "only b: the Envoy has a's");
        ack(&mut stream, &eds[0], &["a", "b"]);
        let rds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&rds), [("RDS", 1)]);
        assert!(
            stream.poll(&next).is_empty(),
            "a stays until the new route is ACKed"
        );
        ack(&mut stream, &rds[0], &["r"]);
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(
            short(&cds),
            [("CDS", 1)],
            "a goes once no route can name it"
        );
    }

    #[test]
    fn sotw_reconnect_keeps_held_clusters_when_its_cds_version_is_not_the_snapshots() {
        let old = base();
        let next = moved();
        let previous = converged(&old);
        let versions = previous.status();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(
            &sotw(TypeUrl::Cluster, &[], "from-another-replica", ""),
            None,
        );
        stream.on_sotw_request(
            &sotw(
                TypeUrl::ClusterLoadAssignment,
                &["a"],
                &versions[&TypeUrl::ClusterLoadAssignment].acked_version,
                "",
            ),
            None,
        );
        stream.on_sotw_request(
            &sotw(TypeUrl::RouteConfiguration, &["r"], "unknown", ""),
            None,
        );
        stream.reconnected();
        assert_eq!(stream.clusters_to_look_up(&next), ["a"]);
        stream.keep_clusters(vec![ClusterResources {
            cluster: old.resources(Group::All, TypeUrl::Cluster)["a"].clone(),
            endpoints: Some(old.resources(Group::All, TypeUrl::ClusterLoadAssignment)["a"].clone()),
        }]);
        let responses = sotw_responses(stream.poll(&next));
        assert_eq!(
            short(&responses),
            [("CDS", 2), ("EDS", 1)],
            "a is kept beside b, and sent with its endpoints since it may have changed"
        );
    }

    #[test]
    fn sotw_reconnect_without_routes_removes_what_the_snapshot_lacks() {
        let old = base();
        let next = moved();
        let versions = converged(&old).status();
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        stream.on_sotw_request(
            &sotw(
                TypeUrl::Cluster,
                &[],
                &versions[&TypeUrl::Cluster].acked_version,
                "",
            ),
            None,
        );
        stream.reconnected();
        assert!(stream.clusters_to_look_up(&next).is_empty());
        let cds = sotw_responses(stream.poll(&next));
        assert_eq!(short(&cds), [("CDS", 1)], "no route can name a");
    }
}
