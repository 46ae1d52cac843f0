//! Knative Routes served without Knative Serving, in file mode, through a real Envoy in both
//! xDS modes: a Route's hosts and split, its revision headers, tag hosts and tag-header
//! routing, `sluice rollout` under traffic, an invalid Route's last good version, and
//! `configurationName` resolution.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use support::client;
use support::manifests;
use support::sluice::run_cli;
use support::{Backend, ManifestDir, Stack, poll_until};

const NS: &str = "routes";
const CONVERGE: Duration = Duration::from_secs(20);
/// Requests sent to measure a split.
const SAMPLES: usize = 200;

/// Revision backends, each a Service named after its revision (port 80, `http`).
struct Revisions {
    backends: Vec<Backend>,
}

impl Revisions {
    async fn start(names: &[&str]) -> Revisions {
        let mut backends = Vec::new();
        for name in names {
            backends.push(Backend::start(name).await);
        }
        Revisions { backends }
    }

    /// The Services and Endpoints of every revision, as one YAML text.
    fn services(&self) -> String {
        self.backends
            .iter()
            .map(|backend| manifests::service_for(backend.name(), NS, backend.port(), "http"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    fn requests(&self, name: &str) -> usize {
        self.backends
            .iter()
            .find(|backend| backend.name() == name)
            .map(Backend::requests)
            .unwrap_or_else(|| panic!("no revision {name}"))
    }
}

/// A `serving.knative.dev/v1` Route in [`NS`], its traffic given as a YAML flow list.
fn route(name: &str, traffic: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  traffic: {traffic}\n"
    )
}

/// `sluice get route -A -o json`.
async fn routes(stack: &Stack) -> Value {
    let admin = stack.sluice.admin_addr().to_string();
    let output = run_cli(&["get", "route", "-A", "-o", "json", "--admin-addr", &admin]).await;
    assert!(output.success, "get route failed: {output:?}");
    output.json()
}

/// The condition `kind` of Route `name`.
async fn route_condition(stack: &Stack, name: &str, kind: &str) -> Option<Value> {
    let all = routes(stack).await;
    let route = all
        .as_array()?
        .iter()
        .find(|r| r["namespace"] == NS && r["name"] == name)?;
    route["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// Waits until Route `name`'s condition `kind` has `status` (and `reason`, if given).
async fn wait_route(
    stack: &Stack,
    name: &str,
    kind: &str,
    status: &str,
    reason: Option<&str>,
) -> Value {
    let found = poll_until(CONVERGE, async || {
        let condition = route_condition(stack, name, kind).await?;
        let matches =
            condition["status"] == status && reason.is_none_or(|r| condition["reason"] == r);
        matches.then_some(condition)
    })
    .await;
    match found {
        Some(condition) => condition,
        None => panic!(
            "Route {NS}/{name}: no {kind}={status} ({reason:?}) within {CONVERGE:?}; routes: {:#}",
            routes(stack).await
        ),
    }
}

/// Sends [`SAMPLES`] requests for `host` to `addr` (with `headers`); counts who answered.
async fn sample(addr: SocketAddr, host: &str, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut answered = BTreeMap::new();
    for _ in 0..SAMPLES {
        let response = client::get(addr, host, "/", headers)
            .await
            .unwrap_or_else(|e| panic!("GET {host}: {e}"));
        assert_eq!(response.status, 200, "GET {host}: {response:?}");
        let backend = response.backend().unwrap_or("none").to_owned();
        *answered.entry(backend).or_default() += 1;
    }
    answered
}

/// Asserts that `share` of the samples (0..1) went to `backend`, within `tolerance`.
fn assert_share(answered: &BTreeMap<String, usize>, backend: &str, share: f64, tolerance: f64) {
    let got = answered.get(backend).copied().unwrap_or(0) as f64 / SAMPLES as f64;
    assert!(
        (got - share).abs() <= tolerance,
        "{backend} got {got:.2} of the requests, want {share:.2} ± {tolerance}: {answered:?}"
    );
}

async fn hosts_split_and_revision_headers(delta: bool) {
    let revisions = Revisions::start(&["hello-00001", "hello-00002", "hello-00003"]).await;
    let dir = ManifestDir::new();
    dir.write("revisions.yaml", &revisions.services());
    dir.write(
        "route.yaml",
        &route(
            "hello",
            "[{revisionName: hello-00001, percent: 70}, {tag: green, revisionName: hello-00002, percent: 30}, {tag: zero, revisionName: hello-00003, percent: 0}]",
        ),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_route(&stack, "hello", "Ready", "True", None).await;

    let external = stack.http_addr();
    let before = revisions.requests("hello-00003");
    let answered = sample(external, "hello.routes.example.com", &[]).await;
    assert_share(&answered, "hello-00001", 0.7, 0.15);
    assert_share(&answered, "hello-00002", 0.3, 0.15);
    assert_eq!(
        revisions.requests("hello-00003"),
        before,
        "a 0% target gets nothing: {answered:?}"
    );

    for (host, revision) in [
        ("green-hello.routes.example.com", "hello-00002"),
        ("zero-hello.routes.example.com", "hello-00003"),
    ] {
        let response = stack.get(host, "/headers").await;
        assert_eq!(response.backend(), Some(revision), "{host}: {response:?}");
        assert_eq!(response.seen_header("knative-serving-revision"), [revision]);
        assert_eq!(response.seen_header("knative-serving-namespace"), [NS]);
    }

    for host in [
        "hello.routes",
        "hello.routes.svc",
        "hello.routes.svc.cluster.local",
        "green-hello.routes.svc.cluster.local",
    ] {
        let internal = stack.get_internal(host, "/").await;
        assert_eq!(internal.status, 200, "{host} on the internal listener");
        let public = stack.get(host, "/").await;
        assert_eq!(
            public.status, 404,
            "{host} is cluster-local: not on the external listener"
        );
    }
    let all = routes(&stack).await;
    let hello = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "hello")
        .unwrap();
    assert_eq!(hello["url"], "http://hello.routes.example.com");
    assert_eq!(hello["addressUrl"], "http://hello.routes.svc.cluster.local");
    let traffic: Vec<(String, i64)> = hello["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap().to_owned(),
                t["percent"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        traffic,
        [
            ("hello-00001".to_owned(), 70),
            ("hello-00002".to_owned(), 30),
            ("hello-00003".to_owned(), 0)
        ]
    );
    assert_eq!(
        hello["traffic"][1]["url"],
        "http://green-hello.routes.example.com"
    );

    let ingresses = stack.sluice.ingresses().await;
    let ingress = ingresses
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["namespace"] == NS && i["name"] == "hello")
        .unwrap_or_else(|| panic!("the Route's Ingress is listed: {ingresses:#}"));
    assert_eq!(ingress["owner"], "Route/hello", "{ingress:#}");
    assert_eq!(ingress["labels"]["serving.knative.dev/route"], "hello");
    let admin = stack.sluice.admin_addr().to_string();
    let table = run_cli(&["get", "ingress", "-n", NS, "--admin-addr", &admin]).await;
    assert!(
        table.stdout.lines().next().unwrap().ends_with("OWNER")
            && table.stdout.contains("route/hello"),
        "{}",
        table.stdout
    );
    let table = run_cli(&["get", "route", "-n", NS, "--admin-addr", &admin]).await;
    assert!(
        table.stdout.contains(
            "70% -> hello-00001, 30% -> hello-00002 #green, 0% -> hello-00003 #zero   True"
        ),
        "{}",
        table.stdout
    );
}

async fn tag_header_routing(delta: bool) {
    let revisions = Revisions::start(&["hello-00001", "hello-00002"]).await;
    let dir = ManifestDir::new();
    dir.write("revisions.yaml", &revisions.services());
    dir.write(
        "route.yaml",
        &route(
            "hello",
            "[{revisionName: hello-00001, percent: 100}, {tag: candidate, revisionName: hello-00002, percent: 0}]",
        ),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_route(&stack, "hello", "Ready", "True", None).await;
    let plain = stack
        .get_with(
            "hello.routes.example.com",
            "/",
            &[("Knative-Serving-Tag", "candidate")],
        )
        .await;
    assert_eq!(
        plain.backend(),
        Some("hello-00001"),
        "without the feature the tag header routes nothing"
    );

    dir.write(
        "features.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-features, namespace: knative-serving}\ndata:\n  tag-header-based-routing: enabled\n",
    );
    stack
        .get_until(
            stack.http_addr(),
            "hello.routes.example.com",
            "/headers",
            CONVERGE,
            |r| r.json().get("knative-serving-default-route").is_some(),
        )
        .await;
    wait_route(&stack, "hello", "Ready", "True", None).await;
    let answered = sample(
        stack.http_addr(),
        "hello.routes.example.com",
        &[("Knative-Serving-Tag", "candidate")],
    )
    .await;
    assert_eq!(
        answered,
        BTreeMap::from([("hello-00002".to_owned(), SAMPLES)])
    );
    let default = stack.get("hello.routes.example.com", "/headers").await;
    assert_eq!(default.backend(), Some("hello-00001"));
    assert_eq!(
        default.seen_header("knative-serving-default-route"),
        ["true"]
    );
    let tagged = stack
        .get("candidate-hello.routes.example.com", "/headers")
        .await;
    assert_eq!(tagged.backend(), Some("hello-00002"));
    assert_eq!(tagged.seen_header("knative-serving-tag"), ["candidate"]);
}

/// The manifest `sluice rollout` rewrites: other documents and comments around the Route.
const ROLLOUT_FILE: &str = "\
# The hello app: two revisions behind one Route.
apiVersion: serving.knative.dev/v1
kind: Route
metadata:
  name: hello   # blue/green
  namespace: routes
spec:
  traffic:
  - tag: blue
    revisionName: hello-00001
    percent: 100   # all of it, for now
  - tag: green
    revisionName: hello-00002
    percent: 0
---
# Another Route in the same file is left alone.
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: other, namespace: routes}
spec: {traffic: [{revisionName: hello-00001, percent: 100}]}
";

async fn rollout_under_traffic(delta: bool) {
    let revisions = Revisions::start(&["hello-00001", "hello-00002"]).await;
    let dir = ManifestDir::new();
    dir.write("revisions.yaml", &revisions.services());
    dir.write("hello.yaml", ROLLOUT_FILE);
    let stack = Stack::start(dir.path(), delta).await;
    wait_route(&stack, "hello", "Ready", "True", None).await;
    let admin = stack.sluice.admin_addr().to_string();
    let rollout = |shares: &[&str]| {
        let mut args = vec!["rollout", "hello", "-n", NS, "--admin-addr", &admin];
        for share in shares {
            args.extend(["-p", share]);
        }
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };

    let mut dry_run = rollout(&["hello-00001=90%", "hello-00002=10%"]);
    dry_run.push("--dry-run".to_owned());
    let dry = run_cli(&dry_run.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(dry.success, "{dry:?}");
    assert!(
        dry.stdout.contains("90% -> hello-00001 #blue")
            && dry.stdout.contains("10% -> hello-00002 #green"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        dir.read("hello.yaml"),
        ROLLOUT_FILE,
        "a dry run changes nothing"
    );

    for bad in [
        &["hello-00001=100%", "hello-00002=10%"][..],
        &["purple=100"][..],
    ] {
        let args = rollout(bad);
        let output = run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert!(!output.success, "{bad:?} must fail: {output:?}");
        assert!(
            output.stderr.contains("nothing was changed"),
            "{bad:?}: {}",
            output.stderr
        );
        assert_eq!(
            dir.read("hello.yaml"),
            ROLLOUT_FILE,
            "{bad:?} changed the file"
        );
    }

    let traffic = kit_loop(stack.http_addr(), "hello.routes.example.com");
    let args = rollout(&["hello-00001=90%", "hello-00002=10%"]);
    let output = run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (sent, failures) = traffic.finish().await;
    assert!(output.success, "rollout failed: {output:?}");
    assert!(
        output
            .stdout
            .contains("90% -> hello-00001 #blue, 10% -> hello-00002 #green   True"),
        "{}",
        output.stdout
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 0);

    let expected = ROLLOUT_FILE.replace(
        "  - tag: blue\n    revisionName: hello-00001\n    percent: 100   # all of it, for now\n  - tag: green\n    revisionName: hello-00002\n    percent: 0\n",
        "  - tag: blue\n    revisionName: hello-00001\n    percent: 90\n  - tag: green\n    revisionName: hello-00002\n    percent: 10\n",
    );
    assert_eq!(dir.read("hello.yaml"), expected);
    let answered = sample(stack.http_addr(), "hello.routes.example.com", &[]).await;
    assert_share(&answered, "hello-00001", 0.9, 0.11);
    assert_share(&answered, "hello-00002", 0.1, 0.11);
}

/// Requests looped at `host` in the background, each required to answer 200 from a revision.
struct Loop {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

fn kit_loop(addr: SocketAddr, host: &str) -> Loop {
    let host = host.to_owned();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let (mut sent, mut failures) = (0, Vec::new());
        while !*stopped.borrow_and_update() && sent < 100_000 {
            sent += 1;
            match client::get(addr, &host, "/", &[]).await {
                Ok(r)
                    if r.status == 200 && r.backend().is_some_and(|b| b.starts_with("hello-")) => {}
                Ok(r) => failures.push(format!("{} {:?}", r.status, r.body)),
                Err(e) => failures.push(e),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sent, failures)
    });
    Loop { stop, task }
}

impl Loop {
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.send_replace(true);
        self.task.await.expect("the request loop panicked")
    }
}

async fn invalid_route_keeps_last_good(delta: bool) {
    let revisions = Revisions::start(&["hello-00001", "hello-00002"]).await;
    let dir = ManifestDir::new();
    dir.write("revisions.yaml", &revisions.services());
    dir.write(
        "route.yaml",
        &route("hello", "[{revisionName: hello-00001, percent: 100}]"),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_route(&stack, "hello", "Ready", "True", None).await;

    dir.write(
        "route.yaml",
        &route(
            "hello",
            "[{revisionName: hello-00001, percent: 100}, {revisionName: hello-00002, percent: 10}]",
        ),
    );
    let condition = wait_route(
        &stack,
        "hello",
        "AllTrafficAssigned",
        "False",
        Some("InvalidRoute"),
    )
    .await;
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Traffic targets sum to 110, want 100")
            && message.contains("still served"),
        "{message}"
    );
    wait_route(&stack, "hello", "Ready", "False", Some("InvalidRoute")).await;
    let answered = sample(stack.http_addr(), "hello.routes.example.com", &[]).await;
    assert_eq!(
        answered,
        BTreeMap::from([("hello-00001".to_owned(), SAMPLES)]),
        "the last good version is served"
    );

    dir.write(
        "route.yaml",
        &route("hello", "[{revisionName: hello-00002, percent: 100}]"),
    );
    wait_route(&stack, "hello", "Ready", "True", None).await;
    stack
        .get_until(
            stack.http_addr(),
            "hello.routes.example.com",
            "/",
            CONVERGE,
            |r| r.backend() == Some("hello-00002"),
        )
        .await;
}

async fn configuration_resolution(delta: bool) {
    let revisions = Revisions::start(&["hello-00001", "hello-00002", "other-00001"]).await;
    let dir = ManifestDir::new();
    dir.write("revisions.yaml", &revisions.services());
    // The older v1alpha1 shape: a target's `name` is its tag.
    dir.write(
        "other.yaml",
        &route(
            "other",
            "[{name: current, revisionName: other-00001, percent: 100}]",
        )
        .replace("serving.knative.dev/v1\n", "serving.knative.dev/v1alpha1\n"),
    );
    dir.write(
        "route.yaml",
        &route("hello", "[{configurationName: hello, percent: 100}]"),
    );
    let stack = Stack::start(dir.path(), delta).await;
    let condition = wait_route(
        &stack,
        "hello",
        "AllTrafficAssigned",
        "False",
        Some("ConfigurationMissing"),
    )
    .await;
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Configuration \"hello\""),
        "{condition}"
    );
    wait_route(
        &stack,
        "hello",
        "Ready",
        "False",
        Some("ConfigurationMissing"),
    )
    .await;
    wait_route(&stack, "other", "Ready", "True", None).await;
    let other = stack.get("other.routes.example.com", "/").await;
    assert_eq!(
        other.backend(),
        Some("other-00001"),
        "other Routes are unaffected"
    );
    let tagged = stack.get("current-other.routes.example.com", "/").await;
    assert_eq!(tagged.backend(), Some("other-00001"));
    assert_eq!(stack.get("hello.routes.example.com", "/").await.status, 404);

    let configuration = |revision: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata: {{name: hello, namespace: {NS}}}\nstatus: {{latestReadyRevisionName: {revision}}}\n"
        )
    };
    dir.write("configuration.yaml", &configuration("hello-00001"));
    wait_route(&stack, "hello", "Ready", "True", None).await;
    let response = stack.get("hello.routes.example.com", "/").await;
    assert_eq!(response.backend(), Some("hello-00001"));

    dir.write("configuration.yaml", &configuration("hello-00002"));
    stack
        .get_until(
            stack.http_addr(),
            "hello.routes.example.com",
            "/",
            CONVERGE,
            |r| r.backend() == Some("hello-00002"),
        )
        .await;
    let all = routes(&stack).await;
    let hello = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "hello")
        .unwrap()
        .clone();
    assert_eq!(hello["traffic"][0]["revisionName"], "hello-00002");
    assert_eq!(hello["traffic"][0]["latestRevision"], true);
}

in_both_modes!(
    hosts_split_and_revision_headers,
    tag_header_routing,
    rollout_under_traffic,
    invalid_route_keeps_last_good,
    configuration_resolution,
);
