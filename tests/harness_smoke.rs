//! Proves the test harness itself, without sluice: backends over HTTP/1.1, h2c and WebSocket,
//! gRPC health, and a real Envoy with a static bootstrap in front of them.

mod support;

use std::time::Duration;

use support::client::{self, Proto};
use support::envoy::static_proxy_bootstrap;
use support::manifests::{self, HttpPath, Ingress, Rule, Split};
use support::{Backend, Envoy, GrpcBackend, ServingStatus, grpc_health_check, secs};

#[tokio::test]
async fn backend_speaks_http1_h2c_and_websocket() {
    let backend = Backend::start("alpha").await;
    let addr = backend.addr();

    let resp = client::get(addr, "example.com", "/", &[])
        .await
        .expect("GET /");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "alpha");
    assert_eq!(resp.backend(), Some("alpha"));

    let h1 = client::get(addr, "example.com", "/x/proto", &[])
        .await
        .expect("h1 /proto");
    assert_eq!(h1.body, "HTTP/1.1");
    let h2 = client::get_h2(addr, "example.com", "/proto", &[])
        .await
        .expect("h2c /proto");
    assert_eq!(h2.body, "HTTP/2");
    assert_eq!(h2.backend(), Some("alpha"));

    // Repeated request headers arrive as separate values; pseudo-headers are reported.
    let headers = client::get(
        addr,
        "h.example.com",
        "/prefix/headers?q=1",
        &[("X-Twice", "one"), ("x-twice", "two")],
    )
    .await
    .expect("GET /headers");
    assert_eq!(headers.seen_header("x-twice"), ["one", "two"]);
    assert_eq!(headers.seen_header("host"), ["h.example.com"]);
    assert_eq!(headers.seen_header(":authority"), ["h.example.com"]);
    assert_eq!(headers.seen_header(":path"), ["/prefix/headers?q=1"]);
    let h2_headers = client::get_h2(addr, "h2.example.com", "/headers", &[])
        .await
        .expect("h2c /headers");
    assert_eq!(h2_headers.seen_header(":authority"), ["h2.example.com"]);

    let first = client::get(addr, "e", "/fail-once/t1", &[])
        .await
        .expect("fail-once");
    let second = client::get(addr, "e", "/fail-once/t1", &[])
        .await
        .expect("fail-once");
    assert_eq!((first.status, second.status), (503, 200));
    let teapot = client::get(addr, "e", "/status/418", &[])
        .await
        .expect("status");
    assert_eq!(teapot.status, 418);

    let started = std::time::Instant::now();
    let slept = client::get(addr, "e", "/sleep/200", &[])
        .await
        .expect("sleep");
    assert_eq!(slept.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let (_ws, upgrade_headers) = client::websocket(addr, "ws.example.com", "/ws")
        .await
        .expect("WebSocket handshake");
    assert_eq!(
        upgrade_headers.get("x-backend").map(|v| v.as_bytes()),
        Some(&b"alpha"[..])
    );
    let echo = client::websocket_echo(addr, "ws.example.com", "/ws", "ping?")
        .await
        .expect("WebSocket echo");
    assert_eq!(echo, "ping?");

    // 9 plain requests + 2 upgrades.
    let counted = support::wait_for(secs(2), || backend.requests() == 11).await;
    assert!(counted, "requests: {}", backend.requests());
}

#[tokio::test]
async fn backend_stops_on_drop() {
    let backend = Backend::start("gone").await;
    let addr = backend.addr();
    drop(backend);
    let stopped = support::wait_for_async(secs(5), async || {
        client::get(addr, "e", "/", &[]).await.is_err()
    })
    .await;
    assert!(stopped, "backend still answering after drop");
}

#[tokio::test]
async fn grpc_backend_reports_serving() {
    let grpc = GrpcBackend::start().await;
    let status = grpc_health_check(grpc.addr(), "grpc.example.com")
        .await
        .expect("health check");
    assert_eq!(status, ServingStatus::Serving);
    grpc.set_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let status = grpc_health_check(grpc.addr(), "grpc.example.com")
        .await
        .expect("health check");
    assert_eq!(status, ServingStatus::NotServing);
    assert_eq!(grpc.requests(), 2);
}

async fn start_static_envoy(bootstrap: &str) -> (Envoy, std::net::SocketAddr) {
    let envoy = Envoy::start(bootstrap);
    envoy.wait_ready().await;
    let addr = envoy
        .listener_addr("ingress")
        .await
        .unwrap_or_else(|| panic!("listener `ingress` not found\n{}", envoy.logs()));
    (envoy, addr)
}

#[tokio::test]
async fn envoy_proxies_http1_and_websocket_to_backend() {
    let backend = Backend::start("beta").await;
    let (envoy, addr) = start_static_envoy(&static_proxy_bootstrap(0, backend.port(), false)).await;

    let resp = client::get(addr, "anything.example.com", "/", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.logs()));
    assert_eq!(resp.status, 200, "{resp:?}\n{}", envoy.logs());
    assert_eq!(resp.body, "beta");
    assert_eq!(resp.backend(), Some("beta"));
    assert_eq!(resp.header("server"), Some("envoy"));

    // Envoy speaks HTTP/1.1 upstream here, whatever the client spoke.
    let h2 = client::get_h2(addr, "anything.example.com", "/proto", &[])
        .await
        .expect("h2c to envoy");
    assert_eq!(
        (h2.version, h2.body.as_str()),
        (hyper::Version::HTTP_2, "HTTP/1.1")
    );

    let headers = client::get(addr, "seen.example.com", "/headers", &[])
        .await
        .expect("GET /headers via envoy");
    assert_eq!(headers.seen_header(":authority"), ["seen.example.com"]);
    assert_eq!(headers.seen_header("x-forwarded-proto"), ["http"]);

    let echo = client::websocket_echo(addr, "ws.example.com", "/chat", "hello through envoy")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.logs()));
    assert_eq!(echo, "hello through envoy");

    let ready = envoy.admin_get("/ready").await;
    assert_eq!(ready.body.trim(), "LIVE");
}

