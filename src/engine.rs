//! The engine wires one direction of the data flow: source batches go into the world, the
//! changes are translated, and the resulting snapshot is published to the xDS server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::knative::{self, IngressKey, IngressKind};
use crate::metrics::Metrics;
use crate::options::{self, GatewayOptions, OptionProblem, Options};
use crate::routes::status::{Context, RouteView};
use crate::routes::{self, RouteConfig, Routes};
use crate::status::replicas::ReportUpdate;
use crate::status::{self, Dirty, Envoys, IngressView, LoadBalancers};
use crate::translate::{TranslateConfig, Translator};
use crate::world::IngressProblem;
use crate::world::{Kept, NsName, Object, ObjectKey, SourceEvent, World};
use crate::xds::{ClusterResources, Snapshot, SnapshotFeed, TypeUrl};

pub struct Engine {
    routes: Routes,
    world: World,
    translator: Translator,
    snapshot: Snapshot,
    publisher: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
    balancers: LoadBalancers,
    /// When someone writes status: the ingresses whose status batches may have changed since
    /// it was last taken.
    status_dirty: Option<Dirty>,
    /// `config-sluice` in this namespace holds the gateway options.
    system_namespace: String,
    options: Options,
    /// What was last logged of the secrets the options name.
    secret_problems: Vec<String>,
}

/// What one batch cost.
#[derive(Debug, Clone, Copy)]
pub struct BatchReport {
    pub objects_changed: usize,
    pub resources_changed: usize,
    pub translation: std::time::Duration,
}

impl Engine {
    pub fn new(
        ingress_class: &str,
        config: TranslateConfig,
        balancers: LoadBalancers,
        metrics: Arc<Metrics>,
    ) -> (Engine, SnapshotFeed) {
        let (publisher, feed) = watch::channel(None);
        let engine = Engine {
            routes: Routes::new(RouteConfig::new(ingress_class)),
            world: World::new(ingress_class),
            translator: Translator::new(config),
            snapshot: Snapshot::default(),
            publisher,
            metrics,
            balancers,
            status_dirty: None,
            system_namespace: "gloo-system".to_owned(),
            options: Options::default(),
            secret_problems: Vec::new(),
        };
        (engine, feed)
    }

    /// Reads the gateway options from `config-sluice` in `namespace` (sluice's own).
    pub fn set_system_namespace(&mut self, namespace: &str) {
        self.system_namespace = namespace.to_owned();
    }

    /// Applies one batch from the source. `complete` says the source has delivered its whole
    /// initial state: only from then on is anything served.
    pub fn apply(&mut self, events: Vec<SourceEvent>, complete: bool) -> BatchReport {
        let started = Instant::now();
        self.read_options(&events);
        let staged = self.routes.apply(events);
        self.apply_staged(staged, complete, started)
    }

    /// Takes the newest `config-sluice` of a batch, if it has one. Options with problems are
    /// logged, key by key, and leave the last good ones in force.
    fn read_options(&mut self, events: &[SourceEvent]) {
        let key = NsName::new(self.system_namespace.clone(), options::CONFIG_MAP);
        let mut newest = None;
        for event in events {
            match event {
                SourceEvent::Upsert(Object::ConfigMap(map))
                    if map.metadata.name.as_deref() == Some(options::CONFIG_MAP)
                        && map.metadata.namespace.as_deref() == Some(key.namespace.as_str()) =>
                {
                    newest = Some(Some(map.data.clone().unwrap_or_default()));
                }
                SourceEvent::Delete(ObjectKey::ConfigMap(deleted)) if *deleted == key => {
                    newest = Some(None);
                }
                _ => {}
            }
        }
        let Some(data) = newest else {
            return;
        };
        let changed = self.options.update(data.as_ref(), &self.system_namespace);
        for problem in self.options.problems() {
            tracing::warn!(
                "{problem}; until it is fixed the gateway options in force stay as they were"
            );
        }
        if changed {
            for note in self.options.in_force().notes() {
                tracing::warn!("ConfigMap {}: {note}", options::CONFIG_MAP);
            }
            tracing::info!(configmap = %key, "gateway options changed");
        }
    }

    /// The gateway options in force.
    pub fn options(&self) -> &GatewayOptions {
        self.options.in_force()
    }

    /// Why the newest `config-sluice` is not in force, or a secret it names cannot be used.
    pub fn option_problems(&self) -> Vec<String> {
        self.options
            .problems()
            .iter()
            .map(OptionProblem::to_string)
            .chain(self.translator.gateway_problems())
            .collect()
    }

    /// Sets how Routes become Ingresses (domain, tag-header routing, class).
    pub fn configure_routes(&mut self, config: RouteConfig) {
        let started = Instant::now();
        let staged = self.routes.configure(config);
        let complete = self.ready();
        self.apply_staged(staged, complete, started);
    }

    fn apply_staged(
        &mut self,
        staged: routes::StageOutput,
        complete: bool,
        started: Instant,
    ) -> BatchReport {
        for warning in &staged.warnings {
            tracing::warn!("{warning}");
        }
        let changes = self.world.apply(staged.events);
        let mut updates = self
            .translator
            .configure(&self.world, self.options.in_force().clone());
        updates.extend(self.translator.apply(&self.world, &changes));
        if let Some(dirty) = &mut self.status_dirty {
            dirty.extend(changes.ingresses.iter().cloned());
            for secret in &changes.secrets {
                dirty.extend(self.translator.naming_secret(secret));
            }
            for update in &updates {
                dirty.extend(self.translator.claimants(update.type_url, &update.name));
            }
        }
        let secret_problems = self.translator.gateway_problems();
        if secret_problems != self.secret_problems {
            for problem in &secret_problems {
                tracing::warn!("{problem}");
            }
            self.secret_problems = secret_problems;
        }
        let translation = started.elapsed();
        self.metrics
            .translation_seconds
            .observe(translation.as_secs_f64());
        self.metrics.resources_changed.inc_by(updates.len() as u64);
        let report = BatchReport {
            objects_changed: changes.len(),
            resources_changed: updates.len(),
            translation,
        };
        let first_publish = complete && self.publisher.borrow().is_none();
        if updates.is_empty() && !first_publish {
            return report;
        }
        self.snapshot.apply(updates);
        if complete || self.publisher.borrow().is_some() {
            self.publisher
                .send_replace(Some(Arc::new(self.snapshot.clone())));
        }
        report
    }

