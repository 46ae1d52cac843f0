//! Config Envoy accepts, always: manifest sets are served to a real Envoy, which must accept
//! every response (no NACK, `sluice_xds_rejects_total` stays 0) and get every ingress Ready.
//!
//! The sets: the examples, generated worlds of hundreds of ingresses mixing every feature
//! (`support::worlds::feature_world`), and a sample of the fuzz target's hostile ingresses
//! (`support::worlds::arbitrary_ingress`) that pass validation. Both modes.

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::manifests;
use support::worlds::{self, Certificates};
use support::{ManifestDir, Stack, StackOptions, poll_until};

/// Hundreds of ingresses through a debug build of sluice and a real Envoy.
const CONVERGE: Duration = Duration::from_secs(120);

struct World {
    name: String,
    files: Vec<(String, String)>,
    /// Ingresses it makes (Routes make one each).
    ingresses: usize,
    /// Whether every ingress must become Ready (else some may be refused for reasons of their
    /// own, such as a domain conflict or a missing secret).
    all_ready: bool,
}

/// The ingresses YAML manifests make: one per Ingress, ClusterIngress and Route.
fn ingress_count(files: &[(String, String)]) -> usize {
    files
        .iter()
        .flat_map(|(_, text)| text.lines())
        .map(|line| line.replace('"', ""))
        .filter(|line| {
            matches!(
                line.as_str(),
                "kind: Ingress" | "kind: ClusterIngress" | "kind: Route"
            )
        })
        .count()
}

fn examples() -> World {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/manifests");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples/manifests")
        .map(|entry| {
            let path = entry.expect("an entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("an example"))
        })
        .collect();
    files.sort();
    World {
        name: "examples/manifests".into(),
        ingresses: ingress_count(&files),
        files,
        all_ready: true,
    }
}

/// One file per object, as an operator's directory would hold them.
fn generated(seed: u64, ingresses: usize, certificates: &Certificates) -> World {
    let files: Vec<(String, String)> = worlds::feature_world(seed, ingresses, certificates)
        .iter()
        .enumerate()
        .map(|(n, object)| (format!("{n:05}.yaml"), manifests::to_yaml(object)))
        .collect();
    World {
        name: format!("feature world {seed}"),
        ingresses: ingress_count(&files),
        files,
        all_ready: true,
    }
}

/// The fuzz target's ingresses that Knative's validation accepts.
fn fuzzed(seed: u64) -> World {
    let mut objects = worlds::fuzz_backends();
    let mut names = std::collections::BTreeSet::new();
    for value in worlds::sample(worlds::arbitrary_ingress(1), seed, 400) {
        let Ok(mut ingress) = serde_json::from_value::<sluice::knative::Ingress>(value.clone())
        else {
            continue;
        };
        ingress.set_defaults();
        if ingress.validate().is_ok() && names.insert(ingress.metadata.name.clone()) {
            objects.push(value);
        }
    }
    assert!(
        names.len() >= 10,
        "the sample should hold valid ingresses: {names:?}"
    );
    // JSON: the hostile strings are the point, and JSON has one way to escape them.
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    World {
        name: format!("fuzz sample {seed}"),
        files: vec![("fuzzed.json".into(), list.to_string())],
        ingresses: names.len(),
        all_ready: false,
    }
}

/// Every ingress of the world listed and settled (Ready, or refused for a reason of its own),
/// and no Envoy waiting for an answer to a response.
async fn wait_settled(stack: &Stack, world: &World) -> Value {
    let settled = poll_until(CONVERGE, async || {
        let ingresses = stack.sluice.ingresses().await;
        let listed = ingresses.as_array()?;
        let settled = listed.len() == world.ingresses
            && listed.iter().all(|ingress| {
                let ready = ingress["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
                ready.is_some_and(|ready| {
                    ready["status"] == "True" || (!world.all_ready && ready["status"] == "False")
                })
            });
        if !settled {
            return None;
        }
        let proxies = stack.sluice.admin_get("/debug/proxies").await.body;
        (!proxies.contains("\"STALE\"")).then_some(ingresses)
    })
    .await;
    match settled {
        Some(ingresses) => ingresses,
        None => panic!(
            "{}: {} ingresses did not settle within {CONVERGE:?}: {}",
            world.name,
            world.ingresses,
            stack.sluice.ingresses().await
        ),
    }
}

fn rejects(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|line| line.starts_with("sluice_xds_rejects_total{") && !line.ends_with(" 0"))
        .collect()
}

async fn served_worlds_are_accepted_by_envoy(delta: bool) {
    let dir = ManifestDir::new();
    let stack = Stack::start_with(
        dir.path(),
        StackOptions {
            delta,
            sluice_args: vec!["--tag-header-routing".into()],
            ..StackOptions::default()
        },
    )
    .await;
    let certificates = Certificates::new();
    let worlds = [
        examples(),
        generated(1, 300, &certificates),
        generated(2, 100, &certificates),
        fuzzed(3),
    ];
    for world in &worlds {
        for entry in std::fs::read_dir(dir.path()).expect("the manifest dir") {
            std::fs::remove_file(entry.expect("an entry").path()).expect("remove a manifest");
        }
        for (name, text) in &world.files {
            dir.write(name, text);
        }
        let ingresses = wait_settled(&stack, world).await;
        let ready = ingresses
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ingress| {
                ingress["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        eprintln!(
            "{}: {} ingresses settled, {ready} of them Ready",
            world.name, world.ingresses
        );
        let metrics = stack.sluice.admin_get("/metrics").await.body;
        for r#type in ["CDS", "EDS", "LDS", "RDS"] {
            let count = format!("sluice_xds_proxy_convergence_seconds_count{{type=\"{type}\"}} ");
            let observed = metrics
                .lines()
                .find_map(|line| line.strip_prefix(&count)?.parse::<u64>().ok());
            assert!(
                observed.is_some_and(|n| n > 0),
                "{}: Envoy's {type} ACKs are measured: {metrics}",
                world.name
            );
        }
        assert_eq!(
            rejects(&metrics),
            Vec::<&str>::new(),
            "{}: Envoy rejected config: {}",
            world.name,
            stack.sluice.admin_get("/debug/proxies").await.body
        );
    }
}

in_both_modes!(served_worlds_are_accepted_by_envoy);
