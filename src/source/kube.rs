//! The Kubernetes source: the objects sluice serves from, watched on an API server with
//! kube-runtime's watchers.
//!
//! # What is watched
//!
//! Knative `Ingress` in every namespace (or in each `--namespace`), the legacy cluster-scoped
//! `ClusterIngress` only when discovery finds its CRD, and `Service`, `EndpointSlice` and
//! `Secret`. With `--serve-routes`, also Knative Serving's `Route` and `Configuration`
//! (`serving.knative.dev/v1`; Configurations only when their CRD is there) and the ConfigMaps
//! of Knative's namespace (`config-domain`, `config-features`). Managed fields and kubectl's
//! last-applied annotation are dropped on arrival.
//!
//! # Consistency
//!
//! Each watch lists, then watches. A (re-)list is buffered until it is complete and then applied
//! as one batch, so that whatever the watch went through (an error, a dropped connection, an API
//! server restart, a `410 Gone`) the world never sees a partial list: what was listed is
//! upserted, and what it held from that watch but was not listed is deleted. Nothing is
//! delivered before every watch has finished its first list. Events that arrive together are
//! delivered as one batch.
//!
//! # Secrets
//!
//! A Secret's data is kept only while an owned ingress names it in `spec.tls`: a cluster's other
//! secrets cost nothing but the watch. When an ingress starts naming a secret whose data was
//! dropped, the secret is read once with a GET; from then on the watch keeps it current. The
//! gateway options (`config-sluice` in the system namespace, watched by name) name secrets
//! too, and keep theirs the same way.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::FutureExt;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::knative::{
    self, API_GROUP, ClusterIngressResource, ConfigurationResource, IngressKind, IngressResource,
    RouteResource, SERVING_GROUP, SERVING_VERSION,
};
use crate::options;
use crate::routes::KNATIVE_NAMESPACE;
use crate::source::{Batch, Batches};
use crate::world::{NsName, Object, ObjectKey, SourceEvent};

/// kubectl keeps a whole copy of the object here; sluice never reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Batches waiting for a slow consumer; beyond that, events wait in the watches and arrive as
/// bigger batches.
const BATCH_QUEUE: usize = 16;
/// At most this many events go into one batch, so that a huge re-list cannot starve the rest.
const MAX_BATCH_EVENTS: usize = 50_000;

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct KubeSourceOptions {
    /// Watch only these namespaces; empty means all.
    pub namespaces: Vec<String>,
    /// The ingress class served: only the ingresses of this class keep their secrets' data.
    pub ingress_class: String,
    /// Also watch Knative Serving's Routes and Configurations (`--serve-routes`).
    pub serve_routes: bool,
    /// sluice's own namespace, where its `config-sluice` ConfigMap is.
    pub system_namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error(
        "the Knative Ingress CRD (ingresses.{API_GROUP}) is not installed in this cluster; \
         install Knative Serving, or sluice's own with `sluice install crds`"
    )]
    NoIngressCrd,
    #[error(
        "--serve-routes needs Knative Serving's Route CRD (routes.{SERVING_GROUP}), which this \
         cluster lacks; apply sluice's with `sluice install crds`, or serve without --serve-routes"
    )]
    NoRouteCrd,
    #[error("cannot discover the API group {0} on the API server: {1}")]
    Discovery(&'static str, #[source] kube::Error),
}

