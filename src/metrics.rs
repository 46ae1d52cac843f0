//! Prometheus metrics, named after Istio's where operators already alert on those.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::xds::TypeUrl;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connected_proxies: Gauge,
    pub proxies_awaiting_sync: Gauge,
    pushes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    convergence: Family<TypeLabel, Histogram>,
    pub translation_seconds: Histogram,
    pub push_seconds: Histogram,
    pub resources_changed: Counter,
    pub status_writes: Counter,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let connected_proxies = Gauge::default();
        registry.register(
            "xds_connected_proxies",
            "Envoys connected over ADS",
            connected_proxies.clone(),
        );
        let proxies_awaiting_sync = Gauge::default();
        registry.register(
            "xds_proxies_awaiting_sync",
            "Envoys connected and waiting for their turn at a first sync (--concurrent-syncs)",
            proxies_awaiting_sync.clone(),
        );
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        let rejects = Family::<TypeLabel, Counter>::default();
        registry.register(
            "xds_rejects",
            "xDS responses Envoy rejected (NACK), by type",
            rejects.clone(),
        );
        let convergence = Family::<TypeLabel, Histogram>::new_with_constructor(
            convergence_histogram as fn() -> Histogram,
        );
        registry.register(
            "xds_proxy_convergence_seconds",
            "Time from a change reaching sluice's snapshot (or an Envoy connecting) to that Envoy's \
             ACK of it, by type: Istio's pilot_proxy_convergence_time",
            convergence.clone(),
        );
        let translation_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "translation_seconds",
            "Time to translate one batch of source changes into Envoy resources",
            translation_seconds.clone(),
        );
        let push_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        registry.register(
            "xds_push_seconds",
            "Time to work out one Envoy's responses to a new snapshot or request",
            push_seconds.clone(),
        );
        let resources_changed = Counter::default();
        registry.register(
            "resources_changed",
            "Envoy resources added, changed or removed by translation",
            resources_changed.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "Ingress status updates written to the API server",
            status_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and writes status",
            leader.clone(),
        );
        // Every type's series exists from the start, at zero, so that alerts on them work before
        // the first push or rejection.
        for r#type in TypeUrl::ALL.map(TypeUrl::short) {
            pushes.get_or_create(&TypeLabel { r#type }).inc_by(0);
            rejects.get_or_create(&TypeLabel { r#type }).inc_by(0);
            let _ = convergence.get_or_create(&TypeLabel { r#type });
        }
        Metrics {
            registry,
            connected_proxies,
            proxies_awaiting_sync,
            pushes,
            rejects,
            convergence,
            translation_seconds,
            push_seconds,
            resources_changed,
            status_writes,
            leader,
        }
    }
}

impl Metrics {
    pub fn record_push(&self, r#type: &'static str) {
        self.pushes.get_or_create(&TypeLabel { r#type }).inc();
    }

    pub fn record_reject(&self, r#type: &'static str) {
        self.rejects.get_or_create(&TypeLabel { r#type }).inc();
    }

    pub fn record_convergence(&self, r#type: &'static str, seconds: f64) {
        self.convergence
            .get_or_create(&TypeLabel { r#type })
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// 1 ms to about 33 s.
fn convergence_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_reported_from_the_start() {
        let metrics = Metrics::default();
        metrics.record_reject("RDS");
        let text = metrics.encode();
        assert!(
            text.contains("sluice_xds_rejects_total{type=\"CDS\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_xds_rejects_total{type=\"RDS\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_xds_pushes_total{type=\"SDS\"} 0"),
            "{text}"
        );
        assert!(text.contains("sluice_xds_connected_proxies 0"), "{text}");
        assert!(
            text.contains("sluice_xds_proxies_awaiting_sync 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_xds_proxy_convergence_seconds_count{type=\"LDS\"} 0"),
            "{text}"
        );
        metrics.record_convergence("RDS", 0.003);
        let text = metrics.encode();
        assert!(
            text.contains(
                "sluice_xds_proxy_convergence_seconds_bucket{le=\"0.004\",type=\"RDS\"} 1"
            ),
            "{text}"
        );
    }
}
