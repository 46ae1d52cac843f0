//! Fuzzing on stable Rust, with proptest: the manifest reader (bytes and near-YAML text to
//! objects) and the translator (arbitrary ingresses, often hostile) never panic; an ingress that
//! fails validation gets errors that each name a field; one that passes gets a route for each of
//! its hosts. That Envoy accepts what valid ones become is checked by tests/corpus.rs on a
//! sample of the same strategy.
//!
//! Each target runs 15 s by default (CI): a round with a fixed seed, then rounds with fresh ones.
//! `SLUICE_FUZZ_SECONDS=3600 cargo test --test fuzz -- --nocapture` runs an hour;
//! docs/fuzzing.md records such a run. A failure prints the shrunk input.

mod support;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;
use sluice::knative::{Ingress, IngressKind};
use sluice::source::file::DirectorySource;
use sluice::translate::{TranslateConfig, Translator};
use sluice::world::{Object, SourceEvent, World};
use support::worlds;

/// Cases per target in one round.
const CASES: u32 = 200;
/// The manifest reader's parsers recurse once per nesting level: run on a stack as deep as the
/// file source's own reading thread.
const STACK_BYTES: usize = 64 << 20;

/// How long each target runs unless `SLUICE_FUZZ_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 15;

/// Runs `round` until `SLUICE_FUZZ_SECONDS` pass: first with a fixed seed (the same cases on
/// every run), then with fresh ones.
fn fuzz(name: &'static str, round: impl Fn(&mut TestRunner) + Send + 'static) {
    let budget = Duration::from_secs(
        std::env::var("SLUICE_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SECONDS),
    );
    let thread = std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let started = Instant::now();
            let mut rounds = 0u64;
            loop {
                let seed = if rounds == 0 { 0 } else { rand_seed(rounds) };
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&seed.to_le_bytes());
                let mut runner = TestRunner::new_with_rng(
                    Config {
                        cases: CASES,
                        failure_persistence: None,
                        ..Config::default()
                    },
                    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
                );
                round(&mut runner);
                rounds += 1;
                if started.elapsed() >= budget {
                    break;
                }
            }
            eprintln!(
                "{name}: {rounds} rounds of {CASES} cases in {:.0?}",
                started.elapsed()
            );
        })
        .expect("a fuzzing thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A seed that differs between runs.
fn rand_seed(round: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(round);
    hasher.finish()
}

/// Text near YAML: manifests with their lines shuffled, cut, repeated and sprinkled with the
/// characters YAML gives meaning to.
fn near_yaml() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("apiVersion: v1\n".to_owned()),
        Just("apiVersion: networking.internal.knative.dev/v1alpha1\n".to_owned()),
        Just("kind: Ingress\n".to_owned()),
        Just("kind: Service\n".to_owned()),
        Just("kind: List\nitems:\n".to_owned()),
        Just("metadata: {name: x}\n".to_owned()),
        Just("---\n".to_owned()),
        Just("spec:\n  rules:\n  - hosts: [a.example.com]\n".to_owned()),
        Just("    http: {paths: [{splits: [{serviceName: s, servicePort: 80}]}]}\n".to_owned()),
        Just("a: &a [x, x]\nb: [*a, *a, *a]\n".to_owned()),
        Just("<<: *a\n".to_owned()),
        Just("!!binary aGVsbG8=\n".to_owned()),
        "[-:{}\\[\\]&*!|>'\"%@`#,? \n\t]{1,10}",
        "[ -~]{0,20}\n",
        "\\PC{0,10}",
    ];
    proptest::collection::vec(pieces, 0..30).prop_map(|pieces| pieces.concat())
}

/// Reads `bytes` as a manifest file named `name` the way `sluice serve --dir` does.
fn read(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the case");
    let load = DirectorySource::new(dir.path())
        .expect("the directory exists")
        .load_all();
    for error in &load.errors {
        let shown = error.to_string();
        prop_assert!(
            shown.starts_with(&path.display().to_string()) && shown.contains(": "),
            "an error names the file and says what is wrong: {shown}"
        );
    }
    Ok(())
}

