//! Encoded xDS resources and the snapshot of everything served, per group of Envoys.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use envoy_types::pb::google::protobuf::Any;
use imbl::OrdMap;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::xds::request::NamesDigest;

/// The resource types sluice serves, in the order that keeps traffic flowing: clusters before
/// their endpoints, listeners before their scopes, scopes before the routes they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TypeUrl {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    ScopedRouteConfiguration,
    RouteConfiguration,
    Secret,
}

impl TypeUrl {
    pub const ALL: [TypeUrl; 6] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::ScopedRouteConfiguration,
        TypeUrl::RouteConfiguration,
        TypeUrl::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::ScopedRouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
            }
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// Short name as operators know it (`CDS`, `EDS`, ...), used in logs and metrics.
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "CDS",
            TypeUrl::ClusterLoadAssignment => "EDS",
            TypeUrl::Listener => "LDS",
            TypeUrl::ScopedRouteConfiguration => "SRDS",
            TypeUrl::RouteConfiguration => "RDS",
            TypeUrl::Secret => "SDS",
        }
    }

    /// Types whose SotW responses carry the complete set: a missing resource is deleted.
    pub fn is_full_state(self) -> bool {
        matches!(
            self,
            TypeUrl::Cluster | TypeUrl::Listener | TypeUrl::ScopedRouteConfiguration
        )
    }

    /// Types that differ between groups of Envoys; the others are requested by name and shared.
    pub fn is_per_group(self) -> bool {
        matches!(self, TypeUrl::Listener | TypeUrl::ScopedRouteConfiguration)
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// A group of Envoys that receive the same listeners, chosen by `node.metadata.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Group {
    /// `<ns>~knative-external-proxy`: the external listeners only.
    External,
    /// `<ns>~knative-internal-proxy`: the internal listeners only.
    Internal,
    /// Any other role: both.
    All,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::External, Group::Internal, Group::All];

    pub fn from_role(role: Option<&str>) -> Group {
        match role
            .and_then(|r| r.rsplit_once('~'))
            .map(|(_, proxy)| proxy)
        {
            Some("knative-external-proxy") => Group::External,
            Some("knative-internal-proxy") => Group::Internal,
            _ => Group::All,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn serves_external(self) -> bool {
        matches!(self, Group::External | Group::All)
    }

    pub fn serves_internal(self) -> bool {
        matches!(self, Group::Internal | Group::All)
    }
}

/// One resource, encoded once and shared by every stream that sends it.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    /// Content hash of the encoded bytes; stable across restarts.
    pub version: String,
    pub digest: [u8; 32],
    pub body: Any,
    /// What this resource names: the clusters of a route configuration (a route must not
    /// reach an Envoy before them), the route configuration of a scope.
    pub references: Vec<String>,
}

impl Resource {
    pub fn new<M: Message>(
        type_url: TypeUrl,
        name: impl Into<String>,
        message: &M,
        references: Vec<String>,
    ) -> Arc<Resource> {
        let value = message.encode_to_vec();
        let digest: [u8; 32] = Sha256::digest(&value).into();
        Arc::new(Resource {
            name: name.into(),
            version: hex::encode(&digest[..8]),
            digest,
            body: Any {
                type_url: type_url.as_str().to_owned(),
                value,
            },
            references,
        })
    }
}

pub type ResourceMap = OrdMap<String, Arc<Resource>>;

/// The field number of `resources` in `envoy.service.discovery.v3.DiscoveryResponse`.
const SOTW_RESOURCES_FIELD: u32 = 2;

/// Resources encoded as the `resources` field of a SotW `DiscoveryResponse`, into one buffer of
/// exactly their size: what follows the rest of a response on the wire.
pub(super) fn encode_sotw_resources<'a>(
    resources: impl IntoIterator<Item = &'a Arc<Resource>>,
) -> Bytes {
    let resources: Vec<&Arc<Resource>> = resources.into_iter().collect();
    let length = resources
        .iter()
        .map(|r| prost::encoding::message::encoded_len(SOTW_RESOURCES_FIELD, &r.body))
        .sum();
    let mut buf = Vec::with_capacity(length);
    for resource in resources {
        prost::encoding::message::encode(SOTW_RESOURCES_FIELD, &resource.body, &mut buf);
    }
    Bytes::from(buf)
}