    /// What the source could not read this time, and which of its origins read cleanly again.
    pub fn note_source_health(&mut self, kept: Vec<Kept>, healthy: &[String]) {
        self.routes.note_source_health(&kept, healthy);
        self.world.note_source_health(kept, healthy);
    }

    /// Whether the first full load is translated and served.
    pub fn ready(&self) -> bool {
        self.publisher.borrow().is_some()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The cluster (and endpoints) served, or that would be served, under cluster name `name`;
    /// see [`Translator::cluster_named`].
    pub fn cluster_named(&self, name: &str) -> Option<ClusterResources> {
        self.translator.cluster_named(&self.world, name)
    }

    /// Every ingress known, with its status.
    pub fn ingresses(&self, envoys: Envoys) -> Vec<IngressView> {
        self.world
            .ingresses
            .keys()
            .map(|key| self.view(key, envoys))
            .collect()
    }

    fn view(&self, key: &IngressKey, envoys: Envoys) -> IngressView {
        let entry = &self.world.ingresses[key];
        let mut view = status::view(key, entry, &self.translator, envoys, &self.balancers);
        if let Some(problem) = self.world.kept_problem(key) {
            status::mark_unreadable(&mut view, problem);
        }
        view
    }

    /// The ingresses whose status the batches since the last call may have changed (all of
    /// them the first time).
    pub fn take_status_dirty(&mut self) -> Dirty {
        match &mut self.status_dirty {
            Some(dirty) => dirty.take(),
            None => {
                self.status_dirty = Some(Dirty::default());
                Dirty::all()
            }
        }
    }

    /// The ingresses whose status an Envoy's verdict on this resource may change.
    pub fn claimants(&self, type_url: TypeUrl, name: &str) -> BTreeSet<IngressKey> {
        self.translator.claimants(type_url, name)
    }

    /// Calls `each` with every owned ingress of `scope` that exists, the status Knative's
    /// reconcilers would give it now, and the status the source last saw on it.
    pub fn knative_statuses(
        &self,
        envoys: Envoys,
        scope: &Dirty,
        now: &str,
        each: &mut dyn FnMut(&IngressKey, knative::IngressStatus, Option<&knative::IngressStatus>),
    ) {
        let known = &self.world.ingresses;
        for (key, entry) in scope
            .keys(known)
            .filter_map(|key| Some((key, known.get(key)?)))
        {
            // A Route's Ingress lives only here: its Route's status reports on it instead.
            if matches!(entry.problem, Some(IngressProblem::NotOwned { .. }))
                || self.routes.owner_of(key).is_some()
            {
                continue;
            }
            let observed = entry.latest.status.as_ref();
            let wanted = status::knative_status(
                &self.view(key, envoys),
                entry.latest.metadata.generation,
                observed,
                now,
            );
            each(key, wanted, observed);
        }
    }

    /// The names of the Services of a namespace, in order.
    pub fn service_names(&self, namespace: &str) -> Vec<String> {
        self.world
            .services
            .keys()
            .filter(|key| key.namespace == namespace)
            .map(|key| key.name.clone())
            .collect()
    }

    /// Every Route known, with its status.
    pub fn routes(&self, envoys: Envoys) -> Vec<RouteView> {
        self.routes
            .entries()
            .keys()
            .map(|key| self.route_view(key, envoys))
            .collect()
    }

    fn route_view(&self, key: &NsName, envoys: Envoys) -> RouteView {
        let ingress_key = IngressKey {
            kind: IngressKind::Ingress,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let ingress = self
            .routes
            .owner_of(&ingress_key)
            .filter(|_| self.world.ingresses.contains_key(&ingress_key))
            .map(|_| self.view(&ingress_key, envoys));
        routes::status::view(
            key,
            &self.routes.entries()[key],
            Context {
                settings: self.routes.settings(),
                ingress: ingress.as_ref(),
                yields: self.routes.yields(key),
                unreadable: self.routes.kept_problem(key),
            },
        )
    }

    /// Calls `each` with every Route whose Ingress sluice makes, the status Knative's route
    /// reconciler would give it now, and the status the source last saw on it.
    pub fn route_statuses(
        &self,
        envoys: Envoys,
        now: &str,
        each: &mut dyn FnMut(&NsName, knative::RouteStatus, Option<&knative::RouteStatus>),
    ) {
        for (key, entry) in self.routes.entries() {
            if self.routes.yields(key) {
                continue;
            }
            let observed = entry.latest.status.as_ref();
            let wanted =
                routes::status::knative_status(&self.route_view(key, envoys), observed, now);
            each(key, wanted, observed);
        }
    }

    /// What this replica's own Envoys say about the ingresses of `scope` (see
    /// `status::replicas`).
    pub fn local_report(&self, proxies: &[Arc<crate::xds::Proxy>], scope: &Dirty) -> ReportUpdate {
        status::local_report(&self.world.ingresses, &self.translator, proxies, scope)
    }
}