/// Starts watching; the first batch comes once every watch has listed everything. Must be
/// called within a Tokio runtime; the watches end when the receiver is dropped.
pub async fn watch(client: Client, options: KubeSourceOptions) -> Result<Batches, KubeSourceError> {
    let served = discover(&client, API_GROUP, knative::API_VERSION).await?;
    let (has_ingress, has_cluster_ingress) = (
        served.contains("ingresses"),
        served.contains("clusteringresses"),
    );
    if !has_ingress {
        return Err(KubeSourceError::NoIngressCrd);
    }
    let mut streams = Streams::default();
    streams.add(
        scoped::<IngressResource>(&client, &options.namespaces),
        |o| {
            let (meta, spec, status) = (o.metadata, o.spec, o.status);
            Object::Ingress(
                IngressKind::Ingress,
                Box::new(knative_ingress(meta, spec, status)),
            )
        },
    );
    if has_cluster_ingress && options.namespaces.is_empty() {
        streams.add(
            vec![(None, Api::all(client.clone()))],
            |o: ClusterIngressResource| {
                let (meta, spec, status) = (o.metadata, o.spec.spec, o.status);
                Object::Ingress(
                    IngressKind::ClusterIngress,
                    Box::new(knative_ingress(meta, spec, status)),
                )
            },
        );
    } else if has_cluster_ingress {
        tracing::info!(
            "not watching ClusterIngress: it is cluster-scoped, and --namespace limits the watches"
        );
    }
    streams.add(scoped::<Service>(&client, &options.namespaces), |mut o| {
        slim(&mut o.metadata);
        Object::Service(Box::new(o))
    });
    streams.add(
        scoped::<EndpointSlice>(&client, &options.namespaces),
        |mut o| {
            slim(&mut o.metadata);
            Object::EndpointSlice(Box::new(o))
        },
    );
    streams.add(scoped::<Secret>(&client, &options.namespaces), |mut o| {
        slim(&mut o.metadata);
        Object::Secret(Box::new(o))
    });
    // The gateway options: one ConfigMap, watched by name.
    streams.add_with(
        vec![(
            Some(options.system_namespace.clone()),
            Api::namespaced(client.clone(), &options.system_namespace),
        )],
        watcher::Config::default().fields(&format!("metadata.name={}", options::CONFIG_MAP)),
        |mut o: ConfigMap| {
            slim(&mut o.metadata);
            Object::ConfigMap(Box::new(o))
        },
    );
    if options.serve_routes {
        watch_routes(&client, &options.namespaces, &mut streams).await?;
    }
    let (batches, receiver) = mpsc::channel(BATCH_QUEUE);
    let follower = Follower::new(
        client,
        options.ingress_class,
        options.system_namespace,
        streams.books,
    );
    tokio::spawn(follower.run(streams.merged, batches));
    Ok(receiver)
}

/// The resources (plural names) the cluster serves in `group`/`version`.
async fn discover(
    client: &Client,
    group: &'static str,
    version: &str,
) -> Result<BTreeSet<String>, KubeSourceError> {
    let found = match kube::discovery::group(client, group).await {
        Ok(found) => found,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(BTreeSet::new()),
        Err(error) => return Err(KubeSourceError::Discovery(group, error)),
    };
    Ok(found
        .versioned_resources(version)
        .into_iter()
        .map(|(resource, _)| resource.plural)
        .collect())
}

/// Adds the watches `--serve-routes` needs.
async fn watch_routes(
    client: &Client,
    namespaces: &[String],
    streams: &mut Streams,
) -> Result<(), KubeSourceError> {
    let served = discover(client, SERVING_GROUP, SERVING_VERSION).await?;
    if !served.contains("routes") {
        return Err(KubeSourceError::NoRouteCrd);
    }
    streams.add(scoped::<RouteResource>(client, namespaces), |o| {
        Object::Route(Box::new(knative::Route {
            metadata: knative_meta(o.metadata),
            spec: o.spec,
            status: o.status,
            origin: None,
        }))
    });
    if served.contains("configurations") {
        streams.add(scoped::<ConfigurationResource>(client, namespaces), |o| {
            Object::Configuration(Box::new(knative::Configuration {
                metadata: knative_meta(o.metadata),
                status: o.status.unwrap_or_default(),
            }))
        });
    } else {
        tracing::info!(
            "not watching Configurations: the cluster has no configurations.{SERVING_GROUP} CRD, \
             so Routes naming one report ConfigurationMissing"
        );
    }
    streams.add(
        vec![(
            Some(KNATIVE_NAMESPACE.to_owned()),
            Api::namespaced(client.clone(), KNATIVE_NAMESPACE),
        )],
        |mut o: ConfigMap| {
            slim(&mut o.metadata);
            Object::ConfigMap(Box::new(o))
        },
    );
    Ok(())
}

