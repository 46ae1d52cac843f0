//! The engine wires one direction of the data flow: source batches go into the world, the
//! changes are translated, and the resulting snapshot is published to the xDS server.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::status::{self, IngressView};
use crate::translate::{TranslateConfig, Translator};
use crate::world::{Kept, SourceEvent, World};
use crate::xds::{ClusterResources, Proxy, Snapshot, SnapshotFeed};

pub struct Engine {
    world: World,
    translator: Translator,
    snapshot: Snapshot,
    publisher: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
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
        metrics: Arc<Metrics>,
    ) -> (Engine, SnapshotFeed) {
        let (publisher, feed) = watch::channel(None);
        let engine = Engine {
            world: World::new(ingress_class),
            translator: Translator::new(config),
            snapshot: Snapshot::default(),
            publisher,
            metrics,
        };
        (engine, feed)
    }

    /// Applies one batch from the source. `complete` says the source has delivered its whole
    /// initial state: only from then on is anything served.
    pub fn apply(&mut self, events: Vec<SourceEvent>, complete: bool) -> BatchReport {
        let started = Instant::now();
        let changes = self.world.apply(events);
        let updates = self.translator.apply(&self.world, &changes);
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

    pub fn ingresses(&self, proxies: &[Arc<Proxy>]) -> Vec<IngressView> {
        self.world
            .ingresses
            .iter()
            .map(|(key, entry)| {
                let mut view = status::view(key, entry, &self.translator, proxies);
                if let Some(problem) = self.world.kept_problem(key) {
                    status::mark_unreadable(&mut view, problem);
                }
                view
            })
            .collect()
    }
}
