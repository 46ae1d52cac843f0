//! What one stream's client holds of one type, kept so that a stream in step with the snapshot
//! costs almost nothing: its record of what it sent is the snapshot's own persistent map.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::ordmap::DiffItem;

use crate::xds::resource::{Resource, ResourceMap};

/// `remove` that frees the collection's node when it empties. An emptied `BTreeMap` or
/// `BTreeSet` keeps its root node allocated (half a KB for these entries), and a stream keeps
/// several maps that fill while it syncs and empty once it settles: with a thousand Envoys
/// connected those empty nodes cost megabytes.
pub(super) trait RemoveFreeing<Q: ?Sized> {
    type Removed;

    fn remove_freeing(&mut self, key: &Q) -> Self::Removed;
}

impl<K: Ord + std::borrow::Borrow<Q>, V, Q: Ord + ?Sized> RemoveFreeing<Q> for BTreeMap<K, V> {
    type Removed = Option<V>;

    fn remove_freeing(&mut self, key: &Q) -> Option<V> {
        let removed = self.remove(key);
        if self.is_empty() {
            *self = BTreeMap::new();
        }
        removed
    }
}

impl<T: Ord + std::borrow::Borrow<Q>, Q: Ord + ?Sized> RemoveFreeing<Q> for BTreeSet<T> {
    type Removed = bool;

    fn remove_freeing(&mut self, value: &Q) -> bool {
        let removed = self.remove(value);
        if self.is_empty() {
            *self = BTreeSet::new();
        }
        removed
    }
}

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
            None => self.unknown.remove_freeing(name).map(Held::Unknown),
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

    /// The entries whose content is known, as the snapshot keeps resources.
    pub(super) fn known_map(&self) -> &ResourceMap {
        &self.known
    }

    /// Every name held, in no particular order across known and unknown entries.
    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.known.keys().chain(self.unknown.keys())
    }

    /// Every name, in order.
    fn sorted_names(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.names().collect();
        if !self.unknown.is_empty() {
            names.sort();
        }
        names
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

    /// Whether this map is `available` itself, shared: it holds exactly what that holds.
    pub(super) fn is(&self, available: &ResourceMap) -> bool {
        self.unknown.is_empty() && self.known.ptr_eq(available)
    }
}

/// What a client subscribes to of one type: everything (the wildcard, with any names given
/// beside it), or the names it gives. A client is sent what it names, so without the wildcard
/// the names are kept as where they differ from the names in the stream's [`HeldMap`]: once in
/// step, nothing. A set of names per type per stream cost as much as the map of what was sent.
#[derive(Debug, Default)]
pub(super) struct Subscription {
    wildcard: bool,
    /// With the wildcard: the names given beside it. Without: the names either subscribed or
    /// held, not both.
    names: BTreeSet<String>,
}

impl Subscription {
    pub(super) fn wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `name` is named (the wildcard aside).
    pub(super) fn names_contains(&self, name: &str, held: &HeldMap) -> bool {
        if self.wildcard {
            self.names.contains(name)
        } else {
            self.names.contains(name) != held.contains_key(name)
        }
    }

    pub(super) fn covers(&self, name: &str, held: &HeldMap) -> bool {
        self.wildcard || self.names_contains(name, held)
    }

    /// The names given (the wildcard aside).
    pub(super) fn names(&self, held: &HeldMap) -> BTreeSet<String> {
        if self.wildcard {
            self.names.clone()
        } else {
            either(self.names.iter(), held.sorted_names().into_iter())
                .cloned()
                .collect()
        }
    }

