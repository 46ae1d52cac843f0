//! What each replica tells the leader about its own Envoys. Every replica serves xDS, but only
//! the leader writes status, and an Envoy connected to a follower must still count: so each
//! replica publishes a report (a ConfigMap in sluice's namespace, written by `status::writer`)
//! saying, per ingress, at which fingerprint all of its Envoys serving that ingress ACKed it, or
//! that one rejected it. This module is the report and its encoding; it does no I/O.
//!
//! The fingerprint is a digest of the names and versions of the resources an Envoy must hold
//! for the ingress. Translation is deterministic, so replicas that see the same objects compute
//! the same fingerprint, and a report about an older version of an ingress never matches.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::knative::{IngressKey, IngressKind};
use crate::translate::ServedResource;
use crate::xds::Group;

/// The ConfigMap key holding the number of connected Envoys per group.
const ENVOYS_KEY: &str = "envoys";
const ACKED: &str = "acked:";
const REJECTED: &str = "rejected:";

/// Where one replica's Envoys stand on one ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Convergence {
    /// Every Envoy of the replica that serves the ingress ACKed the resources with this
    /// fingerprint.
    Acked(String),
    /// An Envoy rejected the resources with this fingerprint.
    Rejected {
        fingerprint: String,
        message: String,
    },
}

/// One replica's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaReport {
    pub replica: String,
    /// Connected Envoys per group.
    pub envoys: BTreeMap<Group, usize>,
    pub ingresses: BTreeMap<IngressKey, Convergence>,
}

/// A change to a replica's report: the Envoy counts, and the ingresses looked at again
/// (`None`: no entry); `complete` when every ingress was, so that the others are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportUpdate {
    pub envoys: BTreeMap<Group, usize>,
    pub entries: Vec<(IngressKey, Option<Convergence>)>,
    pub complete: bool,
}

impl ReplicaReport {
    pub fn update(&mut self, update: ReportUpdate) {
        self.envoys = update.envoys;
        if update.complete {
            self.ingresses.clear();
        }
        for (key, convergence) in update.entries {
            match convergence {
                Some(convergence) => {
                    self.ingresses.insert(key, convergence);
                }
                None => {
                    self.ingresses.remove(&key);
                }
            }
        }
    }

    /// The ingresses on which two reports differ (every one when their Envoys differ).
    pub fn differences(&self, other: &ReplicaReport) -> super::Dirty {
        let mut dirty = super::Dirty::default();
        if self.envoys != other.envoys {
            dirty.mark_all();
            return dirty;
        }
        for (key, convergence) in &self.ingresses {
            if other.ingresses.get(key) != Some(convergence) {
                dirty.insert(key.clone());
            }
        }
        for key in other.ingresses.keys() {
            if !self.ingresses.contains_key(key) {
                dirty.insert(key.clone());
            }
        }
        dirty
    }
}

/// The fingerprint of what an Envoy must hold to serve an ingress as it is now.
pub fn fingerprint(needed: &[ServedResource]) -> String {
    let mut digest = Sha256::new();
    for resource in needed {
        for part in [
            resource.listener.as_str(),
            resource.type_url.short(),
            &resource.name,
            &resource.version,
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
    }
    hex::encode(&digest.finalize()[..12])
}

impl ReplicaReport {
    /// The report as ConfigMap data: one key per ingress, so that a merge patch of the keys
    /// that changed is all a change costs.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut data: BTreeMap<String, String> = self
            .ingresses
            .iter()
            .map(|(key, convergence)| (data_key(key), encode(convergence)))
            .collect();
        data.insert(
            ENVOYS_KEY.to_owned(),
            serde_json::to_string(&self.envoys).expect("group counts serialize"),
        );
        data
    }

    /// Reads a report back; entries that do not parse (another version's) are skipped.
    pub fn from_data(replica: &str, data: &BTreeMap<String, String>) -> ReplicaReport {
        let envoys = data
            .get(ENVOYS_KEY)
            .and_then(|counts| serde_json::from_str(counts).ok())
            .unwrap_or_default();
        let ingresses = data
            .iter()
            .filter_map(|(key, value)| Some((parse_key(key)?, decode(value)?)))
            .collect();
        ReplicaReport {
            replica: replica.to_owned(),
            envoys,
            ingresses,
        }
    }
}

