//! The gateway options of the `config-sluice` ConfigMap through a real Envoy, each on and off,
//! in both xDS modes: access logs, the client address, PROXY protocol, the server header, the
//! stream idle timeout, the TLS policy, external authorization (gRPC and HTTP), the listen
//! addresses, and a ConfigMap with problems that is reported and changes nothing.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::sluice::run_cli;
use support::{Backend, ManifestDir, Stack, client, poll_until, wait_for, wait_for_async};

const NS: &str = "default";
const HOST: &str = "opts.example.com";
const CONVERGE: Duration = Duration::from_secs(20);
const SYSTEM_NAMESPACE: &str = "gloo-system";

fn config_map(data: &[(&str, &str)]) -> String {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    manifests::to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-sluice", "namespace": SYSTEM_NAMESPACE},
        "data": data,
    }))
}

fn set_options(dir: &ManifestDir, data: &[(&str, &str)]) {
    dir.write("config-sluice.yaml", &config_map(data));
}

struct Scene {
    stack: Stack,
    dir: ManifestDir,
    _backend: Backend,
}

/// A backend behind ingress `HOST`, and a stack serving it with `options` from the start.
async fn scene(delta: bool, options: &[(&str, &str)]) -> Scene {
    let backend = Backend::start("backend").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("backend", NS, backend.port(), "http"),
    );
    dir.write(
        "ingress.yaml",
        &manifests::ingress(NS, "opts", HOST, "backend", SERVICE_PORT),
    );
    if !options.is_empty() {
        set_options(&dir, options);
    }
    let stack = Stack::start(dir.path(), delta).await;
    stack.wait_status(HOST, "/", 200).await;
    Scene {
        stack,
        dir,
        _backend: backend,
    }
}

/// The listener `name` as Envoy holds it now (its active state), as JSON.
async fn envoy_listener(stack: &Stack, name: &str) -> Value {
    let dump: Value = stack
        .envoy
        .admin_get("/config_dump?resource=dynamic_listeners")
        .await
        .json();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .map(|l| l["active_state"]["listener"].clone())
        .unwrap_or(Value::Null)
}

/// Waits until Envoy's listener `name` satisfies `check` (its JSON as text).
async fn until_listener(stack: &Stack, name: &str, what: &str, check: impl Fn(&str) -> bool) {
    let mut last = String::new();
    let held = wait_for_async(CONVERGE, async || {
        last = envoy_listener(stack, name).await.to_string();
        !last.is_empty() && last != "null" && check(&last)
    })
    .await;
    assert!(
        held,
        "listener {name} never {what}; last: {last}\n{}",
        stack.logs()
    );
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

async fn get(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> client::Response {
    client::get(stack.http_addr(), HOST, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()))
}

async fn access_logs(delta: bool) {
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;

    // On by default, with the fields the issue names.
    // Envoy replaces an outside client's request id, so requests are told apart by path.
    let id = format!("/{}", unique("logged"));
    assert_eq!(get(stack, &id, &[]).await.status, 200);
    let line = poll_until(CONVERGE, async || {
        stack
            .envoy
            .logs()
            .lines()
            .find(|line| line.contains(&id))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("no access log line for {id}\n{}", stack.logs()));
    for field in [
        "[20",
        &format!("\"GET {id} HTTP/1.1\""),
        " 200 ",
        HOST,
        "default/backend:80",
    ] {
        assert!(line.contains(field), "{field} not in {line:?}");
    }

    // Off: no line for a request.
    set_options(&scene.dir, &[("enable-service-access-logging", "false")]);
    until_listener(stack, "external-http", "dropped its access log", |l| {
        !l.contains("access_log")
    })
    .await;
    let unlogged = format!("/{}", unique("unlogged"));
    assert_eq!(get(stack, &unlogged, &[]).await.status, 200);

    // A template of the operator's: the lines follow it.
    set_options(
        &scene.dir,
        &[(
            "service-access-log-template",
            "custom %REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%",
        )],
    );
    until_listener(stack, "external-http", "took the template", |l| {
        l.contains("custom %REQ(:PATH)%")
    })
    .await;
    let templated = format!("/{}", unique("templated"));
    assert_eq!(get(stack, &templated, &[]).await.status, 200);
    let expected = format!("custom {templated} 200 default/backend:80");
    assert!(
        wait_for(CONVERGE, || stack.envoy.logs().contains(&expected)).await,
        "no line {expected:?}\n{}",
        stack.logs()
    );
    // Lines are written in order: the request made while logging was off left none.
    assert!(
        !stack.envoy.logs().contains(&unlogged),
        "a request was logged while access logging was off"
    );
}

/// What the backend saw of a request with `X-Forwarded-For: 203.0.113.7`.
async fn forwarded(stack: &Stack) -> (Vec<String>, Vec<String>) {
    let response = get(stack, "/headers", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    (
        response.seen_header("x-forwarded-for"),
        response.seen_header("x-envoy-external-address"),
    )
}

async fn client_address(delta: bool) {
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    // sluice's default: Envoy appends the peer's address and trusts no hop, so the client is
    // the peer, not the address the client wrote.
    let (xff, external) = forwarded(stack).await;
    let peer = xff[0]
        .strip_prefix("203.0.113.7,")
        .unwrap_or_else(|| panic!("the peer is appended: {xff:?}"))
        .to_owned();
    assert!(
        !external.contains(&"203.0.113.7".to_owned()),
        "{external:?}"
    );

    set_options(&scene.dir, &[("use-remote-address", "false")]);
    until_listener(
        stack,
        "external-http",
        "stopped using the remote address",
        |l| l.contains("\"use_remote_address\":false"),
    )
    .await;
    let (xff, _) = forwarded(stack).await;
    assert_eq!(
        xff,
        ["203.0.113.7"],
        "the header passes as the client sent it"
    );

    set_options(
        &scene.dir,
        &[("use-remote-address", "true"), ("trusted-hops-count", "1")],
    );
    until_listener(stack, "external-http", "trusted one hop", |l| {
        l.contains("\"xff_num_trusted_hops\":1")
    })
    .await;
    let (xff, external) = forwarded(stack).await;
    assert_eq!(xff, [format!("203.0.113.7,{peer}")]);
    assert_eq!(
        external,
        ["203.0.113.7"],
        "one trusted hop: the client is the address before the load balancer's"
    );
}

/// A GET for `/headers` on a fresh connection to `addr`, after `preamble`; the raw response.
async fn raw_request(addr: SocketAddr, preamble: &[u8]) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(preamble).await.ok()?;
        let request = format!("GET /headers HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn proxy_v1(source: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n").into_bytes()
}

fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0x00, 12]);
    header.extend(source);
    header.extend([127, 0, 0, 1]);
    header.extend(40001u16.to_be_bytes());
    header.extend(port.to_be_bytes());
    header
}

