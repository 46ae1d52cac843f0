//! Generated worlds for the corpus check and the fuzz targets.
//!
//! [`feature_world`] makes a valid world of any size that mixes every feature sluice serves:
//! several namespaces, external and ClusterLocal rules, splits over up to three backends (0%
//! ones too), path prefixes, header matches, appended headers, host rewrites, TLS with
//! `httpOption: Redirected`, ClusterIngresses, h2c/http2/grpc ports, ExternalName Services,
//! Endpoints and EndpointSlices, and Knative Routes with tags. The same seed gives the same
//! world.
//!
//! [`arbitrary_ingress`] is a proptest strategy for ingresses with hostile field values (control
//! characters, non-ASCII, huge or empty strings, odd percents and ports): what the validation
//! must refuse with a clear error, or the translation must turn into config Envoy accepts.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::manifests::{self, HttpPath, Ingress, Rule, Split};

/// A small deterministic generator (SplitMix64): worlds must be the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The certificates a world's TLS secrets hold: made once, they are slow to make.
pub struct Certificates(Vec<(String, String)>);

impl Certificates {
    pub fn new() -> Certificates {
        Certificates(
            (0..3)
                .map(|n| super::tls::certificate(&format!("cert-{n}.example.com")))
                .collect(),
        )
    }
}

impl Default for Certificates {
    fn default() -> Self {
        Certificates::new()
    }
}

const PORT_NAMES: [&str; 4] = ["http", "h2c", "http2", "grpc"];

/// A valid world of `ingresses` ingresses (and Routes) with their Services, endpoints and
/// secrets, as manifests; hosts are unique, so each ingress becomes Ready.
pub fn feature_world(seed: u64, ingresses: usize, certificates: &Certificates) -> Vec<Value> {
    let mut rng = Rng::new(seed);
    let mut objects = Vec::new();
    for i in 0..ingresses {
        let namespace = format!("ns-{}", i % 5);
        let ns = namespace.as_str();
        if rng.one_in(9) {
            objects.extend(route(&mut rng, i, ns));
            continue;
        }
        let backends: Vec<String> = (0..1 + rng.below(3))
            .map(|b| format!("svc-{i}-{b}"))
            .collect();
        for backend in &backends {
            objects.extend(backend_objects(&mut rng, backend, ns));
        }
        let cluster_ingress = rng.one_in(11);
        let name = format!("ing-{i}");
        let mut ingress = if cluster_ingress {
            Ingress::cluster(&name)
        } else {
            Ingress::new(ns, &name)
        };
        let external_hosts = [
            format!("ing-{i}.{ns}.example.com"),
            format!("www-{i}.{ns}.example.org"),
        ];
        let external_hosts = &external_hosts[..1 + rng.below(2) as usize];
        let host_refs: Vec<&str> = external_hosts.iter().map(String::as_str).collect();
        ingress = ingress.rule(Rule::external(&host_refs).path(paths(
            &mut rng,
            ns,
            &backends,
            &mut Vec::new(),
        )));
        if rng.one_in(3) {
            let local = [
                format!("ing-{i}.{ns}"),
                format!("ing-{i}.{ns}.svc"),
                format!("ing-{i}.{ns}.svc.cluster.local"),
            ];
            let local: Vec<&str> = local.iter().map(String::as_str).collect();
            ingress = ingress.rule(Rule::cluster_local(&local).path(paths(
                &mut rng,
                ns,
                &backends,
                &mut Vec::new(),
            )));
        }
        if rng.one_in(4) {
            let secret = format!("tls-{i}");
            let (cert, key) = rng.pick(&certificates.0);
            objects.push(manifests::tls_secret(ns, &secret, cert, key));
            ingress = ingress.tls(&host_refs, ns, &secret);
            if rng.one_in(2) {
                ingress = ingress.http_option("Redirected");
            }
        }
        let mut value = ingress.to_value();
        // Extra paths, headers and rewrites go beyond the builder's single path.
        extend_paths(&mut rng, &mut value, ns, &backends);
        objects.push(value);
    }
    objects
}