type Tagged = (usize, Result<Event<Object>, watcher::Error>);

#[derive(Default)]
struct Streams {
    merged: SelectAll<BoxStream<'static, Tagged>>,
    books: Vec<Book>,
}

impl Streams {
    /// Watches each of `apis` (with the namespace it is limited to), converting its objects
    /// with `convert`.
    fn add<K>(&mut self, apis: Vec<(Option<String>, Api<K>)>, convert: fn(K) -> Object)
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        self.add_with(apis, watcher::Config::default(), convert);
    }

    /// Like [`Streams::add`], with the watches limited by `config` (e.g. a field selector).
    fn add_with<K>(
        &mut self,
        apis: Vec<(Option<String>, Api<K>)>,
        config: watcher::Config,
        convert: fn(K) -> Object,
    ) where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        for (namespace, api) in apis {
            let index = self.books.len();
            self.books.push(Book {
                kind: K::kind(&K::DynamicType::default()).into_owned(),
                namespace,
                ..Book::default()
            });
            let stream = watcher::watcher(api, config.clone())
                .default_backoff()
                .map(move |event| (index, event.map(|event| convert_event(event, convert))));
            self.merged.push(stream.boxed());
        }
    }
}

/// One `Api` per namespace, or one for all namespaces.
fn scoped<K>(client: &Client, namespaces: &[String]) -> Vec<(Option<String>, Api<K>)>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![(None, Api::all(client.clone()))]
    } else {
        namespaces
            .iter()
            .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
            .collect()
    }
}