    /// Whether, without the wildcard, exactly these names (in any order, repeats aside) are
    /// named, and they are the names held: what a client's ACK names once it is in step.
    /// Answers that without copying a name. The names come as their UTF-8 bytes, which order
    /// as the names do: an ACK names thousands, too many to convert each on every request.
    pub(super) fn names_exactly_held<'a>(
        &self,
        names: impl Iterator<Item = &'a [u8]> + Clone,
        held: &HeldMap,
    ) -> bool {
        if self.wildcard || !self.names.is_empty() {
            return false;
        }
        if names.clone().is_sorted() && held.unknown.is_empty() {
            // In order: compared as they come, without a copy or a sort.
            let mut previous = None;
            let distinct = names.filter(|name| previous.replace(*name) != Some(*name));
            return distinct.eq(held.known.keys().map(String::as_bytes));
        }
        let mut names: Vec<&[u8]> = names.collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .eq(held.sorted_names().into_iter().map(String::as_bytes))
    }

    /// Names `name`; says whether it was not named before.
    pub(super) fn insert(&mut self, name: &str, held: &HeldMap) -> bool {
        let new = !self.names_contains(name, held);
        if new {
            self.toggle(name);
        }
        new
    }

    /// Stops naming `name`; says whether it was named.
    pub(super) fn remove(&mut self, name: &str, held: &HeldMap) -> bool {
        let named = self.names_contains(name, held);
        if named {
            self.toggle(name);
        }
        named
    }

    /// Subscribes to exactly these names, and the wildcard or not.
    pub(super) fn replace(&mut self, names: BTreeSet<String>, wildcard: bool, held: &HeldMap) {
        self.wildcard = wildcard;
        self.names = if wildcard {
            names
        } else {
            either(names.iter(), held.sorted_names().into_iter())
                .cloned()
                .collect()
        };
    }

    /// Without the wildcard before or after: subscribes to exactly `names` (in any order,
    /// repeats aside) and returns the names it gained and lost. Copies only the names where the
    /// request differs from what is held, or from the subscription before: after one new
    /// cluster, a SotW client's EDS request names thousands, of which one is new.
    pub(super) fn rename<'a>(
        &mut self,
        names: impl Iterator<Item = &'a str>,
        held: &HeldMap,
    ) -> Renamed {
        debug_assert!(!self.wildcard, "renaming a wildcard subscription");
        let mut names: Vec<&str> = names.collect();
        names.sort_unstable();
        names.dedup();
        let apart: BTreeSet<String> = either(
            names.into_iter(),
            held.sorted_names().into_iter().map(String::as_str),
        )
        .map(str::to_owned)
        .collect();
        self.set_apart(apart, held)
    }

    /// Without the wildcard before or after: subscribes to exactly the names `available` has,
    /// and returns the names it gained and lost. Costs what `available` and what is held differ
    /// by, not the names: a SotW client in step names them all in each EDS and RDS request.
    pub(super) fn name_all(&mut self, available: &ResourceMap, held: &HeldMap) -> Renamed {
        debug_assert!(!self.wildcard, "renaming a wildcard subscription");
        let apart: BTreeSet<String> = if held.unknown.is_empty() {
            held.known
                .diff(available)
                .filter_map(|item| match item {
                    DiffItem::Add(name, _) | DiffItem::Remove(name, _) => Some(name.clone()),
                    DiffItem::Update { .. } => None,
                })
                .collect()
        } else {
            either(available.keys(), held.sorted_names().into_iter())
                .cloned()
                .collect()
        };
        self.set_apart(apart, held)
    }

    /// Takes `apart` as the names apart from what is held, and returns the names whose naming
    /// that changed.
    fn set_apart(&mut self, apart: BTreeSet<String>, held: &HeldMap) -> Renamed {
        // A name is named when it is apart or held, not both; with what is held the same
        // before and after, the names whose naming changed are those apart before or after.
        let mut renamed = Renamed::default();
        for name in either(
            self.names.iter().map(String::as_str),
            apart.iter().map(String::as_str),
        ) {
            if apart.contains(name) != held.contains_key(name) {
                renamed.added.push(name.to_owned());
            } else {
                renamed.dropped.push(name.to_owned());
            }
        }
        self.names = apart;
        renamed
    }

    pub(super) fn set_wildcard(&mut self, wildcard: bool, held: &HeldMap) {
        if wildcard != self.wildcard {
            let names = self.names(held);
            self.replace(names, wildcard, held);
        }
    }

    /// Keeps the subscription as it is while `name` enters or leaves the held map.
    pub(super) fn held_changed(&mut self, name: &str, was_held: bool, is_held: bool) {
        if !self.wildcard && was_held != is_held {
            self.toggle(name);
        }
    }

    fn toggle(&mut self, name: &str) {
        if !self.names.remove_freeing(name) {
            self.names.insert(name.to_owned());
        }
    }

    #[cfg(test)]
    pub(super) fn apart(&self) -> usize {
        self.names.len()
    }
}

/// The names a subscription gained and lost, each in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Renamed {
    pub(super) added: Vec<String>,
    pub(super) dropped: Vec<String>,
}