/// A Service with one port of a random name, and its endpoints (Endpoints or an
/// EndpointSlice), or an ExternalName Service.
fn backend_objects(rng: &mut Rng, name: &str, ns: &str) -> Vec<Value> {
    if rng.one_in(8) {
        return vec![json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ExternalName", "externalName": format!("{name}.backends.example.net"),
                     "ports": [{"name": "http", "port": manifests::SERVICE_PORT}]},
        })];
    }
    let port_name = *rng.pick(&PORT_NAMES);
    let port = 8000 + rng.below(1000) as u16;
    let address = format!(
        "10.{}.{}.{}",
        rng.below(256),
        rng.below(256),
        1 + rng.below(250)
    );
    let mut objects = vec![manifests::service(
        name,
        ns,
        port_name,
        manifests::SERVICE_PORT,
        port,
    )];
    if rng.one_in(2) {
        objects.push(manifests::endpoint_slice_at(
            name,
            &format!("{name}-0"),
            ns,
            port_name,
            &address,
            port,
        ));
    } else {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns},
            "subsets": [{"addresses": [{"ip": address}],
                         "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}],
        }));
    }
    objects
}

/// One path over `backends` with percents that sum to 100 (some 0%).
fn paths(rng: &mut Rng, ns: &str, backends: &[String], used: &mut Vec<String>) -> HttpPath {
    let prefix = loop {
        let prefix = match rng.below(4) {
            0 => String::new(),
            1 => "/".to_owned(),
            n => format!("/p{n}/{}", rng.below(100)),
        };
        if !used.contains(&prefix) {
            used.push(prefix.clone());
            break prefix;
        }
    };
    let mut path = if prefix.is_empty() {
        HttpPath::new()
    } else {
        HttpPath::prefix(&prefix)
    };
    if rng.one_in(4) {
        path = path.header("x-variant", &format!("v{}", rng.below(3)));
    }
    if rng.one_in(3) {
        path = path.append_header("x-served-by", "sluice corpus");
    }
    if rng.one_in(6) {
        path = path.rewrite_host(&format!(
            "rewritten-{}.{ns}.svc.cluster.local",
            rng.below(9)
        ));
    }
    let mut left = 100;
    for (index, backend) in backends.iter().enumerate() {
        let percent = if index + 1 == backends.len() {
            left
        } else {
            let p = rng.below(u64::from(left) + 1) as u32;
            left -= p;
            p
        };
        let mut split = Split::new(ns, backend, manifests::SERVICE_PORT).percent(percent);
        if rng.one_in(2) {
            split = split.append_header("Knative-Serving-Revision", backend);
        }
        path = path.split(split);
    }
    path
}

/// Up to two more paths in each rule, with distinct prefixes.
fn extend_paths(rng: &mut Rng, ingress: &mut Value, ns: &str, backends: &[String]) {
    let Some(rules) = ingress["spec"]["rules"].as_array_mut() else {
        return;
    };
    for rule in rules {
        let Some(existing) = rule["http"]["paths"].as_array_mut() else {
            continue;
        };
        let mut used: Vec<String> = existing
            .iter()
            .map(|path| path["path"].as_str().unwrap_or_default().to_owned())
            .collect();
        // "" and "/" are the same match.
        if used.iter().any(|p| p.is_empty() || p == "/") {
            used.extend([String::new(), "/".to_owned()]);
        }
        for _ in 0..rng.below(3) {
            let path = paths(rng, ns, backends, &mut used);
            let value = path.to_value();
            if value["path"]
                .as_str()
                .is_none_or(|p| p.is_empty() || p == "/")
            {
                continue;
            }
            existing.insert(0, value);
        }
    }
}