fn convert_event<K>(event: Event<K>, convert: fn(K) -> Object) -> Event<Object> {
    match event {
        Event::Apply(object) => Event::Apply(convert(object)),
        Event::Delete(object) => Event::Delete(convert(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(convert(object)),
        Event::InitDone => Event::InitDone,
    }
}

/// Drops what sluice never reads and what would cost memory for nothing.
fn slim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// The world's view of an ingress: the metadata translation and status use, the spec, and the
/// status the API server holds.
fn knative_ingress(
    meta: ObjectMeta,
    spec: knative::IngressSpec,
    status: Option<knative::IngressStatus>,
) -> knative::Ingress {
    knative::Ingress {
        metadata: knative_meta(meta),
        spec,
        status,
    }
}

/// The metadata of a Knative object that translation and status use.
fn knative_meta(meta: ObjectMeta) -> knative::ObjectMeta {
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.remove(LAST_APPLIED);
    knative::ObjectMeta {
        name: meta.name.unwrap_or_default(),
        namespace: meta.namespace.unwrap_or_default(),
        annotations,
        labels: meta.labels.unwrap_or_default(),
        creation_timestamp: meta.creation_timestamp.map(|time| time.0.to_string()),
        generation: meta.generation,
        owner_references: meta
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .map(|owner| knative::OwnerReference {
                api_version: owner.api_version,
                kind: owner.kind,
                name: owner.name,
                controller: owner.controller.unwrap_or(false),
            })
            .collect(),
    }
}

/// What one watch has delivered.
#[derive(Debug, Default)]
struct Book {
    kind: String,
    /// The namespace it is limited to; `None` for all.
    namespace: Option<String>,
    /// Whether its current list is complete.
    synced: bool,
    /// What it delivered to the world and has not deleted since.
    delivered: BTreeSet<ObjectKey>,
    /// A list in progress: what it listed so far (`None`: a secret whose data is not kept).
    listing: Option<BTreeMap<ObjectKey, Option<Object>>>,
}

/// Turns the watches' events into batches.
struct Follower {
    client: Client,
    ingress_class: String,
    system_namespace: String,
    books: Vec<Book>,
    secrets: SecretUse,
    pending: Vec<SourceEvent>,
    /// Whether the initial batch went out.
    started: bool,
}

impl Follower {
    fn new(
        client: Client,
        ingress_class: String,
        system_namespace: String,
        books: Vec<Book>,
    ) -> Follower {
        Follower {
            client,
            ingress_class,
            system_namespace,
            books,
            secrets: SecretUse::default(),
            pending: Vec::new(),
            started: false,
        }
    }

    async fn run(
        mut self,
        mut merged: SelectAll<BoxStream<'static, Tagged>>,
        batches: mpsc::Sender<Batch>,
    ) {
        loop {
            let first = tokio::select! {
                next = merged.next() => next,
                () = batches.closed() => return,
            };
            let Some(first) = first else { return };
            let mut fetch = self.handle(first);
            let mut taken = 1;
            while taken < MAX_BATCH_EVENTS {
                let Some(Some(next)) = merged.next().now_or_never() else {
                    break;
                };
                fetch.extend(self.handle(next));
                taken += 1;
            }
            self.fetch_secrets(fetch).await;
            let initial = !self.started;
            if initial {
                if !self.books.iter().all(|book| book.synced) {
                    continue;
                }
                self.start();
            } else if self.pending.is_empty() {
                continue;
            }
            let batch = Batch {
                events: std::mem::take(&mut self.pending),
                initial,
                ..Batch::default()
            };
            if batches.send(batch).await.is_err() {
                return;
            }
        }
    }

    /// Applies one watch event; returns the secrets that became needed and must be read.
    fn handle(&mut self, (index, event): Tagged) -> Vec<NsName> {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(kind = %self.books[index].kind, "watching the API server failed, retrying with backoff: {error}");
                return Vec::new();
            }
        };
        match event {
            Event::Init => {
                self.books[index].listing = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                // Before the first batch, secrets are kept whole: which ones the ingresses name
                // is known only once every ingress is listed.
                let object = match object {
                    Object::Secret(secret) if self.started => {
                        let key = secret_key(&secret);
                        self.secrets.needed(&key).then_some(Object::Secret(secret))
                    }
                    object => Some(object),
                };
                let key = object.as_ref().map(Object::key);
                if let (Some(listing), Some(key)) = (&mut self.books[index].listing, key) {
                    listing.insert(key, object);
                }
                Vec::new()
            }
            Event::InitDone => {
                self.books[index].synced = true;
                if self.started {
                    self.finish_listing(index)
                } else {
                    Vec::new()
                }
            }
            // Before the first batch, a watch that listed keeps changing its list: the first
            // batch is then every watch's list as it stands.
            Event::Apply(object) => match self.listing(index) {
                Some(listing) => {
                    listing.insert(object.key(), Some(object));
                    Vec::new()
                }
                None => self.upsert(index, object),
            },
            Event::Delete(object) => match self.listing(index) {
                Some(listing) => {
                    listing.remove(&object.key());
                    Vec::new()
                }
                None => self.delete(index, object.key()),
            },
        }
    }

    /// The list a watch holds back until the first batch.
    fn listing(&mut self, index: usize) -> Option<&mut BTreeMap<ObjectKey, Option<Object>>> {
        if self.started {
            return None;
        }
        self.books[index].listing.as_mut()
    }

    /// The first batch: every watch's list, ingresses and ConfigMaps first so that the secrets
    /// they name are known when the secrets are sorted. Nothing needs fetching: every secret is
    /// in the list.
    fn start(&mut self) {
        let mut order: Vec<usize> = (0..self.books.len()).collect();
        order.sort_by_key(|&index| {
            let kind = &self.books[index].kind;
            !(kind.ends_with("Ingress") || kind == "ConfigMap")
        });
        for index in order {
            self.finish_listing(index);
        }
        self.started = true;
    }

    /// Replaces what a watch delivered with what its completed list holds.
    fn finish_listing(&mut self, index: usize) -> Vec<NsName> {
        let Some(listing) = self.books[index].listing.take() else {
            return Vec::new();
        };
        let gone: Vec<ObjectKey> = self.books[index]
            .delivered
            .iter()
            .filter(|key| !matches!(listing.get(*key), Some(Some(_))))
            .cloned()
            .collect();
        let mut fetch = Vec::new();
        for key in gone {
            fetch.extend(self.delete(index, key));
        }
        for object in listing.into_values().flatten() {
            fetch.extend(self.upsert(index, object));
        }
        fetch
    }

    fn upsert(&mut self, index: usize, object: Object) -> Vec<NsName> {
        let key = object.key();
        let mut fetch = Vec::new();
        match &object {
            Object::Secret(secret) if !self.secrets.needed(&secret_key(secret)) => {
                return self.delete(index, key);
            }
            Object::Ingress(_, ingress) => {
                let named = self.secrets_named(ingress);
                let (added, released) = self.secrets.update(&key, named);
                fetch = added;
                self.release(released);
            }
            Object::ConfigMap(map) if self.is_options(&key) => {
                let named = match options::parse(
                    map.data.as_ref().unwrap_or(&BTreeMap::new()),
                    &self.system_namespace,
                ) {
                    Ok(options) => Named::Secrets(
                        options
                            .upstream_ca
                            .into_iter()
                            .chain(options.cluster_cert)
                            .collect(),
                    ),
                    Err(_) => Named::Invalid,
                };
                let (added, released) = self.secrets.update(&key, named);
                fetch = added;
                self.release(released);
            }
            _ => {}
        }
        self.books[index].delivered.insert(key);
        self.pending.push(SourceEvent::Upsert(object));
        fetch
    }

    fn delete(&mut self, index: usize, key: ObjectKey) -> Vec<NsName> {
        if matches!(key, ObjectKey::Ingress(_)) || self.is_options(&key) {
            let (_, released) = self.secrets.update(&key, Named::NotServed);
            self.release(released);
        }
        if self.books[index].delivered.remove(&key) {
            self.pending.push(SourceEvent::Delete(key));
        }
        Vec::new()
    }

    /// Secrets no owned ingress names any more: their data leaves the world.
    fn release(&mut self, secrets: Vec<NsName>) {
        for secret in secrets {
            let key = ObjectKey::Secret(secret);
            for book in &mut self.books {
                if book.delivered.remove(&key) {
                    self.pending.push(SourceEvent::Delete(key.clone()));
                }
            }
        }
    }

    /// Whether `key` is the gateway options' ConfigMap.
    fn is_options(&self, key: &ObjectKey) -> bool {
        matches!(key, ObjectKey::ConfigMap(name)
            if name.namespace == self.system_namespace && name.name == options::CONFIG_MAP)
    }

    /// The secrets an ingress names, as far as sluice serves it.
    fn secrets_named(&self, ingress: &knative::Ingress) -> Named {
        if ingress.ingress_class() != Some(self.ingress_class.as_str()) {
            return Named::NotServed;
        }
        let mut ingress = ingress.clone();
        ingress.set_defaults();
        if ingress.validate().is_err() {
            return Named::Invalid;
        }
        Named::Secrets(
            ingress
                .spec
                .tls
                .iter()
                .map(|tls| NsName::new(tls.secret_namespace.clone(), tls.secret_name.clone()))
                .collect(),
        )
    }

    /// Reads the secrets that became needed, whose data the watch did not keep.
    async fn fetch_secrets(&mut self, secrets: Vec<NsName>) {
        for secret in secrets {
            let watched_by = self.books.iter().position(|book| {
                book.kind == "Secret"
                    && book
                        .namespace
                        .as_ref()
                        .is_none_or(|namespace| *namespace == secret.namespace)
            });
            let Some(index) = watched_by else {
                continue;
            };
            let key = ObjectKey::Secret(secret.clone());
            if self.books.iter().any(|book| book.delivered.contains(&key)) {
                continue;
            }
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.namespace);
            match api.get_opt(&secret.name).await {
                Ok(Some(mut found)) => {
                    slim(&mut found.metadata);
                    self.upsert(index, Object::Secret(Box::new(found)));
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    %secret,
                    "cannot read a TLS secret an ingress names; it is used once it changes: {error}"
                ),
            }
        }
    }
}

