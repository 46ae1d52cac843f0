//! What one stream's client holds of one type, kept so that a stream in step with the snapshot
//! costs almost nothing: its record of what it sent is the snapshot's own persistent map.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::xds::resource::{Resource, ResourceMap};

/// What the client holds of a resource: the resource itself when its content is known, else
/// only its version (a reconnecting client only tells versions, or in SotW only names). A known
/// resource's version is its own: one copy per resource, not one per stream holding it.
#[derive(Debug, Clone)]
pub(super) enum Held {
    Known(Arc<Resource>),
    /// Held at this version (empty: unknown), content unknown.
    Unknown(String),
}

impl Held {
    pub(super) fn of(resource: &Arc<Resource>) -> Held {
        Held::Known(resource.clone())
    }

    pub(super) fn unknown(version: &str) -> Held {
        Held::Unknown(version.to_owned())
    }

    pub(super) fn version(&self) -> &str {
        match self {
            Held::Known(resource) => &resource.version,
            Held::Unknown(version) => version,
        }
    }

    pub(super) fn resource(&self) -> Option<&Arc<Resource>> {
        match self {
            Held::Known(resource) => Some(resource),
            Held::Unknown(_) => None,
        }
    }

    pub(super) fn references(&self) -> &[String] {
        self.resource()
            .map(|r| r.references.as_slice())
            .unwrap_or_default()
    }
}

/// Whether two records of what the client holds are the same: the same version, known or not
/// alike (versions are content hashes, so known contents of one version are equal).
pub(super) fn same(a: Option<&Held>, b: Option<&Held>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.version() == b.version() && a.resource().is_some() == b.resource().is_some()
        }
        _ => false,
    }
}

/// A name-to-[`Held`] map whose known entries live in the snapshot's map type. A thousand
/// Envoys each holding thousands of resources made a private map per stream the largest cost
/// of a fleet; once a stream holds exactly what the snapshot has, [`HeldMap::share`] makes its
/// map the snapshot's, and later changes copy only the paths they touch.
#[derive(Debug, Default, Clone)]
pub(super) struct HeldMap {
    known: ResourceMap,
    /// Entries of unknown content: only a reconnecting client's, until resolved.
    unknown: BTreeMap<String, String>,
}

impl HeldMap {
    pub(super) fn get(&self, name: &str) -> Option<Held> {
        match self.known.get(name) {
            Some(resource) => Some(Held::Known(resource.clone())),
            None => self.unknown.get(name).map(|v| Held::unknown(v)),
        }
    }

    pub(super) fn contains_key(&self, name: &str) -> bool {
        self.known.contains_key(name) || self.unknown.contains_key(name)
    }

    pub(super) fn len(&self) -> usize {
        self.known.len() + self.unknown.len()
    }

    /// Sets or clears `name`; returns what it held before.
    pub(super) fn set(&mut self, name: &str, held: Option<Held>) -> Option<Held> {
        let previous = match self.known.remove(name) {
            Some(resource) => Some(Held::Known(resource)),
            None => self.unknown.remove(name).map(Held::Unknown),
        };
        match held {
            Some(Held::Known(resource)) => {
                self.known.insert(name.to_owned(), resource);
            }
            Some(Held::Unknown(version)) => {
                self.unknown.insert(name.to_owned(), version);
            }
            None => {}
        }
        previous
    }

    /// Every name held, in no particular order across known and unknown entries.
    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.known.keys().chain(self.unknown.keys())
    }

    /// The entries whose content is known, by name.
    pub(super) fn known(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.known.values()
    }

    /// Every entry, by name.
    pub(super) fn entries(&self) -> Vec<(&String, Held)> {
        let mut entries: Vec<(&String, Held)> = self
            .known
            .iter()
            .map(|(name, resource)| (name, Held::Known(resource.clone())))
            .chain(self.unknown.iter().map(|(n, v)| (n, Held::unknown(v))))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// Takes `available` as this map when both hold the same resources, so that the map is
    /// shared instead of copied. Cheap when they already share most of their nodes, and when
    /// they differ in size.
    pub(super) fn share(&mut self, available: &ResourceMap) {
        if self.unknown.is_empty()
            && self.known.len() == available.len()
            && !self.known.ptr_eq(available)
            && self.known.diff(available).next().is_none()
        {
            self.known = available.clone();
        }
    }

    #[cfg(test)]
    pub(super) fn shares(&self, available: &ResourceMap) -> bool {
        self.known.ptr_eq(available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resource::TypeUrl;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str, timeout: i64) -> Arc<Resource> {
        let message = Cluster {
            name: name.to_owned(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout,
                nanos: 0,
            }),
            ..Default::default()
        };
        Resource::new(TypeUrl::Cluster, name, &message, vec![])
    }

    #[test]
    fn set_moves_a_name_between_known_and_unknown() {
        let mut map = HeldMap::default();
        let a = cluster("a", 1);
        assert!(map.set("a", Some(Held::unknown("v0"))).is_none());
        let previous = map.set("a", Some(Held::of(&a)));
        assert!(previous.is_some_and(|p| p.resource().is_none() && p.version() == "v0"));
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("a").unwrap().version(), a.version);
        assert!(map.set("a", None).is_some_and(|p| p.resource().is_some()));
        assert!(!map.contains_key("a"));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn a_map_holding_what_the_snapshot_has_becomes_the_snapshots() {
        let mut available = ResourceMap::new();
        for (name, timeout) in [("a", 1), ("b", 1), ("c", 1)] {
            available.insert(name.to_owned(), cluster(name, timeout));
        }
        let mut map = HeldMap::default();
        map.set("a", Some(Held::of(&available["a"])));
        map.set("b", Some(Held::of(&available["b"])));
        map.share(&available);
        assert!(!map.shares(&available), "c is missing");
        map.set("c", Some(Held::unknown(&available["c"].version)));
        map.share(&available);
        assert!(!map.shares(&available), "c's content is unknown");
        map.set("c", Some(Held::of(&cluster("c", 2))));
        map.share(&available);
        assert!(!map.shares(&available), "c differs");
        map.set("c", Some(Held::of(&cluster("c", 1))));
        map.share(&available);
        assert!(map.shares(&available), "equal content, another allocation");
        assert_eq!(
            map.entries()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