/// A Knative Route over two or three revisions (each a Service), some with tags.
fn route(rng: &mut Rng, i: usize, ns: &str) -> Vec<Value> {
    let name = format!("route-{i}");
    let revisions: Vec<String> = (1..=2 + rng.below(2))
        .map(|r| format!("{name}-{r:05}"))
        .collect();
    let mut objects = Vec::new();
    for revision in &revisions {
        objects.extend(backend_objects(rng, revision, ns));
    }
    let mut left = 100;
    let mut traffic = Vec::new();
    for (index, revision) in revisions.iter().enumerate() {
        let percent = if index + 1 == revisions.len() {
            left
        } else {
            let p = rng.below(u64::from(left) + 1) as u32;
            left -= p;
            p
        };
        let mut target = json!({"revisionName": revision, "percent": percent});
        if rng.one_in(2) {
            target["tag"] = json!(format!("t{index}"));
        }
        traffic.push(target);
    }
    let mut metadata = json!({"name": name, "namespace": ns});
    if rng.one_in(4) {
        metadata["labels"] = json!({"networking.knative.dev/visibility": "cluster-local"});
    }
    objects.push(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": metadata,
        "spec": {"traffic": traffic},
    }));
    objects
}

/// Strings a field may hold: plausible ones, and one of the hostile kinds `hostile` times in 40
/// each.
pub fn field_text(hostile: u32) -> BoxedStrategy<String> {
    prop_oneof![
        28 => "[a-z][a-z0-9-]{0,20}",
        12 => "[a-zA-Z0-9.-]{0,70}",
        hostile => Just(String::new()),
        hostile => "\\PC{0,30}",
        hostile => "[\\x00-\\x1f\\x7f:*/ ]{1,5}",
        hostile => "[a-z]{1,3}[\r\n\0][a-z]{1,3}",
        hostile => "[a-z]{300,400}",
    ]
    .boxed()
}

/// Hosts: DNS names, and now and then anything else.
pub fn host(hostile: u32) -> BoxedStrategy<String> {
    prop_oneof![
        40 => "[a-z][a-z0-9]{0,10}(\\.[a-z][a-z0-9-]{0,10}[a-z0-9]){1,3}",
        hostile => "[a-z]{64}\\.example\\.com",
        hostile => "([a-z]{60}\\.){4}com",
        hostile => field_text(hostile),
    ]
    .boxed()
}

fn header_map(hostile: u32) -> BoxedStrategy<Value> {
    proptest::collection::btree_map(
        prop_oneof![40 => "[A-Za-z][A-Za-z0-9-]{0,15}", hostile => field_text(hostile)],
        field_text(hostile),
        0..3,
    )
    .prop_map(|map| json!(map))
    .boxed()
}

fn split(hostile: u32) -> BoxedStrategy<Value> {
    (
        prop_oneof![
            20 => Just("svc-a".to_owned()),
            20 => Just("svc-b".to_owned()),
            hostile => field_text(hostile),
        ],
        prop_oneof![
            30 => Just(json!(80)),
            10 => Just(json!("http")),
            hostile => any::<i32>().prop_map(|p| json!(p)),
            hostile => field_text(hostile).prop_map(|p| json!(p)),
        ],
        prop_oneof![
            40 => (0u32..=100).prop_map(Some),
            hostile => Just(None),
            hostile => any::<u32>().prop_map(Some),
        ],
        header_map(hostile),
        prop_oneof![40 => Just(None), hostile => field_text(hostile).prop_map(Some)],
    )
        .prop_map(|(service, port, percent, headers, namespace)| {
            let mut split = json!({"serviceName": service, "servicePort": port,
                                   "appendHeaders": headers});
            if let Some(percent) = percent {
                split["percent"] = json!(percent);
            }
            if let Some(namespace) = namespace {
                split["serviceNamespace"] = json!(namespace);
            }
            split
        })
        .boxed()
}

/// Makes the percents of `splits` sum to 100, keeping their proportions roughly.
fn balance(splits: &mut [Value]) {
    let mut left = 100u64;
    let count = splits.len();
    for (index, split) in splits.iter_mut().enumerate() {
        let asked = split["percent"].as_u64().unwrap_or(0);
        let percent = if index + 1 == count {
            left
        } else {
            asked.min(left)
        };
        left -= percent;
        split["percent"] = json!(percent);
    }
}