#[tokio::test]
async fn envoy_proxies_h2c_upstream_and_grpc_by_authority() {
    let backend = Backend::start("gamma").await;
    let (envoy, addr) = start_static_envoy(&static_proxy_bootstrap(0, backend.port(), true)).await;
    let resp = client::get(addr, "e.example.com", "/proto", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.logs()));
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "HTTP/2"),
        "{}",
        envoy.logs()
    );

    // Only grpc.example.com is routed: proves the client's :authority override reaches Envoy.
    let grpc = GrpcBackend::start().await;
    let bootstrap = static_proxy_bootstrap(0, grpc.port(), true)
        .replace(r#"domains: ["*"]"#, r#"domains: ["grpc.example.com"]"#);
    let (grpc_envoy, grpc_addr) = start_static_envoy(&bootstrap).await;
    let status = grpc_health_check(grpc_addr, "grpc.example.com")
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", grpc_envoy.logs()));
    assert_eq!(status, ServingStatus::Serving);
    let miss = grpc_health_check(grpc_addr, "other.example.com").await;
    let err = miss.expect_err("no virtual host for other.example.com");
    // Envoy answers 404 for an unrouted host, which gRPC reports as Unimplemented.
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert_eq!(grpc.requests(), 1);
}

#[tokio::test]
async fn two_envoys_run_side_by_side() {
    let backend = Backend::start("delta").await;
    let first = Envoy::start(&static_proxy_bootstrap(0, backend.port(), false));
    let second = Envoy::start(&static_proxy_bootstrap(0, backend.port(), false));
    first.wait_ready().await;
    second.wait_ready().await;
    assert_ne!(first.admin_addr(), second.admin_addr());
    let pid = first.pid();
    drop(first);
    // The second keeps serving after the first is killed.
    let addr = second.listener_addr("ingress").await.expect("listener");
    let resp = client::get(addr, "e", "/", &[])
        .await
        .expect("GET via second envoy");
    assert_eq!(resp.body, "delta");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains("envoy")),
        "first envoy (pid {pid}) still running after drop"
    );
}

#[tokio::test]
async fn h2c_client_reaches_backend_through_generic_send() {
    let backend = Backend::start("epsilon").await;
    let resp = client::send(
        backend.addr(),
        Proto::H2c,
        "POST",
        "e",
        "/proto",
        &[],
        bytes::Bytes::from_static(b"body"),
    )
    .await
    .expect("POST over h2c");
    assert_eq!(resp.body, "HTTP/2");
}

#[test]
fn manifests_render_as_yaml_that_parses_back() {
    let ingress = Ingress::new("default", "hello")
        .annotation("example.com/note", "a: b # not a comment")
        .rule(
            Rule::external(&["hello.default.example.com"]).path(
                HttpPath::prefix("/api")
                    .header("x-canary", "yes")
                    .append_header("Knative-Serving-Namespace", "default")
                    .split(
                        Split::new("default", "hello-1", 80)
                            .percent(90)
                            .append_header("Knative-Serving-Revision", "hello-1"),
                    )
                    .split(Split::named_port("default", "hello-2", "http").percent(10)),
            ),
        )
        .rule(
            Rule::cluster_local(&["hello.default.svc.cluster.local"])
                .path(HttpPath::new().split(Split::new("default", "hello-1", 80))),
        );
    let value = ingress.to_value();
    let yaml = ingress.to_yaml();
    let parsed: serde_json::Value =
        serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(parsed, value, "{yaml}");
    assert!(yaml.contains(
        "networking.knative.dev/ingress.class: \"sluice.ingress.networking.knative.dev\""
    ));

    let multi = manifests::service_for_ports("hello-1", "default", &[8080, 8081], "h2c");
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&multi).unwrap_or_else(|e| panic!("{e}\n{multi}"));
    assert_eq!(docs.len(), 2, "{multi}");
    assert_eq!(docs[0]["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(
        docs[0]["spec"]["ports"][0]["appProtocol"],
        "kubernetes.io/h2c"
    );
    assert_eq!(docs[1]["subsets"][1]["ports"][0]["port"], 8081);

    let slices = manifests::service_with_slices("s", "ns", &[1, 2], "http");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&slices).expect("slices");
    assert_eq!(docs.len(), 3);
    assert_eq!(
        docs[2]["metadata"]["labels"]["kubernetes.io/service-name"],
        "s"
    );

    let simple = manifests::ingress("ns", "n", "h.example.com", "svc", 80);
    let parsed: serde_json::Value = serde_saphyr::from_str(&simple).expect("simple ingress");
    assert_eq!(
        parsed["spec"]["rules"][0]["http"]["paths"][0]["splits"][0]["servicePort"],
        80
    );

    assert_eq!(manifests::base64(b""), "");
    assert_eq!(manifests::base64(b"f"), "Zg==");
    assert_eq!(manifests::base64(b"fo"), "Zm8=");
    assert_eq!(manifests::base64(b"foobar"), "Zm9vYmFy");

    let dir = support::ManifestDir::new();
    dir.write("a.yaml", &simple);
    assert_eq!(dir.read("a.yaml"), simple);
    dir.remove("a.yaml");
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
}