fn secret_key(secret: &Secret) -> NsName {
    NsName::new(
        secret.metadata.namespace.clone().unwrap_or_default(),
        secret.metadata.name.clone().unwrap_or_default(),
    )
}

/// What a version of an ingress says about the secrets it needs.
enum Named {
    NotServed,
    Invalid,
    Secrets(BTreeSet<NsName>),
}

/// Which secrets the owned ingresses (and the gateway options) name.
#[derive(Debug, Default)]
struct SecretUse {
    by_user: BTreeMap<ObjectKey, BTreeSet<NsName>>,
    users: BTreeMap<NsName, usize>,
}

impl SecretUse {
    fn needed(&self, secret: &NsName) -> bool {
        self.users.contains_key(secret)
    }

    /// Records what an ingress (or the options) names now; returns the secrets that became
    /// needed and those no longer needed.
    fn update(&mut self, user: &ObjectKey, named: Named) -> (Vec<NsName>, Vec<NsName>) {
        let after = match named {
            // The world keeps serving the last valid version, and with it its secrets.
            Named::Invalid => return (Vec::new(), Vec::new()),
            Named::NotServed => BTreeSet::new(),
            Named::Secrets(secrets) => secrets,
        };
        let before = self.by_user.remove(user).unwrap_or_default();
        let mut added = Vec::new();
        let mut released = Vec::new();
        for secret in after.difference(&before) {
            let users = self.users.entry(secret.clone()).or_default();
            *users += 1;
            if *users == 1 {
                added.push(secret.clone());
            }
        }
        for secret in before.difference(&after) {
            if let Some(users) = self.users.get_mut(secret) {
                *users -= 1;
                if *users == 0 {
                    self.users.remove(secret);
                    released.push(secret.clone());
                }
            }
        }
        if !after.is_empty() {
            self.by_user.insert(user.clone(), after);
        }
        (added, released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(kind: &str) -> Book {
        Book {
            kind: kind.to_owned(),
            ..Book::default()
        }
    }

    fn follower(kinds: &[&str]) -> Follower {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        Follower::new(
            client,
            "sluice".to_owned(),
            "gloo-system".to_owned(),
            kinds.iter().map(|kind| book(kind)).collect(),
        )
    }

    fn service(name: &str) -> Object {
        let mut service = Service::default();
        service.metadata.name = Some(name.to_owned());
        service.metadata.namespace = Some("default".to_owned());
        Object::Service(Box::new(service))
    }

    fn secret(name: &str) -> Object {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.to_owned());
        secret.metadata.namespace = Some("default".to_owned());
        Object::Secret(Box::new(secret))
    }

    fn ingress(name: &str, secret: Option<&str>) -> Object {
        let tls = secret
            .map(|s| format!("  tls: [{{hosts: [{name}.example.com], secretName: {s}}}]\n"))
            .unwrap_or_default();
        let yaml = format!(
            "metadata:\n  name: {name}\n  namespace: default\n  annotations: {{networking.knative.dev/ingress.class: sluice}}\nspec:\n{tls}  rules:\n  - hosts: [{name}.example.com]\n    http:\n      paths:\n      - splits: [{{serviceName: s, servicePort: 80}}]\n"
        );
        Object::Ingress(
            IngressKind::Ingress,
            Box::new(serde_saphyr::from_str(&yaml).unwrap()),
        )
    }

    fn list(follower: &mut Follower, index: usize, objects: Vec<Object>) {
        follower.handle((index, Ok(Event::Init)));
        for object in objects {
            follower.handle((index, Ok(Event::InitApply(object))));
        }
        follower.handle((index, Ok(Event::InitDone)));
    }

    fn delivered(follower: &mut Follower) -> Vec<String> {
        std::mem::take(&mut follower.pending)
            .into_iter()
            .map(|event| match event {
                SourceEvent::Upsert(object) => format!("+{}", object.key()),
                SourceEvent::Delete(key) => format!("-{key}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_relist_replaces_what_its_watch_delivered_and_nothing_else() {
        let mut follower = follower(&["Ingress", "Service"]);
        list(&mut follower, 1, vec![service("a"), service("b")]);
        list(&mut follower, 0, vec![ingress("web", None)]);
        follower.start();
        assert_eq!(
            delivered(&mut follower),
            [
                "+Ingress/default/web",
                "+Service/default/a",
                "+Service/default/b"
            ]
        );
        // The Service watch lists again (after a 410, say): b is gone, c is new; half a list
        // delivers nothing.
        follower.handle((1, Ok(Event::Init)));
        follower.handle((1, Ok(Event::InitApply(service("a")))));
        follower.handle((1, Ok(Event::InitApply(service("c")))));
        assert_eq!(delivered(&mut follower), Vec::<String>::new());
        follower.handle((1, Ok(Event::InitDone)));
        assert_eq!(
            delivered(&mut follower),
            [
                "-Service/default/b",
                "+Service/default/a",
                "+Service/default/c"
            ]
        );
    }

    #[tokio::test]
    async fn a_secret_is_kept_only_while_an_owned_ingress_names_it() {
        let mut follower = follower(&["Ingress", "Secret"]);
        list(&mut follower, 1, vec![secret("named"), secret("unrelated")]);
        list(&mut follower, 0, vec![ingress("web", Some("named"))]);
        follower.start();
        assert_eq!(
            delivered(&mut follower),
            ["+Ingress/default/web", "+Secret/default/named"]
        );
        follower.handle((1, Ok(Event::Apply(secret("unrelated")))));
        assert_eq!(delivered(&mut follower), Vec::<String>::new());
        // The ingress stops naming it: its data leaves the world.
        follower.handle((0, Ok(Event::Apply(ingress("web", None)))));
        assert_eq!(
            delivered(&mut follower),
            ["-Secret/default/named", "+Ingress/default/web"]
        );
        // Naming a secret the watch did not keep asks for it to be read.
        let fetch = follower.handle((0, Ok(Event::Apply(ingress("web", Some("unrelated"))))));
        assert_eq!(fetch, [NsName::new("default", "unrelated")]);
    }

    #[tokio::test]
    async fn nothing_is_delivered_before_every_watch_has_listed() {
        let follower = follower(&["Ingress", "Service"]);
        let events: Vec<Tagged> = vec![
            (1, Ok(Event::Init)),
            (1, Ok(Event::InitApply(service("a")))),
            (1, Ok(Event::InitDone)),
            (0, Ok(Event::Init)),
            (0, Ok(Event::InitApply(ingress("web", None)))),
            (0, Ok(Event::InitDone)),
            (1, Ok(Event::Apply(service("b")))),
        ];
        let mut merged = SelectAll::new();
        merged.push(futures::stream::iter(events).boxed());
        let (batches, mut received) = mpsc::channel(4);
        tokio::spawn(follower.run(merged, batches));
        let first = received.recv().await.unwrap();
        assert!(first.initial);
        let keys: Vec<String> = first
            .events
            .iter()
            .map(|event| match event {
                SourceEvent::Upsert(object) => object.key().to_string(),
                SourceEvent::Delete(key) => format!("-{key}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "Ingress/default/web",
                "Service/default/a",
                "Service/default/b"
            ]
        );
        assert!(
            received.recv().await.is_none(),
            "one batch for events that arrived together"
        );
    }
}