fn path(hostile: u32) -> BoxedStrategy<Value> {
    (
        prop_oneof![
            20 => Just(String::new()),
            20 => "/[a-z0-9/._-]{0,20}",
            hostile => field_text(hostile),
        ],
        proptest::collection::btree_map(
            prop_oneof![40 => "[a-z][a-z0-9-]{0,10}", hostile => field_text(hostile)],
            field_text(hostile),
            0..2,
        ),
        header_map(hostile),
        prop_oneof![30 => Just(String::new()), 10 => host(hostile), hostile => field_text(hostile)],
        proptest::collection::vec(split(hostile), 1..4),
        prop_oneof![40 => Just(true), hostile => Just(false)],
    )
        .prop_map(|(path, matches, headers, rewrite, mut splits, balanced)| {
            if balanced {
                balance(&mut splits);
            }
            let matches: serde_json::Map<String, Value> = matches
                .into_iter()
                .map(|(name, exact)| (name, json!({"exact": exact})))
                .collect();
            json!({"path": path, "headers": matches, "appendHeaders": headers,
                   "rewriteHost": rewrite, "splits": splits})
        })
        .boxed()
}

fn rule(hostile: u32) -> BoxedStrategy<Value> {
    (
        proptest::collection::vec(host(hostile), 1..4),
        prop_oneof![
            Just(None),
            Just(Some("ExternalIP")),
            Just(Some("ClusterLocal"))
        ],
        proptest::collection::vec(path(hostile), 1..3),
    )
        .prop_map(|(hosts, visibility, paths)| {
            let mut rule = json!({"hosts": hosts, "http": {"paths": paths}});
            if let Some(visibility) = visibility {
                rule["visibility"] = json!(visibility);
            }
            rule
        })
        .boxed()
}

/// An `Ingress` (namespace `fuzz`, owned by sluice) with arbitrary fields, each hostile (control
/// characters, non-ASCII, huge or empty strings, odd percents and ports, missing parts) about
/// `hostile` times in 40; its plausible backends are `svc-a` and `svc-b`.
pub fn arbitrary_ingress(hostile: u32) -> BoxedStrategy<Value> {
    (
        "[a-z][a-z0-9-]{0,20}",
        prop_oneof![
            40 => proptest::collection::vec(rule(hostile), 1..3),
            hostile => Just(Vec::new()),
        ],
        proptest::collection::vec(
            (proptest::collection::vec(host(hostile), 0..3), "[a-z]{0,8}"),
            0..2,
        ),
        prop_oneof![Just(None), Just(Some("Enabled")), Just(Some("Redirected"))],
    )
        .prop_map(|(name, rules, tls, http_option)| {
            let tls: Vec<Value> = tls
                .into_iter()
                .map(|(hosts, secret)| json!({"hosts": hosts, "secretName": secret}))
                .collect();
            let mut spec = json!({"rules": rules, "tls": tls});
            if let Some(option) = http_option {
                spec["httpOption"] = json!(option);
            }
            json!({
                "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": "fuzz",
                    "annotations": {manifests::CLASS_ANNOTATION: manifests::INGRESS_CLASS}},
                "spec": spec,
            })
        })
        .boxed()
}

/// The Services (and endpoints) [`arbitrary_ingress`]'s plausible backends name.
pub fn fuzz_backends() -> Vec<Value> {
    ["svc-a", "svc-b"]
        .into_iter()
        .flat_map(|name| {
            [
                manifests::service(name, "fuzz", "http", manifests::SERVICE_PORT, 8080),
                manifests::endpoints(name, "fuzz", "http", &[8080]),
            ]
        })
        .collect()
}

/// `count` values of `strategy`, the same on every run for the same `seed`.
pub fn sample<S: Strategy>(strategy: S, seed: u64, count: usize) -> Vec<S::Value> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    (0..count)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("the strategy makes a value")
                .current()
        })
        .collect()
}