async fn proxy_protocol(delta: bool) {
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    let addr = stack.http_addr();
    let port = addr.port();
    let plain = raw_request(addr, b"").await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    let refused = raw_request(addr, &proxy_v1("198.51.100.1", port)).await;
    assert!(
        !refused.starts_with("HTTP/1.1 200"),
        "without the option a PROXY header is not HTTP: {refused}"
    );

    set_options(&scene.dir, &[("enable-proxy-protocol", "true")]);
    until_listener(
        stack,
        "external-http",
        "took the PROXY protocol filter",
        |l| l.contains("envoy.filters.listener.proxy_protocol"),
    )
    .await;
    let v1 = raw_request(addr, &proxy_v1("198.51.100.1", port)).await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert!(
        v1.contains("198.51.100.1"),
        "the client address reaches the backend: {v1}"
    );
    let v2 = raw_request(addr, &proxy_v2([198, 51, 100, 2], port)).await;
    assert!(v2.starts_with("HTTP/1.1 200"), "{v2}");
    assert!(
        v2.contains("198.51.100.2"),
        "the client address reaches the backend: {v2}"
    );
    let without = raw_request(addr, b"").await;
    assert!(
        !without.starts_with("HTTP/1.1 200"),
        "the listener wants the PROXY header: {without}"
    );
    // The internal listener is reached inside the cluster, without a load balancer.
    let internal = envoy_listener(stack, "internal-http").await.to_string();
    assert!(!internal.contains("proxy_protocol"), "{internal}");
}

async fn server_header_and_idle_timeout(delta: bool) {
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    assert_eq!(get(stack, "/", &[]).await.header("server"), Some("envoy"));
    // No idle timeout by default: a slow answer is waited for.
    let slow = get(stack, "/sleep/2500", &[]).await;
    assert_eq!(slow.status, 200, "{}", slow.body);

    set_options(
        &scene.dir,
        &[
            ("disable-envoy-server-header", "true"),
            ("stream-idle-timeout", "1s"),
        ],
    );
    until_listener(stack, "external-http", "took the new options", |l| {
        l.contains("PASS_THROUGH") && l.contains("\"stream_idle_timeout\":\"1s\"")
    })
    .await;
    let response = get(stack, "/", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("server"), None, "{:?}", response.headers);
    assert_eq!(
        get(stack, "/sleep/300", &[]).await.status,
        200,
        "not before"
    );
    let started = Instant::now();
    let cut = get(stack, "/sleep/4000", &[]).await;
    assert_eq!(
        (cut.status, cut.body.as_str()),
        (504, "stream timeout"),
        "an idle stream is cut"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "cut after {:?}, before the timeout",
        started.elapsed()
    );
}

in_both_modes!(
    access_logs,
    client_address,
    proxy_protocol,
    server_header_and_idle_timeout,
);