/// Everything served, as persistent maps: cloning a snapshot or changing one resource is cheap,
/// so publishing a new snapshot costs the change, not the fleet.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    shared: [ResourceMap; 6],
    per_group: [[ResourceMap; 3]; 3],
    /// Per group, how many of its route configurations name each cluster.
    cluster_users: [OrdMap<String, usize>; 3],
    /// Per group and type, every resource encoded once as a SotW response's `resources`, made
    /// on first use and shared by the clones of this snapshot until the type changes.
    encoded: [[Arc<OnceLock<Bytes>>; 6]; 3],
    /// Per group and type, the names of every resource, summed up.
    names: [[NamesDigest; 6]; 3],
    /// When a change last reached it: where each Envoy's convergence is measured from.
    changed_at: Option<Instant>,
}

/// One change to a snapshot: `resource: None` removes `name`.
#[derive(Debug, Clone)]
pub struct ResourceUpdate {
    pub type_url: TypeUrl,
    /// The groups whose Envoys are served the resource, for the types kept per group
    /// (listeners, scopes, route configurations; `None`: only [`Group::All`]). Ignored for the
    /// others, which every group shares.
    pub groups: Option<Vec<Group>>,
    pub name: String,
    pub resource: Option<Arc<Resource>>,
}

impl Snapshot {
    pub fn resources(&self, group: Group, type_url: TypeUrl) -> &ResourceMap {
        match Self::group_slot(type_url) {
            Some(slot) => &self.per_group[group.index()][slot],
            None => &self.shared[type_url as usize],
        }
    }

    /// Where a type kept per group lives in `per_group`. Route configurations are the same for
    /// every group, but each group's Envoys subscribe to those their own scopes name: kept per
    /// group, a stream that holds them all holds exactly its group's map, and shares it.
    fn group_slot(type_url: TypeUrl) -> Option<usize> {
        match type_url {
            TypeUrl::Listener => Some(0),
            TypeUrl::ScopedRouteConfiguration => Some(1),
            TypeUrl::RouteConfiguration => Some(2),
            _ => None,
        }
    }

    /// Every resource of a type served to `group`, in name order, encoded as the `resources`
    /// field of a SotW `DiscoveryResponse`: a full-state answer holding exactly these is the
    /// same bytes for every stream of the group, so it is encoded once, not once per stream.
    pub fn encoded_resources(&self, group: Group, type_url: TypeUrl) -> Bytes {
        self.encoded[group.index()][type_url as usize]
            .get_or_init(|| encode_sotw_resources(self.resources(group, type_url).values()))
            .clone()
    }

    /// The names of every resource of a type served to `group`, summed up: a request naming
    /// exactly these, in whatever order, is recognised without a look at each name.
    pub fn names_digest(&self, group: Group, type_url: TypeUrl) -> NamesDigest {
        self.names[group.index()][type_url as usize]
    }

    /// For each cluster, how many of the route configurations served to `group` name it.
    pub fn cluster_users(&self, group: Group) -> &OrdMap<String, usize> {
        &self.cluster_users[group.index()]
    }

    /// When a change last reached this snapshot (`None` before any).
    pub fn changed_at(&self) -> Option<Instant> {
        self.changed_at
    }