/// The names in either of two sorted, repeat-free sequences, not both, in order: between a
/// subscription's names and what is held, the one turns the other into the names of a
/// subscription without the wildcard. One pass over both: a SotW client names every
/// cluster's endpoints in each EDS request, so this runs over thousands of names per request,
/// on every stream.
fn either<T: Ord + Copy>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
) -> impl Iterator<Item = T> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        loop {
            return match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.cmp(y) {
                    Ordering::Less => a.next(),
                    Ordering::Greater => b.next(),
                    Ordering::Equal => {
                        a.next();
                        b.next();
                        continue;
                    }
                },
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
        }
    })
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
        assert!(!map.is(&available), "c is missing");
        map.set("c", Some(Held::unknown(&available["c"].version)));
        map.share(&available);
        assert!(!map.is(&available), "c's content is unknown");
        map.set("c", Some(Held::of(&cluster("c", 2))));
        map.share(&available);
        assert!(!map.is(&available), "c differs");
        map.set("c", Some(Held::of(&cluster("c", 1))));
        map.share(&available);
        assert!(map.is(&available), "equal content, another allocation");
        assert_eq!(
            map.entries()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Name(u8),
        Unname(u8),
        Hold(u8),
        Drop(u8),
        Wildcard(bool),
        Replace(Vec<u8>, bool),
        Rename(Vec<u8>),
        /// Names all of a snapshot's map: these names, beside what is held when `true` (the
        /// held map itself, extended).
        NameAll(Vec<u8>, bool),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6u8).prop_map(Step::Name),
            (0..6u8).prop_map(Step::Unname),
            (0..6u8).prop_map(Step::Hold),
            (0..6u8).prop_map(Step::Drop),
            any::<bool>().prop_map(Step::Wildcard),
            (proptest::collection::vec(0..6u8, 0..6), any::<bool>())
                .prop_map(|(names, wildcard)| Step::Replace(names, wildcard)),
            proptest::collection::vec(0..6u8, 0..8).prop_map(Step::Rename),
            (proptest::collection::vec(0..6u8, 0..6), any::<bool>())
                .prop_map(|(names, beside_held)| Step::NameAll(names, beside_held)),
        ]
    }

    proptest::proptest! {
        /// Whatever the client names and is sent, in any order, the subscription answers as a
        /// plain set of names beside a wildcard flag would.
        #[test]
        fn a_subscription_kept_apart_from_what_is_held_is_the_set_it_was_given(
            steps in proptest::collection::vec(step(), 0..40)
        ) {
            let name = |n: u8| format!("r{n}");
            let mut held = HeldMap::default();
            let mut subscription = Subscription::default();
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut wildcard = false;
            for step in steps {
                match step {
                    Step::Name(n) => {
                        let new = subscription.insert(&name(n), &held);
                        proptest::prop_assert_eq!(new, names.insert(name(n)));
                    }
                    Step::Unname(n) => {
                        let named = subscription.remove(&name(n), &held);
                        proptest::prop_assert_eq!(named, names.remove(&name(n)));
                    }
                    Step::Hold(n) | Step::Drop(n) => {
                        // Known content, or a reconnecting client's unknown version.
                        let now = matches!(step, Step::Hold(_)).then(|| match n % 2 {
                            0 => Held::of(&cluster(&name(n), 1)),
                            _ => Held::unknown("v"),
                        });
                        let was = held.set(&name(n), now.clone()).is_some();
                        subscription.held_changed(&name(n), was, now.is_some());
                    }
                    Step::Wildcard(on) => {
                        subscription.set_wildcard(on, &held);
                        wildcard = on;
                    }
                    Step::Replace(given, on) => {
                        names = given.into_iter().map(name).collect();
                        subscription.replace(names.clone(), on, &held);
                        wildcard = on;
                    }
                    Step::Rename(given) if !wildcard => {
                        let given: Vec<String> = given.into_iter().map(name).collect();
                        let renamed = subscription.rename(given.iter().map(String::as_str), &held);
                        let now: BTreeSet<String> = given.into_iter().collect();
                        let expected = Renamed {
                            added: now.difference(&names).cloned().collect(),
                            dropped: names.difference(&now).cloned().collect(),
                        };
                        proptest::prop_assert_eq!(renamed, expected);
                        names = now;
                    }
                    Step::NameAll(given, beside_held) if !wildcard => {
                        let mut available = if beside_held {
                            held.known_map().clone()
                        } else {
                            ResourceMap::new()
                        };
                        for n in given {
                            // Another content than what is held: named all the same.
                            available.insert(name(n), cluster(&name(n), 2));
                        }
                        let renamed = subscription.name_all(&available, &held);
                        let now: BTreeSet<String> = available.keys().cloned().collect();
                        let expected = Renamed {
                            added: now.difference(&names).cloned().collect(),
                            dropped: names.difference(&now).cloned().collect(),
                        };
                        proptest::prop_assert_eq!(renamed, expected);
                        names = now;
                    }
                    Step::Rename(_) | Step::NameAll(..) => {}
                }
                proptest::prop_assert_eq!(subscription.wildcard(), wildcard);
                proptest::prop_assert_eq!(&subscription.names(&held), &names);
                let held_names: BTreeSet<String> = held.names().cloned().collect();
                // An ACK names the held resources in any order, maybe some twice.
                let mut ack: Vec<String> = held_names.iter().rev().cloned().collect();
                ack.extend(held_names.first().cloned());
                let mut in_order: Vec<String> = held_names.iter().cloned().collect();
                in_order.extend(held_names.last().cloned());
                for ack in [ack, in_order] {
                    proptest::prop_assert_eq!(
                        subscription.names_exactly_held(ack.iter().map(String::as_bytes), &held),
                        !wildcard && names == held_names
                    );
                }
                for n in 0..6 {
                    proptest::prop_assert_eq!(
                        subscription.covers(&name(n), &held),
                        wildcard || names.contains(&name(n))
                    );
                }
            }
        }
    }

    #[test]
    fn a_client_holding_what_it_names_costs_no_names() {
        let mut held = HeldMap::default();
        let mut subscription = Subscription::default();
        for n in ["a", "b", "c"] {
            subscription.insert(n, &held);
        }
        assert_eq!(subscription.apart(), 3);
        for n in ["a", "b", "c"] {
            held.set(n, Some(Held::unknown("v")));
            subscription.held_changed(n, false, true);
        }
        assert_eq!(subscription.apart(), 0);
        assert!(subscription.covers("b", &held));
        assert!(!subscription.covers("d", &held));
    }
}
