//! The world: one consistent set of the Kubernetes objects sluice serves from, fed by a source
//! (files or the API server) and read by the translator. Applying a batch of source events
//! returns exactly which objects changed, so that translation can follow the change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use crate::knative::{Configuration, Ingress, IngressKey, IngressKind, Route, ValidationError};

/// The label an `EndpointSlice` uses to name its `Service`.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NsName {
    pub namespace: String,
    pub name: String,
}

impl NsName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NsName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for NsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One object a source delivers. Routes, Configurations and ConfigMaps become Ingresses
/// before the world (see [`crate::routes`]), which does not hold them.
#[derive(Debug, Clone)]
pub enum Object {
    Ingress(IngressKind, Box<Ingress>),
    Service(Box<Service>),
    Endpoints(Box<Endpoints>),
    EndpointSlice(Box<EndpointSlice>),
    Secret(Box<Secret>),
    Route(Box<Route>),
    Configuration(Box<Configuration>),
    ConfigMap(Box<ConfigMap>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Ingress(IngressKey),
    Service(NsName),
    Endpoints(NsName),
    EndpointSlice(NsName),
    Secret(NsName),
    Route(NsName),
    Configuration(NsName),
    ConfigMap(NsName),
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectKey::Ingress(key) => key.fmt(f),
            ObjectKey::Service(key) => write!(f, "Service/{key}"),
            ObjectKey::Endpoints(key) => write!(f, "Endpoints/{key}"),
            ObjectKey::EndpointSlice(key) => write!(f, "EndpointSlice/{key}"),
            ObjectKey::Secret(key) => write!(f, "Secret/{key}"),
            ObjectKey::Route(key) => write!(f, "Route/{key}"),
            ObjectKey::Configuration(key) => write!(f, "Configuration/{key}"),
            ObjectKey::ConfigMap(key) => write!(f, "ConfigMap/{key}"),
        }
    }
}

fn meta_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> NsName {
    NsName::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Ingress(kind, ingress) => ObjectKey::Ingress(IngressKey {
                kind: *kind,
                namespace: ingress.metadata.namespace.clone(),
                name: ingress.metadata.name.clone(),
            }),
            Object::Service(o) => ObjectKey::Service(meta_key(&o.metadata)),
            Object::Endpoints(o) => ObjectKey::Endpoints(meta_key(&o.metadata)),
            Object::EndpointSlice(o) => ObjectKey::EndpointSlice(meta_key(&o.metadata)),
            Object::Secret(o) => ObjectKey::Secret(meta_key(&o.metadata)),
            Object::Route(o) => ObjectKey::Route(NsName::new(
                o.metadata.namespace.clone(),
                o.metadata.name.clone(),
            )),
            Object::Configuration(o) => ObjectKey::Configuration(NsName::new(
                o.metadata.namespace.clone(),
                o.metadata.name.clone(),
            )),
            Object::ConfigMap(o) => ObjectKey::ConfigMap(meta_key(&o.metadata)),
        }
    }
}

/// What a source says happened. A batch is applied atomically.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Upsert(Object),
    Delete(ObjectKey),
}

/// An object the source keeps at its last good version because where it comes from cannot be
/// read now (a file that no longer parses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub key: ObjectKey,
    /// Where the object comes from, e.g. a file path; `healthy` reports name it again.
    pub origin: String,
    pub problem: String,
}

/// Why an ingress known to the world is not (or not fully) served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum IngressProblem {
    /// Its class annotation names another implementation.
    NotOwned { class: Option<String> },
    /// Its latest version fails Knative validation; the last valid version, if any, is served.
    Invalid { errors: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct IngressEntry {
    /// The latest version read, with Knative's defaults applied.
    pub latest: Arc<Ingress>,
    /// The last owned version that passed validation: what is translated and served.
    pub served: Option<Arc<Ingress>>,
    pub problem: Option<IngressProblem>,
}

/// Every object known, keyed for deterministic iteration.
#[derive(Debug, Default)]
pub struct World {
    ingress_class: String,
    pub ingresses: BTreeMap<IngressKey, IngressEntry>,
    pub services: BTreeMap<NsName, Arc<Service>>,
    pub endpoints: BTreeMap<NsName, Arc<Endpoints>>,
    pub endpoint_slices: BTreeMap<NsName, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<NsName, Arc<Secret>>,
    /// Service → the names of the slices that label themselves with it.
    slices_by_service: BTreeMap<NsName, BTreeSet<String>>,
    /// Ingresses served at their last good version because their source is broken:
    /// key → (origin, problem).
    kept: BTreeMap<IngressKey, (String, String)>,
}

/// The objects a batch changed, by kind. Endpoint changes are reported per service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub ingresses: BTreeSet<IngressKey>,
    pub services: BTreeSet<NsName>,
    /// Services whose endpoints (Endpoints or any of their EndpointSlices) changed.
    pub endpoints: BTreeSet<NsName>,
    pub secrets: BTreeSet<NsName>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.ingresses.is_empty()
            && self.services.is_empty()
            && self.endpoints.is_empty()
            && self.secrets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ingresses.len() + self.services.len() + self.endpoints.len() + self.secrets.len()
    }
}