/// The change from `before` to `after` as a JSON merge patch of ConfigMap data: changed keys
/// with their value, removed keys with null. `None` when nothing changed.
pub fn data_patch(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut patch = serde_json::Map::new();
    for (key, value) in after {
        if before.get(key) != Some(value) {
            patch.insert(key.clone(), value.clone().into());
        }
    }
    for key in before.keys().filter(|key| !after.contains_key(*key)) {
        patch.insert(key.clone(), serde_json::Value::Null);
    }
    (!patch.is_empty()).then_some(patch)
}

/// ConfigMap keys allow `[-._a-zA-Z0-9]`; Kubernetes names never contain `_`, so it separates.
fn data_key(key: &IngressKey) -> String {
    format!("{}_{}_{}", key.kind.as_str(), key.namespace, key.name)
}

fn parse_key(key: &str) -> Option<IngressKey> {
    let mut parts = key.splitn(3, '_');
    let kind = match parts.next()? {
        "Ingress" => IngressKind::Ingress,
        "ClusterIngress" => IngressKind::ClusterIngress,
        _ => return None,
    };
    Some(IngressKey {
        kind,
        namespace: parts.next()?.to_owned(),
        name: parts.next()?.to_owned(),
    })
}

fn encode(convergence: &Convergence) -> String {
    match convergence {
        Convergence::Acked(fingerprint) => format!("{ACKED}{fingerprint}"),
        Convergence::Rejected {
            fingerprint,
            message,
        } => format!("{REJECTED}{fingerprint}:{message}"),
    }
}

fn decode(value: &str) -> Option<Convergence> {
    if let Some(fingerprint) = value.strip_prefix(ACKED) {
        return Some(Convergence::Acked(fingerprint.to_owned()));
    }
    let (fingerprint, message) = value.strip_prefix(REJECTED)?.split_once(':')?;
    Some(Convergence::Rejected {
        fingerprint: fingerprint.to_owned(),
        message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: IngressKind, namespace: &str, name: &str) -> IngressKey {
        IngressKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_report_reads_back_as_written() {
        let report = ReplicaReport {
            replica: "sluice-0".into(),
            envoys: BTreeMap::from([(Group::External, 2), (Group::Internal, 1)]),
            ingresses: BTreeMap::from([
                (
                    key(IngressKind::Ingress, "default", "hello.world"),
                    Convergence::Acked("abc".into()),
                ),
                (
                    key(IngressKind::ClusterIngress, "", "legacy"),
                    Convergence::Rejected {
                        fingerprint: "def".into(),
                        message: "route: bad: header".into(),
                    },
                ),
            ]),
        };
        let data = report.to_data();
        assert!(data.contains_key("ClusterIngress__legacy"), "{data:?}");
        assert_eq!(ReplicaReport::from_data("sluice-0", &data), report);
    }

    #[test]
    fn an_update_touches_only_the_ingresses_it_names_unless_complete() {
        let web = key(IngressKind::Ingress, "default", "web");
        let api = key(IngressKind::Ingress, "default", "api");
        let mut report = ReplicaReport {
            replica: "r".into(),
            envoys: BTreeMap::from([(Group::All, 1)]),
            ingresses: BTreeMap::from([
                (web.clone(), Convergence::Acked("1".into())),
                (api.clone(), Convergence::Acked("2".into())),
            ]),
        };
        let before = report.clone();
        report.update(ReportUpdate {
            envoys: BTreeMap::from([(Group::All, 1)]),
            entries: vec![(web.clone(), None)],
            complete: false,
        });
        assert_eq!(report.ingresses.keys().collect::<Vec<_>>(), [&api]);
        let dirty = before.differences(&report);
        assert!(!dirty.is_all());
        assert_eq!(
            dirty
                .keys(&BTreeMap::<IngressKey, ()>::new())
                .collect::<Vec<_>>(),
            [&web]
        );

        report.update(ReportUpdate {
            envoys: BTreeMap::from([(Group::All, 2)]),
            entries: vec![(web.clone(), Some(Convergence::Acked("3".into())))],
            complete: true,
        });
        assert_eq!(report.ingresses.keys().collect::<Vec<_>>(), [&web]);
        assert!(before.differences(&report).is_all(), "the Envoys changed");
    }

    #[test]
    fn the_patch_carries_only_what_changed() {
        let before = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        let after = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("c".to_owned(), "3".to_owned()),
        ]);
        let patch = data_patch(&before, &after).unwrap();
        assert_eq!(
            serde_json::Value::Object(patch),
            serde_json::json!({"b": null, "c": "3"})
        );
        assert_eq!(data_patch(&after, &after), None);
    }
}