#[test]
fn manifest_reader_never_panics() {
    fuzz("manifest reader", |runner| {
        let cases = (
            prop_oneof![Just("m.yaml"), Just("m.json")],
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                near_yaml().prop_map(String::into_bytes),
                worlds::arbitrary_ingress(10).prop_map(|v| v.to_string().into_bytes()),
            ],
        );
        let outcome = runner.run(&cases, |(name, bytes)| read(name, &bytes));
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    });
}

fn config() -> TranslateConfig {
    TranslateConfig {
        listen_address: "0.0.0.0".into(),
        http_port: 8080,
        https_port: 8443,
        internal_http_port: 8081,
        internal_https_port: 8444,
    }
}

/// Translates the backends plus `ingresses` (JSON) from scratch, and checks what each ingress
/// became.
fn translate(ingresses: &[Value]) -> Result<(), TestCaseError> {
    let mut events: Vec<SourceEvent> = Vec::new();
    for backend in worlds::fuzz_backends() {
        let object = match backend["kind"].as_str() {
            Some("Service") => Object::Service(Box::new(serde_json::from_value(backend).unwrap())),
            _ => Object::Endpoints(Box::new(serde_json::from_value(backend).unwrap())),
        };
        events.push(SourceEvent::Upsert(object));
    }
    let mut valid = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for value in ingresses {
        // A later object of the same name replaces the earlier: keep the first.
        if !names.insert(value["metadata"]["name"].to_string()) {
            continue;
        }
        // What the file source does: a document that does not decode names the field.
        let ingress: Ingress = match serde_path_to_error::deserialize(value) {
            Ok(ingress) => ingress,
            Err(error) => {
                prop_assert!(!error.path().to_string().is_empty(), "{error}");
                continue;
            }
        };
        let mut defaulted = ingress.clone();
        defaulted.set_defaults();
        match defaulted.validate() {
            Ok(()) => valid.push(defaulted),
            Err(errors) => {
                for error in errors {
                    let shown = error.to_string();
                    prop_assert!(
                        shown.starts_with("spec."),
                        "a validation error names its field: {shown}"
                    );
                }
            }
        }
        events.push(SourceEvent::Upsert(Object::Ingress(
            IngressKind::Ingress,
            Box::new(ingress),
        )));
    }
    let mut world = World::new(support::manifests::INGRESS_CLASS);
    world.apply(events);
    let mut translator = Translator::new(config());
    let resources = translator.apply(&world, &Translator::everything(&world));
    let routes: std::collections::BTreeSet<&str> = resources
        .iter()
        .filter(|update| update.type_url.short() == "RDS")
        .map(|update| update.name.as_str())
        .collect();
    for ingress in &valid {
        for host in ingress.spec.rules.iter().flat_map(|rule| &rule.hosts) {
            let host = host.to_ascii_lowercase();
            prop_assert!(
                routes.iter().any(|name| name.ends_with(&host)),
                "valid ingress {} has a route for {host}: {routes:?}",
                ingress.metadata.name
            );
        }
    }
    // Translating the same world again gives the same bytes.
    let again = Translator::new(config()).apply(&world, &Translator::everything(&world));
    prop_assert_eq!(resources.len(), again.len());
    for (a, b) in resources.iter().zip(&again) {
        prop_assert_eq!(
            a.resource.as_ref().map(|r| r.version.clone()),
            b.resource.as_ref().map(|r| r.version.clone())
        );
    }
    Ok(())
}

#[test]
fn translator_never_panics() {
    fuzz("translator", |runner| {
        let ingress = prop_oneof![worlds::arbitrary_ingress(1), worlds::arbitrary_ingress(10)];
        let cases = proptest::collection::vec(ingress, 1..6);
        let outcome = runner.run(&cases, |ingresses| translate(&ingresses));
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    });
}