impl World {
    pub fn new(ingress_class: impl Into<String>) -> Self {
        World {
            ingress_class: ingress_class.into(),
            ..Default::default()
        }
    }

    /// Applies a batch and reports what actually changed: an upsert of an identical object is
    /// not a change.
    pub fn apply(&mut self, events: impl IntoIterator<Item = SourceEvent>) -> ChangeSet {
        let mut changes = ChangeSet::default();
        for event in events {
            match event {
                SourceEvent::Upsert(object) => self.upsert(object, &mut changes),
                SourceEvent::Delete(key) => self.delete(key, &mut changes),
            }
        }
        changes
    }

    fn upsert(&mut self, object: Object, changes: &mut ChangeSet) {
        let key = object.key();
        match (object, key) {
            (Object::Ingress(_, mut ingress), ObjectKey::Ingress(key)) => {
                ingress.set_defaults();
                if let Some(entry) = self.ingresses.get_mut(&key)
                    && entry.latest.same_request(&ingress)
                {
                    if entry.latest.status != ingress.status {
                        entry.latest = Arc::new(*ingress);
                    }
                    return;
                }
                let previous = self.ingresses.remove(&key).and_then(|entry| entry.served);
                let entry = self.judge(Arc::new(*ingress), previous);
                self.ingresses.insert(key.clone(), entry);
                changes.ingresses.insert(key);
            }
            (Object::Service(service), ObjectKey::Service(key)) => {
                if replace(&mut self.services, key.clone(), *service) {
                    changes.services.insert(key);
                }
            }
            (Object::Endpoints(endpoints), ObjectKey::Endpoints(key)) => {
                if replace(&mut self.endpoints, key.clone(), *endpoints) {
                    changes.endpoints.insert(key);
                }
            }
            (Object::EndpointSlice(slice), ObjectKey::EndpointSlice(key)) => {
                let old_service = self
                    .endpoint_slices
                    .get(&key)
                    .and_then(|s| slice_service(s));
                let new_service = slice_service(&slice);
                if replace(&mut self.endpoint_slices, key.clone(), *slice) {
                    self.index_slice(&key, old_service, new_service.clone(), changes);
                }
            }
            (Object::Secret(secret), ObjectKey::Secret(key)) => {
                if replace(&mut self.secrets, key.clone(), *secret) {
                    changes.secrets.insert(key);
                }
            }
            (Object::Route(_) | Object::Configuration(_) | Object::ConfigMap(_), _) => {}
            (object, key) => unreachable!("Object::key gave {key} for {object:?}"),
        }
    }

    fn delete(&mut self, key: ObjectKey, changes: &mut ChangeSet) {
        match key {
            ObjectKey::Ingress(key) => {
                if self.ingresses.remove(&key).is_some() {
                    changes.ingresses.insert(key);
                }
            }
            ObjectKey::Service(key) => {
                if self.services.remove(&key).is_some() {
                    changes.services.insert(key);
                }
            }
            ObjectKey::Endpoints(key) => {
                if self.endpoints.remove(&key).is_some() {
                    changes.endpoints.insert(key);
                }
            }
            ObjectKey::EndpointSlice(key) => {
                if let Some(slice) = self.endpoint_slices.remove(&key) {
                    self.index_slice(&key, slice_service(&slice), None, changes);
                }
            }
            ObjectKey::Secret(key) => {
                if self.secrets.remove(&key).is_some() {
                    changes.secrets.insert(key);
                }
            }
            ObjectKey::Route(_) | ObjectKey::Configuration(_) | ObjectKey::ConfigMap(_) => {}
        }
    }

    fn index_slice(
        &mut self,
        slice: &NsName,
        old_service: Option<NsName>,
        new_service: Option<NsName>,
        changes: &mut ChangeSet,
    ) {
        if let Some(old) = old_service {
            if let Some(names) = self.slices_by_service.get_mut(&old) {
                names.remove(&slice.name);
                if names.is_empty() {
                    self.slices_by_service.remove(&old);
                }
            }
            changes.endpoints.insert(old);
        }
        if let Some(new) = new_service {
            self.slices_by_service
                .entry(new.clone())
                .or_default()
                .insert(slice.name.clone());
            changes.endpoints.insert(new);
        }
    }

    /// Decides whether the new version of an ingress is served, keeping the last valid one when
    /// the new one fails validation.
    fn judge(&self, latest: Arc<Ingress>, previous: Option<Arc<Ingress>>) -> IngressEntry {
        let class = latest.ingress_class();
        if class != Some(self.ingress_class.as_str()) {
            return IngressEntry {
                problem: Some(IngressProblem::NotOwned {
                    class: class.map(str::to_owned),
                }),
                latest,
                served: None,
            };
        }
        match latest.validate() {
            Ok(()) => IngressEntry {
                served: Some(latest.clone()),
                latest,
                problem: None,
            },
            Err(errors) => IngressEntry {
                latest,
                served: previous,
                problem: Some(IngressProblem::Invalid {
                    errors: errors.iter().map(ValidationError::to_string).collect(),
                }),
            },
        }
    }

