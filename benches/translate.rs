//! Translation cost at fleet scale: `cargo bench --bench translate`.
//!
//! For 1, 1,000 and 5,000 ingresses (each with its own Service and Endpoints) it measures the
//! translation of the whole world from scratch, and the whole in-process cost of one changed
//! ingress among them (world update, translation, snapshot publish), as medians.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::engine::Engine;
use sluice::knative::{Ingress, IngressKind};
use sluice::metrics::Metrics;
use sluice::status::LoadBalancers;
use sluice::translate::{TranslateConfig, Translator};
use sluice::world::{Object, SourceEvent, World};

/// The same allocator as the binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLASS: &str = "sluice.ingress.networking.knative.dev";

fn config() -> TranslateConfig {
    TranslateConfig {
        listen_address: "0.0.0.0".into(),
        http_port: 8080,
        https_port: 8443,
        internal_http_port: 8081,
        internal_https_port: 8444,
    }
}

fn ingress(i: usize, percent: u32) -> Object {
    let yaml = format!(
        r#"
metadata:
  name: svc-{i}
  namespace: default
  annotations: {{networking.knative.dev/ingress.class: {CLASS}}}
spec:
  rules:
  - hosts: [svc-{i}.default.example.com]
    http:
      paths:
      - splits:
        - {{serviceName: svc-{i}-a, servicePort: 80, percent: {percent}, appendHeaders: {{Knative-Serving-Revision: svc-{i}-a}}}}
        - {{serviceName: svc-{i}-b, servicePort: 80, percent: {rest}, appendHeaders: {{Knative-Serving-Revision: svc-{i}-b}}}}
  - hosts: [svc-{i}.default.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - splits: [{{serviceName: svc-{i}-a, servicePort: 80}}]
"#,
        rest = 100 - percent
    );
    let ingress: Ingress = serde_saphyr::from_str(&yaml).expect("benchmark YAML parses");
    Object::Ingress(IngressKind::Ingress, Box::new(ingress))
}

fn backend(name: &str, i: usize) -> Vec<Object> {
    let service = serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    });
    let endpoints = serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": [{"ip": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256)}],
                     "ports": [{"name": "http", "port": 8080}]}]
    });
    vec![
        Object::Service(Box::new(serde_json::from_value(service).expect("Service"))),
        Object::Endpoints(Box::new(
            serde_json::from_value(endpoints).expect("Endpoints"),
        )),
    ]
}

fn fleet(n: usize) -> Vec<SourceEvent> {
    (0..n)
        .flat_map(|i| {
            let mut objects = vec![ingress(i, 90)];
            objects.extend(backend(&format!("svc-{i}-a"), i));
            objects.extend(backend(&format!("svc-{i}-b"), i + n));
            objects
        })
        .map(SourceEvent::Upsert)
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    println!(
        "| ingresses | full translation (median) | resources | one changed ingress, end to end in process (median) | resources changed |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1, 1_000, 5_000] {
        let mut world = World::new(CLASS);
        world.apply(fleet(n));
        let changes = Translator::everything(&world);
        let mut resources = 0;
        let full = median(
            (0..7)
                .map(|_| {
                    let started = Instant::now();
                    let mut translator = Translator::new(config());
                    resources = translator.apply(&world, &changes).len();
                    started.elapsed()
                })
                .collect(),
        );

        let (mut engine, _feed) = Engine::new(
            CLASS,
            config(),
            LoadBalancers::default(),
            Arc::new(Metrics::default()),
        );
        engine.apply(fleet(n), true);
        let target = n / 2;
        let mut changed = 0;
        let one = median(
            (0..201)
                .map(|round| {
                    let percent = if round % 2 == 0 { 80 } else { 90 };
                    let event = SourceEvent::Upsert(ingress(target, percent));
                    let started = Instant::now();
                    changed = engine.apply(vec![event], true).resources_changed;
                    started.elapsed()
                })
                .collect(),
        );
        println!(
            "| {n} | {:.2} ms | {resources} | {:.1} µs | {changed} |",
            full.as_secs_f64() * 1e3,
            one.as_secs_f64() * 1e6
        );
    }
}
