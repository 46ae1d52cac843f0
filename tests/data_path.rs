//! Every translation behaviour, proven through a real Envoy with real requests, in both xDS
//! modes: each behaviour is an `async fn(delta: bool)`, and `in_both_modes!` at the bottom
//! instantiates it as `sotw::<name>` and `delta::<name>`.
//!
//! Each test starts its own sluice + Envoy on free loopback ports (a [`Stack`]) with in-process
//! backends; every wait and loop is bounded. On a failed assertion the stack's Drop prints the
//! Envoy and sluice log tails.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use support::client::{self, Response};
use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::{
    Backend, Envoy, GrpcBackend, ManifestDir, ServingStatus, Sluice, Stack, grpc_health_check,
    poll_until, secs, wait_for_async, within,
};

const NS: &str = "default";
/// How long an ingress may take to become `Ready` (or a change to show) after a file write.
const CONVERGE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A split to Service `NS/service` port [`SERVICE_PORT`].
fn to(service: &str) -> Split {
    Split::new(NS, service, SERVICE_PORT)
}

/// Writes Service `NS/name` (port 80 named `http`) with Endpoints at the backend's port.
fn write_service(dir: &ManifestDir, name: &str, backend_port: u16) {
    dir.write(
        &format!("svc-{name}.yaml"),
        &manifests::service_for(name, NS, backend_port, "http"),
    );
}

/// Writes (or rewrites) the ingress into `ing-<name>.yaml`.
fn write_ingress(dir: &ManifestDir, ingress: &Ingress) {
    dir.write(&format!("ing-{}.yaml", ingress.name), &ingress.to_yaml());
}

/// One line saying what came back: status, which backend, headers and body.
fn describe(resp: &Response) -> String {
    format!(
        "status {} from backend {:?}; headers {:?}; body {:?}",
        resp.status,
        resp.backend(),
        resp.headers,
        resp.body
    )
}

/// The request header values a backend's `/headers` saw for `name` (lowercase), without
/// panicking on a body that is not JSON (that gives an empty list).
fn seen(resp: &Response, name: &str) -> Vec<String> {
    serde_json::from_str::<Value>(&resp.body)
        .ok()
        .and_then(|json| json.get(name).cloned())
        .and_then(|values| values.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

async fn wait_ready(stack: &Stack, name: &str) -> Value {
    stack
        .sluice
        .wait_ingress_ready(NS, name, "True", CONVERGE)
        .await
}

/// `GET` on the external listener, asserting a 200 from backend `backend`.
async fn expect_from(
    stack: &Stack,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    backend: &str,
) -> Response {
    let resp = stack.get_with(host, path, headers).await;
    assert!(
        resp.status == 200 && resp.backend() == Some(backend),
        "GET http://{host}{path} with headers {headers:?} (external listener): expected 200 from \
         backend `{backend}`, got {}",
        describe(&resp)
    );
    resp
}

/// `GET` on the cluster-local listener, asserting a 200 from backend `backend`.
async fn expect_internal_from(stack: &Stack, host: &str, path: &str, backend: &str) -> Response {
    let resp = stack.get_internal(host, path).await;
    assert!(
        resp.status == 200 && resp.backend() == Some(backend),
        "GET http://{host}{path} (internal listener): expected 200 from backend `{backend}`, \
         got {}",
        describe(&resp)
    );
    resp
}

/// Polls `GET host path` on the external listener until `accept` likes the response; panics
/// with `what` and the last response after [`CONVERGE`].
async fn wait_until(
    stack: &Stack,
    host: &str,
    path: &str,
    what: &str,
    accept: impl Fn(&Response) -> bool,
) -> Response {
    let mut last = String::from("no response yet");
    let found = poll_until(CONVERGE, async || {
        match client::get(stack.http_addr(), host, path, &[]).await {
            Ok(resp) if accept(&resp) => Some(resp),
            Ok(resp) => {
                last = describe(&resp);
                None
            }
            Err(e) => {
                last = e;
                None
            }
        }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!("GET http://{host}{path}: {what} did not happen within {CONVERGE:?}; last: {last}")
    })
}

/// Sends `n` `GET host path` to `addr`, `concurrency` at a time; returns how many 200s each
/// backend gave, and a description of every other outcome.
async fn spread(
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    concurrency: usize,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let outcomes: Vec<Result<Response, String>> = futures::stream::iter(0..n)
        .map(|_| client::get(addr, host, path, &[]))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut counts = BTreeMap::new();
    let mut others = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(resp) if resp.status == 200 => {
                let name = resp.backend().unwrap_or("<no x-backend>").to_string();
                *counts.entry(name).or_insert(0) += 1;
            }
            Ok(resp) => others.push(describe(&resp)),
            Err(e) => others.push(e),
        }
    }
    (counts, others)
}

/// A Service `NS/name` with one port `port_name` (80 → `backend_port`), with `appProtocol`
/// exactly as given (none if `None`), plus its Endpoints.
fn service_with_protocol(
    name: &str,
    port_name: &str,
    app_protocol: Option<&str>,
    backend_port: u16,
) -> String {
    let mut service = manifests::service(name, NS, port_name, SERVICE_PORT, backend_port);
    let port = service["spec"]["ports"][0]
        .as_object_mut()
        .expect("the service has one port");
    match app_protocol {
        Some(protocol) => {
            port.insert("appProtocol".into(), json!(protocol));
        }
        None => {
            port.remove("appProtocol");
        }
    }
    manifests::documents(&[
        service,
        manifests::endpoints(name, NS, port_name, &[backend_port]),
    ])
}

/// The listing entry of ingress `NS/name` from `sluice get ingress -o json`.
async fn listed(stack: &Stack, name: &str) -> Option<Value> {
    let all = stack.sluice.ingresses().await;
    all.as_array()?
        .iter()
        .find(|i| i["namespace"] == NS && i["name"] == name)
        .cloned()
}