    pub fn apply(&mut self, updates: impl IntoIterator<Item = ResourceUpdate>) {
        let mut updates = updates.into_iter().peekable();
        if updates.peek().is_some() {
            self.changed_at = Some(Instant::now());
        }
        for update in updates {
            let type_index = update.type_url as usize;
            for group in &mut self.encoded {
                group[type_index] = Arc::default();
            }
            let Some(slot) = Self::group_slot(update.type_url) else {
                let map = &mut self.shared[type_index];
                let name = update.name.as_bytes();
                let (was, is) = match update.resource {
                    Some(resource) => {
                        let was = map.insert(update.name.clone(), resource).is_some();
                        (was, true)
                    }
                    None => (map.remove(&update.name).is_some(), false),
                };
                for group in &mut self.names {
                    count_name(&mut group[type_index], name, was, is);
                }
                continue;
            };
            // A resource kept per group is in exactly the groups it gives, and leaves the others.
            let groups = update.groups.as_deref().unwrap_or(&[Group::All]);
            for group in Group::ALL {
                let map = &mut self.per_group[group.index()][slot];
                let (old, new) = match &update.resource {
                    Some(resource) if groups.contains(&group) => (
                        map.insert(update.name.clone(), resource.clone()),
                        Some(resource),
                    ),
                    _ => (map.remove(&update.name), None),
                };
                count_name(
                    &mut self.names[group.index()][type_index],
                    update.name.as_bytes(),
                    old.is_some(),
                    new.is_some(),
                );
                if update.type_url == TypeUrl::RouteConfiguration {
                    let users = &mut self.cluster_users[group.index()];
                    for cluster in old.iter().flat_map(|r| &r.references) {
                        if let Some(count) = users.get_mut(cluster) {
                            *count -= 1;
                            if *count == 0 {
                                users.remove(cluster);
                            }
                        }
                    }
                    for cluster in new.iter().flat_map(|r| &r.references) {
                        *users.entry(cluster.clone()).or_default() += 1;
                    }
                }
            }
        }
    }
}

/// Keeps a map's names digest as `name` enters or leaves it.
fn count_name(digest: &mut NamesDigest, name: &[u8], was: bool, is: bool) {
    match (was, is) {
        (false, true) => digest.add(name),
        (true, false) => digest.remove(name),
        _ => {}
    }
}

/// The version of a set of resources: an order-independent combination (XOR) of a hash of
/// each member's name and version, updated member by member as the set changes, so equal sets
/// always get equal versions and a change costs one hash, not the whole set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetDigest([u8; 32]);

impl SetDigest {
    /// Adds the member if absent, removes it if present.
    pub fn toggle(&mut self, name: &str, version: &str) {
        let entry: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(version.as_bytes())
            .finalize()
            .into();
        for (acc, byte) in self.0.iter_mut().zip(entry) {
            *acc ^= byte;
        }
    }