    /// Records what the source could not read: `healthy` origins are current again, `kept`
    /// objects are held at their last good version until their origin reads cleanly.
    pub fn note_source_health(&mut self, kept: Vec<Kept>, healthy: &[String]) {
        self.kept.retain(|_, (origin, _)| !healthy.contains(origin));
        for Kept {
            key,
            origin,
            problem,
        } in kept
        {
            if let ObjectKey::Ingress(key) = key {
                self.kept.insert(key, (origin, problem));
            }
        }
    }

    /// Why an ingress is held at its last good version, if it is.
    pub fn kept_problem(&self, key: &IngressKey) -> Option<&str> {
        self.kept.get(key).map(|(_, problem)| problem.as_str())
    }

    /// The slices that belong to a service, in name order.
    pub fn slices_of<'a>(
        &'a self,
        service: &'a NsName,
    ) -> impl Iterator<Item = &'a Arc<EndpointSlice>> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |name| {
                self.endpoint_slices
                    .get(&NsName::new(service.namespace.clone(), name.clone()))
            })
    }
}

fn slice_service(slice: &EndpointSlice) -> Option<NsName> {
    let labels = slice.metadata.labels.as_ref()?;
    let service = labels.get(SERVICE_NAME_LABEL)?;
    Some(NsName::new(
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service.clone(),
    ))
}

/// Inserts `value` unless an equal one is there; says whether anything changed.
fn replace<T: PartialEq>(map: &mut BTreeMap<NsName, Arc<T>>, key: NsName, value: T) -> bool {
    if map.get(&key).is_some_and(|old| **old == value) {
        return false;
    }
    map.insert(key, Arc::new(value));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASS: &str = "sluice.ingress.networking.knative.dev";

    fn ingress(name: &str, class: &str, percent: u32) -> Object {
        let yaml = format!(
            r#"
metadata:
  name: {name}
  namespace: default
  annotations: {{networking.knative.dev/ingress.class: {class}}}
spec:
  rules:
  - hosts: [{name}.example.com]
    http:
      paths:
      - splits: [{{serviceName: {name}, servicePort: 80, percent: {percent}}}]
"#
        );
        Object::Ingress(
            IngressKind::Ingress,
            Box::new(serde_saphyr::from_str(&yaml).unwrap()),
        )
    }

    fn key(name: &str) -> IngressKey {
        IngressKey {
            kind: IngressKind::Ingress,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn invalid_update_keeps_serving_the_last_valid_version() {
        let mut world = World::new(CLASS);
        world.apply([SourceEvent::Upsert(ingress("a", CLASS, 100))]);
        let changes = world.apply([SourceEvent::Upsert(ingress("a", CLASS, 50))]);
        assert_eq!(changes.ingresses, BTreeSet::from([key("a")]));
        let entry = &world.ingresses[&key("a")];
        assert!(matches!(
            entry.problem,
            Some(IngressProblem::Invalid { .. })
        ));
        let served = entry.served.as_ref().expect("last valid version kept");
        let split = &served.spec.rules[0].http.as_ref().unwrap().paths[0].splits[0];
        assert_eq!(split.percent, Some(100));
    }

    #[test]
    fn other_classes_are_known_but_not_served() {
        let mut world = World::new(CLASS);
        world.apply([SourceEvent::Upsert(ingress("a", "istio", 100))]);
        let entry = &world.ingresses[&key("a")];
        assert!(entry.served.is_none());
        assert_eq!(
            entry.problem,
            Some(IngressProblem::NotOwned {
                class: Some("istio".into())
            })
        );
    }

    #[test]
    fn identical_upsert_is_no_change() {
        let mut world = World::new(CLASS);
        assert!(
            !world
                .apply([SourceEvent::Upsert(ingress("a", CLASS, 100))])
                .is_empty()
        );
        assert!(
            world
                .apply([SourceEvent::Upsert(ingress("a", CLASS, 100))])
                .is_empty()
        );
    }

    #[test]
    fn slice_changes_are_reported_against_their_service() {
        let mut world = World::new(CLASS);
        let mut slice = EndpointSlice::default();
        slice.metadata.name = Some("hello-abc".into());
        slice.metadata.namespace = Some("default".into());
        slice.metadata.labels =
            Some([(SERVICE_NAME_LABEL.to_string(), "hello".to_string())].into());
        let changes = world.apply([SourceEvent::Upsert(Object::EndpointSlice(Box::new(slice)))]);
        assert_eq!(
            changes.endpoints,
            BTreeSet::from([NsName::new("default", "hello")])
        );
        assert_eq!(world.slices_of(&NsName::new("default", "hello")).count(), 1);
        let changes = world.apply([SourceEvent::Delete(ObjectKey::EndpointSlice(NsName::new(
            "default",
            "hello-abc",
        )))]);
        assert_eq!(
            changes.endpoints,
            BTreeSet::from([NsName::new("default", "hello")])
        );
        assert_eq!(world.slices_of(&NsName::new("default", "hello")).count(), 0);
    }
}