fn condition<'a>(entry: &'a Value, kind: &str) -> &'a Value {
    entry["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no condition {kind} in {entry}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Host, path and header dispatch

async fn host_path_and_header_dispatch(delta: bool) {
    let names = ["root", "a", "ab", "canary", "other-host"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Backend::start(name).await);
    }
    let dir = ManifestDir::new();
    for (name, backend) in names.iter().zip(&backends) {
        write_service(&dir, name, backend.port());
    }
    // The header route comes after the catch-all of the same prefix in the manifest: sluice
    // must still try it first.
    let ingress = Ingress::new(NS, "dispatch")
        .rule(
            Rule::external(&["a.example.com"])
                .path(HttpPath::new().split(to("root")))
                .path(HttpPath::prefix("/a").split(to("a")))
                .path(HttpPath::prefix("/a/b").split(to("ab")))
                .path(
                    HttpPath::prefix("/a")
                        .header("Knative-Serving-Tag", "canary")
                        .split(to("canary")),
                ),
        )
        .rule(Rule::external(&["b.example.com"]).path(HttpPath::new().split(to("other-host"))));
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "dispatch").await;

    let host = "a.example.com";
    expect_from(&stack, host, "/", &[], "root").await;
    expect_from(&stack, host, "/elsewhere", &[], "root").await;
    expect_from(&stack, host, "/a", &[], "a").await;
    expect_from(&stack, host, "/a/x", &[], "a").await;
    expect_from(&stack, host, "/a/b", &[], "ab").await;
    expect_from(&stack, host, "/a/b/c", &[], "ab").await;
    // Header match before the catch-all of the same prefix; other values fall through.
    let canary = [("Knative-Serving-Tag", "canary")];
    expect_from(&stack, host, "/a", &canary, "canary").await;
    expect_from(&stack, host, "/a/x", &canary, "canary").await;
    expect_from(
        &stack,
        host,
        "/a",
        &[("knative-serving-tag", "canary")],
        "canary",
    )
    .await;
    expect_from(
        &stack,
        host,
        "/a",
        &[("Knative-Serving-Tag", "stable")],
        "a",
    )
    .await;
    expect_from(&stack, host, "/a", &[("Knative-Serving-Tag", "")], "a").await;
    expect_from(&stack, host, "/a", &[("X-Other", "canary")], "a").await;
    // The header route only covers its prefix.
    expect_from(&stack, host, "/", &canary, "root").await;
    // A port in the Host header selects the same host.
    expect_from(&stack, "a.example.com:8080", "/a/b", &[], "ab").await;

    // The second host goes to its own backend, whatever the path.
    expect_from(&stack, "b.example.com", "/", &[], "other-host").await;
    expect_from(&stack, "b.example.com", "/a/b", &canary, "other-host").await;

    // Unknown hosts: 404 from Envoy, no backend involved.
    let before: usize = backends.iter().map(Backend::requests).sum();
    for unknown in [
        "unknown.example.com",
        "example.com",
        "a.example.com.evil.org",
    ] {
        let resp = stack.get(unknown, "/").await;
        assert_eq!(
            resp.status,
            404,
            "GET http://{unknown}/: expected 404 for an unknown host, got {}",
            describe(&resp)
        );
        assert_eq!(resp.backend(), None, "{unknown}: {}", describe(&resp));
    }
    let after: usize = backends.iter().map(Backend::requests).sum();
    assert_eq!(before, after, "requests to unknown hosts reached a backend");
}