    pub fn version(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_pick_groups() {
        assert_eq!(
            Group::from_role(Some("gloo-system~knative-external-proxy")),
            Group::External
        );
        assert_eq!(
            Group::from_role(Some("gloo-system~knative-internal-proxy")),
            Group::Internal
        );
        assert_eq!(Group::from_role(Some("gateway")), Group::All);
        assert_eq!(Group::from_role(None), Group::All);
    }

    #[test]
    fn set_digest_ignores_order_and_sees_content() {
        let mut ab = SetDigest::default();
        ab.toggle("a", "1");
        ab.toggle("b", "1");
        let mut ba = SetDigest::default();
        ba.toggle("b", "1");
        ba.toggle("a", "1");
        assert_eq!(ab.version(), ba.version());
        let mut changed = ab;
        changed.toggle("a", "1");
        changed.toggle("a", "2");
        assert_ne!(changed.version(), ab.version());
        changed.toggle("a", "2");
        changed.toggle("a", "1");
        assert_eq!(changed.version(), ab.version());
    }

    #[test]
    fn resource_versions_are_content_hashes() {
        let a = Resource::new(
            TypeUrl::Cluster,
            "a",
            &prost_types::Duration::default(),
            vec![],
        );
        assert_eq!(
            a.version,
            Resource::new(
                TypeUrl::Cluster,
                "a",
                &prost_types::Duration::default(),
                vec![]
            )
            .version
        );
    }

    #[test]
    fn a_route_configuration_is_in_exactly_the_groups_it_is_given() {
        let named = |clusters: &[&str]| {
            Resource::new(
                TypeUrl::RouteConfiguration,
                "r",
                &prost_types::Duration::default(),
                clusters.iter().map(|c| c.to_string()).collect(),
            )
        };
        let route = named(&["a", "b"]);
        let update = |groups: &[Group], resource: Option<&Arc<Resource>>| ResourceUpdate {
            type_url: TypeUrl::RouteConfiguration,
            groups: Some(groups.to_vec()),
            name: "r".to_owned(),
            resource: resource.cloned(),
        };
        let held = |snapshot: &Snapshot| {
            Group::ALL
                .into_iter()
                .filter(|g| {
                    snapshot
                        .resources(*g, TypeUrl::RouteConfiguration)
                        .contains_key("r")
                })
                .collect::<Vec<_>>()
        };
        let users = |snapshot: &Snapshot, group: Group| {
            let users = snapshot.cluster_users(group);
            users.keys().cloned().collect::<Vec<_>>()
        };
        let mut snapshot = Snapshot::default();
        snapshot.apply([update(&Group::ALL, Some(&route))]);
        assert_eq!(held(&snapshot), Group::ALL);
        assert_eq!(users(&snapshot, Group::External), ["a", "b"]);
        snapshot.apply([update(&[Group::Internal, Group::All], Some(&route))]);
        assert_eq!(held(&snapshot), [Group::Internal, Group::All]);
        assert!(users(&snapshot, Group::External).is_empty());
        snapshot.apply([update(&[Group::Internal, Group::All], Some(&named(&["b"])))]);
        assert_eq!(users(&snapshot, Group::Internal), ["b"]);
        snapshot.apply([update(&[], None)]);
        assert_eq!(held(&snapshot), []);
        assert!(Group::ALL.iter().all(|g| users(&snapshot, *g).is_empty()));
    }

    #[test]
    fn the_names_digest_follows_the_names_of_each_groups_map() {
        let resource = |type_url, name: &str, seconds| {
            Resource::new(
                type_url,
                name,
                &prost_types::Duration { seconds, nanos: 0 },
                vec![],
            )
        };
        let update =
            |type_url, name: &str, groups: Option<&[Group]>, seconds: Option<i64>| ResourceUpdate {
                type_url,
                groups: groups.map(<[Group]>::to_vec),
                name: name.to_owned(),
                resource: seconds.map(|s| resource(type_url, name, s)),
            };
        let external: &[Group] = &[Group::External, Group::All];
        let steps = [
            update(TypeUrl::ClusterLoadAssignment, "a", None, Some(1)),
            update(TypeUrl::ClusterLoadAssignment, "b", None, Some(1)),
            update(TypeUrl::ClusterLoadAssignment, "a", None, Some(2)),
            update(TypeUrl::RouteConfiguration, "r", Some(external), Some(1)),
            update(TypeUrl::RouteConfiguration, "s", Some(&Group::ALL), Some(1)),
            update(TypeUrl::RouteConfiguration, "r", Some(&Group::ALL), Some(2)),
            update(TypeUrl::RouteConfiguration, "s", Some(external), Some(2)),
            update(TypeUrl::ClusterLoadAssignment, "b", None, None),
            update(TypeUrl::RouteConfiguration, "r", None, None),
        ];
        let mut snapshot = Snapshot::default();
        for step in steps {
            snapshot.apply([step]);
            for group in Group::ALL {
                for type_url in [TypeUrl::ClusterLoadAssignment, TypeUrl::RouteConfiguration] {
                    let mut expected = NamesDigest::default();
                    for name in snapshot.resources(group, type_url).keys() {
                        expected.add(name.as_bytes());
                    }
                    assert_eq!(snapshot.names_digest(group, type_url), expected);
                }
            }
        }
    }
}