/// Hosts are case-insensitive (RFC 9110 §4.2.3), and Envoy's own virtual-host matching ignores
/// case; sluice lowercases the ingress's hosts, so a request's Host must match whatever its case.
async fn host_matching_ignores_case(delta: bool) {
    let backend = Backend::start("cased").await;
    let dir = ManifestDir::new();
    write_service(&dir, "cased", backend.port());
    let ingress = Ingress::new(NS, "cased")
        .rule(Rule::external(&["Cased.Example.com"]).path(HttpPath::new().split(to("cased"))))
        .rule(
            Rule::cluster_local(&["cased.default.svc.cluster.local"])
                .path(HttpPath::new().split(to("cased"))),
        );
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "cased").await;

    expect_from(&stack, "cased.example.com", "/", &[], "cased").await;
    for host in [
        "Cased.Example.com",
        "CASED.EXAMPLE.COM",
        "cased.Example.com:8080",
    ] {
        let resp = stack.get(host, "/").await;
        assert!(
            resp.status == 200 && resp.backend() == Some("cased"),
            "Host {host:?} differs from the ingress host cased.example.com only in case, so it \
             must be served like it (Envoy's own virtual-host matching ignores case; an SRDS \
             scope key taken from the raw :authority does not); expected 200 from `cased`, got {}",
            describe(&resp)
        );
    }
    let resp = stack.get_h2("CASED.example.com", "/").await;
    assert!(
        resp.status == 200 && resp.backend() == Some("cased"),
        "h2c :authority CASED.example.com must match cased.example.com; expected 200 from \
         `cased`, got {}",
        describe(&resp)
    );
    let resp = stack
        .get_internal("Cased.Default.Svc.Cluster.Local", "/")
        .await;
    assert!(
        resp.status == 200 && resp.backend() == Some("cased"),
        "internal listener, Host Cased.Default.Svc.Cluster.Local must match \
         cased.default.svc.cluster.local; expected 200 from `cased`, got {}",
        describe(&resp)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Split percentages

async fn split_percentages(delta: bool) {
    let heavy = Backend::start("heavy").await;
    let light = Backend::start("light").await;
    let zero = Backend::start("zero").await;
    let left = Backend::start("left").await;
    let right = Backend::start("right").await;
    let dir = ManifestDir::new();
    for backend in [&heavy, &light, &zero, &left, &right] {
        write_service(&dir, backend.name(), backend.port());
    }
    let ingress = Ingress::new(NS, "splits")
        .rule(
            Rule::external(&["split.example.com"]).path(
                HttpPath::new()
                    .split(to("heavy").percent(70))
                    .split(to("zero").percent(0))
                    .split(to("light").percent(30)),
            ),
        )
        .rule(
            Rule::external(&["even.example.com"]).path(
                HttpPath::new()
                    .split(to("left").percent(50))
                    .split(to("right").percent(50)),
            ),
        );
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "splits").await;

    const N: usize = 400;
    // (host, [(backend, expected percent)])
    let cases: [(&str, [(&str, usize); 2]); 2] = [
        ("split.example.com", [("heavy", 70), ("light", 30)]),
        ("even.example.com", [("left", 50), ("right", 50)]),
    ];
    for (host, expected) in cases {
        let (counts, others) = spread(stack.http_addr(), host, "/", N, 8).await;
        assert!(
            others.is_empty(),
            "{host}: {} of {N} requests were not 200s: {others:?}",
            others.len()
        );
        let total: usize = counts.values().sum();
        assert_eq!(total, N, "{host}: counts {counts:?}");
        for (name, percent) in expected {
            let got = counts.get(name).copied().unwrap_or(0);
            let got_percent = got * 100 / N;
            assert!(
                got_percent.abs_diff(percent) <= 10,
                "{host}: backend `{name}` should get {percent}% ± 10 of {N} requests, got {got} \
                 ({got_percent}%); all counts: {counts:?}"
            );
        }
        let unexpected: Vec<&String> = counts
            .keys()
            .filter(|name| !expected.iter().any(|(e, _)| e == name))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{host}: unexpected backends answered: {counts:?}"
        );
    }
    assert_eq!(
        zero.requests(),
        0,
        "the 0% split must receive no request at all"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. appendHeaders are set, not appended

async fn append_headers_are_set_not_appended(delta: bool) {
    let single = Backend::start("single").await;
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let dir = ManifestDir::new();
    for backend in [&single, &first, &second] {
        write_service(&dir, backend.name(), backend.port());
    }
    let ingress = Ingress::new(NS, "headers")
        .rule(
            Rule::external(&["one.example.com"]).path(
                HttpPath::new()
                    .append_header("X-Path-Header", "from-path")
                    .split(to("single").append_header("X-Split-Header", "from-split")),
            ),
        )
        .rule(
            Rule::external(&["two.example.com"]).path(
                HttpPath::new()
                    .append_header("X-Path-Header", "from-path-2")
                    .split(
                        to("first")
                            .percent(50)
                            .append_header("X-Split-Header", "first-split"),
                    )
                    .split(
                        to("second")
                            .percent(50)
                            .append_header("X-Split-Header", "second-split"),
                    ),
            ),
        );
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "headers").await;

    let forged: [&[(&str, &str)]; 3] = [
        &[],
        &[("X-Path-Header", "client"), ("X-Split-Header", "client")],
        &[
            ("x-path-header", "client-1"),
            ("x-path-header", "client-2"),
            ("x-split-header", "client-1"),
            ("x-split-header", "client-2"),
            ("x-sluice-listener", "internal"),
        ],
    ];
    for client_headers in forged {
        let resp = expect_from(
            &stack,
            "one.example.com",
            "/headers",
            client_headers,
            "single",
        )
        .await;
        assert_eq!(
            (seen(&resp, "x-path-header"), seen(&resp, "x-split-header")),
            (
                vec!["from-path".to_string()],
                vec!["from-split".to_string()]
            ),
            "one.example.com with client headers {client_headers:?}: the backend must see exactly \
             the configured values; it saw {}",
            resp.body
        );
        assert!(
            seen(&resp, "x-sluice-listener").is_empty(),
            "the listener marker must not reach backends; saw {}",
            resp.body
        );

        // Each split sets its own value, on the requests it receives.
        let mut answered = BTreeSet::new();
        for _ in 0..40 {
            let resp = stack
                .get_with("two.example.com", "/headers", client_headers)
                .await;
            assert_eq!(resp.status, 200, "two.example.com: {}", describe(&resp));
            let backend = resp.backend().unwrap_or_default().to_string();
            let expected_split = match backend.as_str() {
                "first" => "first-split",
                "second" => "second-split",
                _ => panic!("two.example.com answered by an unexpected backend: {resp:?}"),
            };
            assert_eq!(
                (seen(&resp, "x-path-header"), seen(&resp, "x-split-header")),
                (
                    vec!["from-path-2".to_string()],
                    vec![expected_split.to_string()]
                ),
                "two.example.com via `{backend}` with client headers {client_headers:?}: the \
                 backend must see exactly the configured values; it saw {}",
                resp.body
            );
            answered.insert(backend);
        }
        assert_eq!(
            answered.len(),
            2,
            "40 requests on a 50/50 split should reach both backends; reached {answered:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. rewriteHost

async fn rewrite_host(delta: bool) {
    let backend = Backend::start("rewritten").await;
    let plain = Backend::start("plain").await;
    let dir = ManifestDir::new();
    write_service(&dir, "rewritten", backend.port());
    write_service(&dir, "plain", plain.port());
    let ingress = Ingress::new(NS, "rewrite").rule(
        Rule::external(&["outside.example.com"])
            .path(
                HttpPath::prefix("/rewrite")
                    .rewrite_host("inside.default.svc.cluster.local")
                    .split(to("rewritten")),
            )
            .path(HttpPath::new().split(to("plain"))),
    );
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "rewrite").await;

    let resp = expect_from(
        &stack,
        "outside.example.com",
        "/rewrite/headers",
        &[],
        "rewritten",
    )
    .await;
    assert_eq!(
        (seen(&resp, "host"), seen(&resp, ":authority")),
        (
            vec!["inside.default.svc.cluster.local".to_string()],
            vec!["inside.default.svc.cluster.local".to_string()]
        ),
        "rewriteHost: the backend must see the rewritten Host; it saw {}",
        resp.body
    );
    // Over HTTP/2 downstream too (the client sends :authority).
    let h2 = stack
        .get_h2("outside.example.com", "/rewrite/headers")
        .await;
    assert_eq!(h2.status, 200, "h2c: {}", describe(&h2));
    assert_eq!(
        seen(&h2, "host"),
        ["inside.default.svc.cluster.local"],
        "rewriteHost over h2c downstream; backend saw {}",
        h2.body
    );
    // Paths without rewriteHost keep the client's host.
    let resp = expect_from(&stack, "outside.example.com", "/headers", &[], "plain").await;
    assert_eq!(
        seen(&resp, "host"),
        ["outside.example.com"],
        "no rewriteHost: backend saw {}",
        resp.body
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Visibility

async fn visibility(delta: bool) {
    let private = Backend::start("private").await;
    let public = Backend::start("public").await;
    let dir = ManifestDir::new();
    write_service(&dir, "private", private.port());
    write_service(&dir, "public", public.port());
    let ingress = Ingress::new(NS, "visibility")
        .rule(
            Rule::cluster_local(&["private.default.svc.cluster.local", "private.default.svc"])
                .path(HttpPath::new().split(to("private"))),
        )
        .rule(Rule::external(&["public.example.com"]).path(HttpPath::new().split(to("public"))));
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "visibility").await;

    for host in ["private.default.svc.cluster.local", "private.default.svc"] {
        expect_internal_from(&stack, host, "/", "private").await;
        let resp = stack.get(host, "/").await;
        assert_eq!(
            resp.status,
            404,
            "ClusterLocal host {host} must be 404 on the external listener; got {}",
            describe(&resp)
        );
        // The listener marker cannot be forged from outside.
        let forged = stack
            .get_with(host, "/", &[("x-sluice-listener", "internal")])
            .await;
        assert_eq!(
            forged.status,
            404,
            "ClusterLocal host {host} with a forged x-sluice-listener header must stay 404 on the \
             external listener; got {}",
            describe(&forged)
        );
    }
    assert_eq!(
        private.requests(),
        2,
        "only the internal requests reach `private`"
    );

    expect_from(&stack, "public.example.com", "/", &[], "public").await;
    expect_internal_from(&stack, "public.example.com", "/", "public").await;
    let resp = stack
        .get_internal_with(
            "public.example.com",
            "/",
            &[("x-sluice-listener", "external")],
        )
        .await;
    assert_eq!(
        (resp.status, resp.backend()),
        (200, Some("public")),
        "ExternalIP host with a forged marker on the internal listener: {}",
        describe(&resp)
    );
}

// ---------------------------------------------------------------------------------------------
// 6. No route timeout

async fn slow_backend_is_not_cut_off(delta: bool) {
    let backend = Backend::start("slow").await;
    let dir = ManifestDir::new();
    write_service(&dir, "slow", backend.port());
    write_ingress(
        &dir,
        &Ingress::new(NS, "slow")
            .rule(Rule::external(&["slow.example.com"]).path(HttpPath::new().split(to("slow")))),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "slow").await;

    let started = Instant::now();
    let resp = stack.get("slow.example.com", "/sleep/20000").await;
    let took = started.elapsed();
    assert!(
        resp.status == 200 && resp.backend() == Some("slow"),
        "a 20 s backend response must come through (no 15 s route timeout); after {took:?} got {}",
        describe(&resp)
    );
    assert!(
        took >= Duration::from_secs(20),
        "answered after {took:?}, before the backend's 20 s sleep ended: {}",
        describe(&resp)
    );
}

// ---------------------------------------------------------------------------------------------
// 7. No retries

async fn failures_are_not_retried(delta: bool) {
    let backend = Backend::start("flaky").await;
    let dir = ManifestDir::new();
    write_service(&dir, "flaky", backend.port());
    write_ingress(
        &dir,
        &Ingress::new(NS, "flaky")
            .rule(Rule::external(&["flaky.example.com"]).path(HttpPath::new().split(to("flaky")))),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "flaky").await;
    expect_from(&stack, "flaky.example.com", "/", &[], "flaky").await;

    let before = backend.requests();
    let first = stack.get("flaky.example.com", "/fail-once/token-1").await;
    assert!(
        first.status == 503 && first.backend() == Some("flaky"),
        "the backend's first answer (503) must reach the client unretried; got {}",
        describe(&first)
    );
    assert_eq!(
        backend.requests() - before,
        1,
        "Envoy must not retry the 503: the backend saw {} requests for one client request",
        backend.requests() - before
    );
    let second = stack.get("flaky.example.com", "/fail-once/token-1").await;
    assert!(
        second.status == 200 && second.backend() == Some("flaky"),
        "the second request must succeed; got {}",
        describe(&second)
    );
    assert_eq!(
        backend.requests() - before,
        2,
        "the backend must see exactly the client's two requests"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. WebSocket

async fn websocket_echo(delta: bool) {
    let backend = Backend::start("ws").await;
    let dir = ManifestDir::new();
    write_service(&dir, "ws", backend.port());
    write_ingress(
        &dir,
        &Ingress::new(NS, "ws")
            .rule(Rule::external(&["ws.example.com"]).path(HttpPath::new().split(to("ws"))))
            .rule(
                Rule::cluster_local(&["ws.default.svc.cluster.local"])
                    .path(HttpPath::new().split(to("ws"))),
            ),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "ws").await;

    let (_socket, headers) = client::websocket(stack.http_addr(), "ws.example.com", "/chat")
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade through Envoy failed: {e}"));
    assert_eq!(
        headers.get("x-backend").and_then(|v| v.to_str().ok()),
        Some("ws"),
        "the 101 must come from the backend: {headers:?}"
    );
    for text in ["hello through envoy", "second message"] {
        let echo = client::websocket_echo(stack.http_addr(), "ws.example.com", "/chat", text)
            .await
            .unwrap_or_else(|e| panic!("WebSocket echo through Envoy failed: {e}"));
        assert_eq!(echo, text, "WebSocket echo through the external listener");
    }
    let echo = client::websocket_echo(
        stack.internal_http_addr(),
        "ws.default.svc.cluster.local",
        "/chat",
        "internal",
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket echo through the internal listener failed: {e}"));
    assert_eq!(echo, "internal");
}

// ---------------------------------------------------------------------------------------------
// 9. h2c upstreams and gRPC

async fn h2c_upstreams_and_grpc(delta: bool) {
    let backend = Backend::start("proto").await;
    let grpc = GrpcBackend::start().await;
    let dir = ManifestDir::new();
    // (service, port name, appProtocol, expected upstream protocol)
    let cases = [
        ("by-name-h2c", "h2c", None, "HTTP/2"),
        ("by-name-http2", "http2", None, "HTTP/2"),
        (
            "by-app-protocol",
            "web",
            Some("kubernetes.io/h2c"),
            "HTTP/2",
        ),
        ("plain", "http", None, "HTTP/1.1"),
    ];
    let mut rule = Rule::external(&["proto.example.com"]).path(HttpPath::new().split(to("plain")));
    for (service, port_name, app_protocol, _) in cases {
        dir.write(
            &format!("svc-{service}.yaml"),
            &service_with_protocol(service, port_name, app_protocol, backend.port()),
        );
        if service != "plain" {
            // Also reached by port name rather than number.
            rule = rule.path(
                HttpPath::prefix(&format!("/{service}"))
                    .split(Split::named_port(NS, service, port_name)),
            );
        }
    }
    dir.write(
        "svc-grpc.yaml",
        &manifests::service_for("grpc", NS, grpc.port(), "grpc"),
    );
    let ingress = Ingress::new(NS, "protocols")
        .rule(rule)
        .rule(Rule::external(&["grpc.example.com"]).path(HttpPath::new().split(to("grpc"))));
    write_ingress(&dir, &ingress);
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "protocols").await;

    for (service, port_name, app_protocol, expected) in cases {
        let path = if service == "plain" {
            "/proto".to_string()
        } else {
            format!("/{service}/proto")
        };
        let resp = expect_from(&stack, "proto.example.com", &path, &[], "proto").await;
        assert_eq!(
            resp.body, expected,
            "Service port named {port_name:?} with appProtocol {app_protocol:?}: the backend \
             should be spoken to in {expected}; it reports {}",
            resp.body
        );
    }
    // Downstream HTTP/2 does not change the upstream protocol.
    let h2 = stack.get_h2("proto.example.com", "/proto").await;
    assert_eq!(
        (h2.status, h2.body.as_str()),
        (200, "HTTP/1.1"),
        "h2c client to a plain http port: {}",
        describe(&h2)
    );

    let status = within(
        secs(30),
        "gRPC health check through Envoy",
        grpc_health_check(stack.http_addr(), "grpc.example.com"),
    )
    .await
    .unwrap_or_else(|e| panic!("gRPC health check through Envoy failed: {e:?}"));
    assert_eq!(status, ServingStatus::Serving);
    assert_eq!(grpc.requests(), 1, "the gRPC backend saw the one call");
}

// ---------------------------------------------------------------------------------------------
// 10. Updates while traffic flows

/// What a request loop saw.
#[derive(Debug, Default)]
struct LoopReport {
    requests: usize,
    failures: Vec<String>,
    /// `x-config-version` values the backend received.
    versions: BTreeSet<String>,
    backends: BTreeSet<String>,
    /// Whether the loop ended because it was told to (rather than by its own bounds).
    stopped: bool,
}

/// GETs `host` alternately on `/headers` and `/extra/headers` until `stop`, at most
/// `max_requests` times and for at most `max_time`.
async fn request_loop(
    addr: SocketAddr,
    host: String,
    stop: Arc<AtomicBool>,
    max_requests: usize,
    max_time: Duration,
) -> LoopReport {
    let started = Instant::now();
    let mut report = LoopReport::default();
    for i in 0..max_requests {
        if stop.load(Ordering::SeqCst) {
            report.stopped = true;
            break;
        }
        if started.elapsed() > max_time {
            break;
        }
        let path = if i % 2 == 0 {
            "/headers"
        } else {
            "/extra/headers"
        };
        report.requests += 1;
        match client::get(addr, &host, path, &[]).await {
            Ok(resp) if resp.status == 200 => {
                report
                    .versions
                    .insert(seen(&resp, "x-config-version").join(","));
                report
                    .backends
                    .insert(resp.backend().unwrap_or_default().to_string());
            }
            Ok(resp) => report.failures.push(format!(
                "request #{i} GET {path} at {:?}: {}",
                started.elapsed(),
                describe(&resp)
            )),
            Err(e) => report.failures.push(format!(
                "request #{i} GET {path} at {:?}: {e}",
                started.elapsed()
            )),
        }
        // A steady few hundred requests a second, not a flood of TIME_WAIT sockets.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report
}

async fn updates_under_load_lose_nothing(delta: bool) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = ManifestDir::new();
    write_service(&dir, "a", a.port());
    write_service(&dir, "b", b.port());
    let host = "live.example.com";
    // Version `v` of the ingress: the root path and maybe `/extra`, each with its splits; every
    // version stamps `x-config-version: v` on both.
    type Splits = &'static [(&'static str, u32)];
    let version = |v: usize, root: Splits, extra: Option<Splits>| {
        let stamp = v.to_string();
        let path = |base: HttpPath, splits: Splits| {
            let mut path = base.append_header("X-Config-Version", &stamp);
            for (service, percent) in splits {
                path = path.split(
                    to(service)
                        .percent(*percent)
                        .append_header("X-Split", service),
                );
            }
            path
        };
        let mut rule = Rule::external(&[host]).path(path(HttpPath::new(), root));
        if let Some(extra) = extra {
            rule = rule.path(path(HttpPath::prefix("/extra"), extra));
        }
        Ingress::new(NS, "live").rule(rule)
    };
    // (root splits, /extra splits): clusters come and go between versions.
    let plan: [(Splits, Option<Splits>); 11] = [
        (&[("a", 100)], None),
        (&[("b", 100)], None),
        (&[("a", 50), ("b", 50)], None),
        (&[("a", 100)], None),
        (&[("a", 100)], Some(&[("b", 100)])),
        (&[("b", 100)], Some(&[("a", 100)])),
        (&[("a", 30), ("b", 70)], Some(&[("a", 100)])),
        (&[("a", 100)], None),
        (&[("b", 100)], None),
        (&[("b", 100)], Some(&[("b", 100)])),
        (&[("a", 100)], None),
    ];
    let (root, extra) = plan[0];
    write_ingress(&dir, &version(0, root, extra));
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "live").await;
    expect_from(&stack, host, "/headers", &[], "a").await;

    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(request_loop(
                stack.http_addr(),
                host.to_string(),
                stop.clone(),
                6_000,
                secs(15),
            ))
        })
        .collect();

    let updates_started = Instant::now();
    for (v, &(root, extra)) in plan.iter().enumerate().skip(1) {
        write_ingress(&dir, &version(v, root, extra));
        let stamp = v.to_string();
        let root_backends: Vec<&str> = root.iter().map(|(s, _)| *s).collect();
        let resp = wait_until(
            &stack,
            host,
            "/headers",
            &format!("version {v} (root → {root_backends:?})"),
            |r| {
                r.status == 200
                    && seen(r, "x-config-version") == [stamp.as_str()]
                    && r.backend().is_some_and(|b| root_backends.contains(&b))
            },
        )
        .await;
        let backend = resp.backend().unwrap_or_default();
        assert_eq!(
            seen(&resp, "x-split"),
            [backend],
            "version {v}: split header of the answering backend; {}",
            describe(&resp)
        );
        if let Some(extra) = extra {
            let extra_backends: Vec<&str> = extra.iter().map(|(s, _)| *s).collect();
            wait_until(
                &stack,
                host,
                "/extra/headers",
                &format!("version {v} (/extra → {extra_backends:?})"),
                |r| {
                    r.status == 200
                        && seen(r, "x-config-version") == [stamp.as_str()]
                        && r.backend().is_some_and(|b| extra_backends.contains(&b))
                },
            )
            .await;
        }
        // Let the loops run on this version for a moment.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let updates_took = updates_started.elapsed();
    stop.store(true, Ordering::SeqCst);

    let mut reports = Vec::new();
    for handle in loops {
        let report = within(secs(45), "request loop to finish", handle)
            .await
            .expect("request loop task panicked");
        reports.push(report);
    }
    let last = (plan.len() - 1).to_string();
    eprintln!(
        "{} updates took {updates_took:?}; loops made {:?} requests and saw versions {:?}",
        plan.len() - 1,
        reports.iter().map(|r| r.requests).collect::<Vec<_>>(),
        reports.iter().map(|r| r.versions.len()).collect::<Vec<_>>()
    );
    for (i, report) in reports.iter().enumerate() {
        assert!(
            report.failures.is_empty(),
            "loop {i}: {} of {} requests failed during {} updates ({updates_took:?}); \
             first failures: {:?}",
            report.failures.len(),
            report.requests,
            plan.len() - 1,
            &report.failures[..report.failures.len().min(10)]
        );
        assert!(
            report.stopped,
            "loop {i} hit its own bounds before the {} updates were done ({updates_took:?}, {} \
             requests): it did not cover them all",
            plan.len() - 1,
            report.requests
        );
        assert!(
            report.versions.contains(&last) && report.versions.len() >= 5,
            "loop {i} should have observed the new configurations, including the last ({last}); \
             observed versions {:?} in {} requests",
            report.versions,
            report.requests
        );
        assert_eq!(
            report.backends,
            BTreeSet::from(["a".to_string(), "b".to_string()]),
            "loop {i} should have been answered by both backends over the updates"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Bad input costs nothing else

async fn broken_file_costs_nothing(delta: bool) {
    let good = Backend::start("good").await;
    let dir = ManifestDir::new();
    write_service(&dir, "good", good.port());
    let working = |stamp: &str| {
        Ingress::new(NS, "working").rule(
            Rule::external(&["working.example.com"]).path(
                HttpPath::new()
                    .append_header("X-Stamp", stamp)
                    .split(to("good")),
            ),
        )
    };
    write_ingress(&dir, &working("1"));
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "working").await;
    expect_from(&stack, "working.example.com", "/", &[], "good").await;

    // A file that is not YAML at all, one that is YAML but not an object, and one whose
    // Ingress document cannot be decoded.
    dir.write("garbage.yaml", "this: is: not: [valid yaml\n\t- {{{\n");
    dir.write("list.yaml", "- just\n- a list\n");
    dir.write(
        "bad-doc.yaml",
        &format!(
            "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  \
             name: broken\n  namespace: {NS}\n  annotations:\n    {}: \"{}\"\nspec:\n  rules: 42\n",
            manifests::CLASS_ANNOTATION,
            manifests::INGRESS_CLASS
        ),
    );
    // A later change to the working ingress still goes through: the watcher has read the bad
    // files (they come first) and carries on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_ingress(&dir, &working("2"));
    wait_until(
        &stack,
        "working.example.com",
        "/headers",
        "the working ingress's update after the broken files",
        |r| r.status == 200 && seen(r, "x-stamp") == ["2"],
    )
    .await;
    for _ in 0..20 {
        expect_from(&stack, "working.example.com", "/", &[], "good").await;
    }
    assert!(
        stack.sluice.exited().is_none(),
        "sluice exited after reading broken files"
    );
    let logs = stack.sluice.logs();
    for file in ["garbage.yaml", "bad-doc.yaml"] {
        assert!(
            logs.contains(file),
            "sluice should report the broken file {file} in its log:\n{}",
            stack.sluice.log_tail(30)
        );
    }
    let readyz = stack.sluice.admin_get("/readyz").await;
    assert_eq!(readyz.status, 200, "sluice /readyz: {}", describe(&readyz));
    wait_ready(&stack, "working").await;
}

async fn invalid_update_keeps_last_good_version(delta: bool) {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let bystander = Backend::start("bystander").await;
    let dir = ManifestDir::new();
    for backend in [&v1, &v2, &bystander] {
        write_service(&dir, backend.name(), backend.port());
    }
    let valid = Ingress::new(NS, "evolving")
        .rule(Rule::external(&["evolving.example.com"]).path(HttpPath::new().split(to("v1"))));
    write_ingress(&dir, &valid);
    write_ingress(
        &dir,
        &Ingress::new(NS, "bystander").rule(
            Rule::external(&["bystander.example.com"]).path(HttpPath::new().split(to("bystander"))),
        ),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "evolving").await;
    wait_ready(&stack, "bystander").await;
    expect_from(&stack, "evolving.example.com", "/", &[], "v1").await;

    // Percents summing to 90: invalid. The previous version must keep serving.
    let invalid = Ingress::new(NS, "evolving").rule(
        Rule::external(&["evolving.example.com"]).path(
            HttpPath::new()
                .split(to("v1").percent(30))
                .split(to("v2").percent(60)),
        ),
    );
    write_ingress(&dir, &invalid);
    let ready = stack
        .sluice
        .wait_ingress_ready(NS, "evolving", "False", CONVERGE)
        .await;
    assert_eq!(
        ready["reason"], "InvalidIngress",
        "Ready condition of the invalid update: {ready}"
    );
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("percent") && message.contains("90"),
        "the message should name the problem (percents summing to 90): {ready}"
    );
    let entry = listed(&stack, "evolving")
        .await
        .expect("evolving is listed");
    assert_eq!(
        condition(&entry, "NetworkConfigured")["status"],
        "False",
        "{entry}"
    );
    for _ in 0..30 {
        expect_from(&stack, "evolving.example.com", "/", &[], "v1").await;
    }
    assert_eq!(v2.requests(), 0, "the invalid version must not be served");
    expect_from(&stack, "bystander.example.com", "/", &[], "bystander").await;
    wait_ready(&stack, "bystander").await;

    // Fixing it serves the new version.
    let fixed = Ingress::new(NS, "evolving").rule(
        Rule::external(&["evolving.example.com"]).path(
            HttpPath::new()
                .split(to("v1").percent(0))
                .split(to("v2").percent(100)),
        ),
    );
    write_ingress(&dir, &fixed);
    wait_until(
        &stack,
        "evolving.example.com",
        "/",
        "the fixed version being served",
        |r| r.status == 200 && r.backend() == Some("v2"),
    )
    .await;
    wait_ready(&stack, "evolving").await;
}

async fn other_class_is_not_owned(delta: bool) {
    let mine = Backend::start("mine").await;
    let theirs = Backend::start("theirs").await;
    let dir = ManifestDir::new();
    write_service(&dir, "mine", mine.port());
    write_service(&dir, "theirs", theirs.port());
    write_ingress(
        &dir,
        &Ingress::new(NS, "mine")
            .rule(Rule::external(&["mine.example.com"]).path(HttpPath::new().split(to("mine")))),
    );
    write_ingress(
        &dir,
        &Ingress::new(NS, "theirs")
            .class(Some("istio.ingress.networking.knative.dev"))
            .rule(
                Rule::external(&["theirs.example.com"]).path(HttpPath::new().split(to("theirs"))),
            ),
    );
    let stack = Stack::start(dir.path(), delta).await;
    wait_ready(&stack, "mine").await;

    let entry = listed(&stack, "theirs")
        .await
        .unwrap_or_else(|| panic!("`get ingress` should list the foreign ingress too"));
    assert_eq!(
        entry["owned"], false,
        "an ingress of another class is not owned: {entry}"
    );
    assert_ne!(
        condition(&entry, "Ready")["status"],
        "True",
        "a foreign ingress must not be Ready: {entry}"
    );
    let mine_entry = listed(&stack, "mine").await.expect("mine is listed");
    assert_eq!(mine_entry["owned"], true, "{mine_entry}");

    expect_from(&stack, "mine.example.com", "/", &[], "mine").await;
    for listener in ["external", "internal"] {
        let resp = if listener == "external" {
            stack.get("theirs.example.com", "/").await
        } else {
            stack.get_internal("theirs.example.com", "/").await
        };
        assert_eq!(
            resp.status,
            404,
            "a foreign ingress's host must not be served ({listener} listener): {}",
            describe(&resp)
        );
    }
    assert_eq!(theirs.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// 12. Status

async fn status_ready_after_ack(delta: bool) {
    let public = Backend::start("public").await;
    let private = Backend::start("private").await;
    let dir = ManifestDir::new();
    write_service(&dir, "public", public.port());
    write_service(&dir, "private", private.port());
    write_ingress(
        &dir,
        &Ingress::new(NS, "public").rule(
            Rule::external(&["public.example.com"]).path(HttpPath::new().split(to("public"))),
        ),
    );
    // Before any Envoy connects, the ingress is translated but not Ready.
    let sluice = Sluice::start(dir.path());
    sluice.wait_ready().await;
    let before = sluice
        .wait_ingress_ready(NS, "public", "False", CONVERGE)
        .await;
    assert_eq!(
        before["reason"], "NoProxy",
        "without an Envoy, Ready must be False/NoProxy: {before}"
    );
    let network = sluice
        .ingress_condition(NS, "public", "NetworkConfigured")
        .await;
    assert_eq!(
        network.as_ref().map(|c| c["status"].clone()),
        Some(json!("True")),
        "NetworkConfigured without an Envoy: {network:?}"
    );
    let bootstrap = sluice.bootstrap("status-test", None, delta);
    let envoy = Envoy::start(&bootstrap);
    envoy.wait_ready().await;
    let stack = Stack { envoy, sluice };
    // Ready means served: the first request after Ready is answered by the backend.
    wait_ready(&stack, "public").await;
    expect_from(&stack, "public.example.com", "/", &[], "public").await;
    let entry = listed(&stack, "public").await.expect("public is listed");
    for kind in ["Ready", "LoadBalancerReady", "NetworkConfigured"] {
        assert_eq!(condition(&entry, kind)["status"], "True", "{kind}: {entry}");
    }
    assert_eq!(entry["owned"], true, "{entry}");

    // An ingress added later, ClusterLocal only: Ready once Envoy ACKed, then served at once.
    write_ingress(
        &dir,
        &Ingress::new(NS, "private").rule(
            Rule::cluster_local(&["private.default.svc.cluster.local"])
                .path(HttpPath::new().split(to("private"))),
        ),
    );
    wait_ready(&stack, "private").await;
    expect_internal_from(&stack, "private.default.svc.cluster.local", "/", "private").await;
    let entry = listed(&stack, "private").await.expect("private is listed");
    for kind in ["Ready", "LoadBalancerReady", "NetworkConfigured"] {
        assert_eq!(condition(&entry, kind)["status"], "True", "{kind}: {entry}");
    }

    // Deleting the ingress stops serving its host, and drops it from the listing.
    dir.remove("ing-private.yaml");
    let gone = wait_for_async(CONVERGE, async || {
        client::get(
            stack.internal_http_addr(),
            "private.default.svc.cluster.local",
            "/",
            &[],
        )
        .await
        .is_ok_and(|r| r.status == 404)
    })
    .await;
    assert!(gone, "the deleted ingress's host should become 404");
    assert!(
        listed(&stack, "private").await.is_none(),
        "the deleted ingress should not be listed: {}",
        stack.sluice.ingresses().await
    );
    wait_ready(&stack, "public").await;
    expect_from(&stack, "public.example.com", "/", &[], "public").await;

    // sluice's view of the one Envoy: connected in the mode asked for, nothing rejected.
    let proxies = stack.sluice.admin_get("/debug/proxies").await;
    assert_eq!(proxies.status, 200, "{}", describe(&proxies));
    let proxies = proxies.json();
    let [proxy] = proxies.as_array().map(Vec::as_slice).unwrap_or_default() else {
        panic!("/debug/proxies should list exactly our Envoy: {proxies}");
    };
    let mode = if delta { "Delta" } else { "StateOfTheWorld" };
    assert_eq!(proxy["mode"], mode, "/debug/proxies: {proxy}");
    let types = proxy["types"].as_object().cloned().unwrap_or_default();
    assert!(!types.is_empty(), "/debug/proxies: {proxy}");
    for (type_url, status) in &types {
        assert!(
            status["last_nack"].is_null(),
            "Envoy rejected {type_url}: {proxy}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 13. EndpointSlices

async fn endpoint_slices_are_followed(delta: bool) {
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let dir = ManifestDir::new();
    let write_slices = |ports: &[u16]| {
        dir.write(
            "svc-sliced.yaml",
            &manifests::service_with_slices("sliced", NS, ports, "http"),
        );
    };
    write_slices(&[first.port()]);
    write_ingress(
        &dir,
        &Ingress::new(NS, "sliced").rule(
            Rule::external(&["sliced.example.com"]).path(HttpPath::new().split(to("sliced"))),
        ),
    );
    let stack = Stack::start(dir.path(), delta).await;
    let envoy_pid = stack.envoy.pid();
    wait_ready(&stack, "sliced").await;
    for _ in 0..5 {
        expect_from(&stack, "sliced.example.com", "/", &[], "first").await;
    }

    // The backend moves to another port: only the slice changes.
    write_slices(&[second.port()]);
    wait_until(
        &stack,
        "sliced.example.com",
        "/",
        "traffic moving to the new endpoint port",
        |r| r.status == 200 && r.backend() == Some("second"),
    )
    .await;
    let first_before = first.requests();
    for _ in 0..20 {
        expect_from(&stack, "sliced.example.com", "/", &[], "second").await;
    }
    assert_eq!(
        first.requests(),
        first_before,
        "the old endpoint must get no traffic once the slice moved"
    );

    // Two slices: both endpoints get traffic.
    write_slices(&[first.port(), second.port()]);
    let both = wait_for_async(CONVERGE, async || {
        let (counts, others) = spread(stack.http_addr(), "sliced.example.com", "/", 20, 4).await;
        others.is_empty() && counts.len() == 2
    })
    .await;
    assert!(
        both,
        "with two slices both endpoints should answer; last spread: {:?}",
        spread(stack.http_addr(), "sliced.example.com", "/", 20, 4).await
    );

    assert!(
        stack.envoy.exited().is_none() && stack.sluice.exited().is_none(),
        "neither process may exit"
    );
    assert_eq!(stack.envoy.pid(), envoy_pid, "Envoy was not restarted");
}

// ---------------------------------------------------------------------------------------------

in_both_modes!(
    host_path_and_header_dispatch,
    host_matching_ignores_case,
    split_percentages,
    append_headers_are_set_not_appended,
    rewrite_host,
    visibility,
    slow_backend_is_not_cut_off,
    failures_are_not_retried,
    websocket_echo,
    h2c_upstreams_and_grpc,
    updates_under_load_lose_nothing,
    broken_file_costs_nothing,
    invalid_update_keeps_last_good_version,
    other_class_is_not_owned,
    status_ready_after_ack,
    endpoint_slices_are_followed,
);
