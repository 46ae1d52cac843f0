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
    // Envoy's timers run on a coarse clock and may fire a few milliseconds early.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut after {:?}, before the timeout",
        started.elapsed()
    );
}

/// Whether a TLS handshake with the external HTTPS listener succeeds for a client limited to
/// `suite` and `version`, trusting only `certificate`.
async fn handshake(
    addr: SocketAddr,
    certificate: &str,
    suite: rustls::SupportedCipherSuite,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(certificate.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        connector
            .connect(name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn tls_policy(delta: bool) {
    use rustls::crypto::ring::cipher_suite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 as AES128,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 as AES256, TLS13_AES_128_GCM_SHA256,
    };
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    let (certificate, key) = support::tls::certificate(HOST);
    scene.dir.write(
        "secret.yaml",
        &manifests::to_yaml(&manifests::tls_secret(NS, "opts-cert", &certificate, &key)),
    );
    scene.dir.write(
        "ingress.yaml",
        &Ingress::new(NS, "opts")
            .rule(
                Rule::external(&[HOST]).path(HttpPath::new().split(Split::new(
                    NS,
                    "backend",
                    SERVICE_PORT,
                ))),
            )
            .tls(&[HOST], NS, "opts-cert")
            .to_yaml(),
    );
    let https = stack.sluice.https_addr();
    let tls12 = &rustls::version::TLS12;
    let tls13 = &rustls::version::TLS13;
    let mut last = String::new();
    let up = wait_for_async(CONVERGE, async || {
        match handshake(https, &certificate, AES256, tls12).await {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    })
    .await;
    assert!(
        up,
        "Envoy's default suites take AES256 over TLS 1.2: {last}\n{}",
        stack.logs()
    );

    set_options(
        &scene.dir,
        &[("cipher-suites", "ECDHE-ECDSA-AES128-GCM-SHA256")],
    );
    until_listener(stack, "external-https", "took the cipher suites", |l| {
        l.contains("ECDHE-ECDSA-AES128-GCM-SHA256")
    })
    .await;
    assert!(
        handshake(https, &certificate, AES256, tls12).await.is_err(),
        "a suite outside cipher-suites is refused"
    );
    handshake(https, &certificate, AES128, tls12)
        .await
        .expect("the listed suite is accepted");

    set_options(&scene.dir, &[("tls-minimum-protocol-version", "1.3")]);
    until_listener(
        stack,
        "external-https",
        "took TLS 1.3 as its minimum",
        |l| l.contains("TLSv1_3"),
    )
    .await;
    assert!(
        handshake(https, &certificate, AES128, tls12).await.is_err(),
        "TLS 1.2 is refused once 1.3 is the minimum"
    );
    handshake(https, &certificate, TLS13_AES_128_GCM_SHA256, tls13)
        .await
        .expect("TLS 1.3 is accepted");
}

/// An in-test gRPC authorization service: it allows requests with `x-allow: yes` and
/// counts every check, and every check of a Knative probe.
#[derive(Default)]
struct Authorizer {
    checks: AtomicUsize,
    probes: AtomicUsize,
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let headers = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|http| http.headers.clone())
            .unwrap_or_default();
        if headers.contains_key("k-network-probe") {
            self.probes.fetch_add(1, Ordering::SeqCst);
        }
        let status = if headers.get("x-allow").map(String::as_str) == Some("yes") {
            tonic::Status::ok("allowed")
        } else {
            tonic::Status::permission_denied("no x-allow: yes")
        };
        Ok(tonic::Response::new(CheckResponse::with_status(status)))
    }
}

/// Serves `authorizer` on a fresh port until the returned sender is dropped.
fn serve_authorizer(authorizer: Arc<Authorizer>) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::from_arc(authorizer))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (port, stop)
}

const PROBE: [(&str, &str); 2] = [("K-Network-Probe", "probe"), ("K-Network-Hash", "override")];

async fn ext_authz_grpc(delta: bool) {
    let authorizer = Arc::new(Authorizer::default());
    let (port, stop) = serve_authorizer(authorizer.clone());
    let host = format!("127.0.0.1:{port}");
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    set_options(&scene.dir, &[("extauthz-host", &host)]);
    until_listener(stack, "external-http", "took the ext_authz filter", |l| {
        l.contains("envoy.filters.http.ext_authz")
    })
    .await;
    let denied = stack
        .get_until(stack.http_addr(), HOST, "/", CONVERGE, |r| r.status == 403)
        .await;
    assert_eq!(denied.status, 403);
    let allowed = get(stack, "/", &[("x-allow", "yes")]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.backend(), Some("backend"));
    let checks = authorizer.checks.load(Ordering::SeqCst);
    assert!(checks >= 2, "{checks} checks");

    // Knative's probes never reach the service.
    let probe = get(stack, "/", &PROBE).await;
    assert_eq!(
        probe.status, 200,
        "a probe is not authorized: {}",
        probe.body
    );
    assert_eq!(authorizer.probes.load(Ordering::SeqCst), 0);
    assert_eq!(authorizer.checks.load(Ordering::SeqCst), checks);

    // An outage: denied, unless failure mode allows.
    drop(stop);
    let down = stack
        .get_until(stack.http_addr(), HOST, "/", CONVERGE, |r| r.status != 200)
        .await;
    assert_eq!(
        get(stack, "/", &[("x-allow", "yes")]).await.status,
        403,
        "the service is down: {}",
        down.body
    );
    set_options(
        &scene.dir,
        &[
            ("extauthz-host", &host),
            ("extauthz-failure-mode-allow", "true"),
        ],
    );
    until_listener(stack, "external-http", "allowed on failure", |l| {
        l.contains("\"failure_mode_allow\":true")
    })
    .await;
    assert_eq!(
        get(stack, "/", &[]).await.status,
        200,
        "failure mode allows"
    );

    // Off: nothing is asked.
    set_options(&scene.dir, &[]);
    until_listener(
        stack,
        "external-http",
        "dropped the ext_authz filter",
        |l| !l.contains("ext_authz"),
    )
    .await;
    assert_eq!(get(stack, "/", &[]).await.status, 200);
}

async fn ext_authz_http(delta: bool) {
    // The authorization service is a backend: it answers a check for `.../status/403` with
    // 403 and any other with 200, and counts them.
    let authorizer = Backend::start("authorizer").await;
    let host = format!("127.0.0.1:{}", authorizer.port());
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    set_options(
        &scene.dir,
        &[
            ("extauthz-host", &host),
            ("extauthz-protocol", "http"),
            ("extauthz-path-prefix", "/check"),
        ],
    );
    until_listener(stack, "external-http", "took the ext_authz filter", |l| {
        l.contains("envoy.filters.http.ext_authz")
    })
    .await;
    let denied = stack
        .get_until(stack.http_addr(), HOST, "/status/403", CONVERGE, |r| {
            r.status == 403 && r.backend() == Some("authorizer")
        })
        .await;
    assert_eq!(denied.status, 403);
    let allowed = get(stack, "/headers", &[]).await;
    assert_eq!(allowed.backend(), Some("backend"), "{}", allowed.body);
    let checks = authorizer.requests();
    let probe = get(stack, "/status/403", &PROBE).await;
    assert_eq!(
        probe.backend(),
        Some("backend"),
        "a probe is not authorized"
    );
    assert_eq!(authorizer.requests(), checks);

    drop(authorizer);
    let down = get(stack, "/headers", &[]).await;
    assert_eq!(down.status, 403, "the service is down: {}", down.body);
}

async fn listen_addresses(delta: bool) {
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, stack.http_addr().port()));
    assert!(
        client::get(v6, HOST, "/", &[]).await.is_err(),
        "only 127.0.0.1 at first"
    );
    set_options(&scene.dir, &[("listen-ip-addresses", "::1,127.0.0.1")]);
    let on_v6 = stack
        .get_until(v6, HOST, "/", CONVERGE, |r| r.status == 200)
        .await;
    assert_eq!(on_v6.backend(), Some("backend"));
    assert_eq!(get(stack, "/", &[]).await.status, 200, "127.0.0.1 still");
    // The operator commands dial the first address.
    let admin = stack.sluice.admin_addr().to_string();
    let proxies = run_cli(&["get", "proxy", "--admin-addr", &admin, "-o", "json"])
        .await
        .json();
    assert_eq!(proxies[0]["addresses"], json!(["[::1]"]), "{proxies}");
}

async fn bad_options_change_nothing(delta: bool) {
    let scene = scene(delta, &[("disable-envoy-server-header", "true")]).await;
    let stack = &scene.stack;
    let before = envoy_listener(stack, "external-http").await;
    set_options(
        &scene.dir,
        &[
            ("disable-envoy-server-header", "false"),
            ("enable-service-acess-logging", "false"),
            ("stream-idle-timeout", "soon"),
        ],
    );
    let admin = stack.sluice.admin_addr().to_string();
    let mut last = None;
    let reported = poll_until(CONVERGE, async || {
        let check = run_cli(&["check", "--admin-addr", &admin]).await;
        let line = check
            .stdout
            .lines()
            .find(|l| l.contains("gateway options"))
            .map(str::to_owned);
        last = Some(check);
        line.filter(|l| l.starts_with("FAIL"))
    })
    .await
    .unwrap_or_else(|| panic!("check never failed on the options: {last:?}"));
    for named in [
        "enable-service-acess-logging",
        "stream-idle-timeout",
        "\"soon\"",
    ] {
        assert!(reported.contains(named), "{named} not in {reported}");
        assert!(
            stack.sluice.logs().contains(named),
            "no log line names {named}"
        );
    }
    assert_eq!(envoy_listener(stack, "external-http").await, before);
    assert_eq!(get(stack, "/", &[]).await.header("server"), None);

    set_options(&scene.dir, &[("enable-cryptomb", "true")]);
    let noted = poll_until(CONVERGE, async || {
        let check = run_cli(&["check", "--admin-addr", &admin]).await;
        check
            .stdout
            .lines()
            .find(|l| l.contains("gateway options") && l.starts_with("OK"))
            .map(str::to_owned)
    })
    .await
    .expect("check passes on good options");
    assert!(noted.contains("enable-cryptomb"), "{noted}");
}

/// A CA, and a server certificate it issues for `names`.
struct Authority {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl Authority {
    fn new() -> Authority {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let pem = params.self_signed(&key).unwrap().pem();
        Authority { params, key, pem }
    }

    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// An HTTPS backend (TLS 1.3, HTTP/1.1) that answers every request with `name`, on a fresh
/// port, until the returned sender is dropped.
fn tls_backend(
    name: &'static str,
    (certificate, key): (String, String),
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut stopped => return,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(name)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, stop)
}

const SECURE_HOST: &str = "secure.example.com";

fn write_ca(dir: &ManifestDir, ca: &str) {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "routing-serving-certs", "namespace": "knative-serving"},
        "data": {"ca.crt": manifests::base64(ca.as_bytes())},
    });
    dir.write("ca.yaml", &manifests::to_yaml(&secret));
}

/// The version sluice serves of every resource of `type_` (`LDS`, `CDS`, ...).
async fn served_versions(stack: &Stack, type_: &str) -> BTreeMap<String, String> {
    let config: Value = stack
        .sluice
        .admin_get(&format!("/debug/config?type={type_}"))
        .await
        .json();
    config["groups"]["All"][type_]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, r)| {
            (
                name.clone(),
                r["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn upstream_tls(delta: bool) {
    let first = Authority::new();
    let second = Authority::new();
    // Knative's queue-proxy certificate names the revision's namespace.
    let (first_port, _first) = tls_backend("first", first.issue(&["kn-user-default"]));
    let (second_port, _second) = tls_backend("second", second.issue(&["kn-user-default"]));
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    let service = |port: u16| {
        manifests::documents(&[
            manifests::service("secure", NS, "https", 443, port),
            manifests::endpoints("secure", NS, "https", &[port]),
        ])
    };
    scene.dir.write("secure-svc.yaml", &service(first_port));
    scene.dir.write(
        "secure.yaml",
        &manifests::ingress(NS, "secure", SECURE_HOST, "secure", 443),
    );
    write_ca(&scene.dir, &first.pem);
    let plain = stack
        .get_until(stack.http_addr(), SECURE_HOST, "/", CONVERGE, |r| {
            r.status >= 500
        })
        .await;
    assert_ne!(
        plain.body, "first",
        "without the option the backend is spoken to in plaintext"
    );

    set_options(
        &scene.dir,
        &[
            ("certs-secret-name", "routing-serving-certs"),
            ("certs-secret-namespace", "knative-serving"),
        ],
    );
    let secure = stack
        .get_until(stack.http_addr(), SECURE_HOST, "/", CONVERGE, |r| {
            r.status == 200
        })
        .await;
    assert_eq!(
        secure.body, "first",
        "TLS to the revision, verified against the CA"
    );

    // A backend whose certificate another CA issued is refused.
    scene.dir.write("secure-svc.yaml", &service(second_port));
    let refused = stack
        .get_until(stack.http_addr(), SECURE_HOST, "/", CONVERGE, |r| {
            r.status != 200
        })
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let listeners = served_versions(stack, "LDS").await;
    let clusters = served_versions(stack, "CDS").await;

    // The CA rotates: only its SDS resource changes.
    write_ca(&scene.dir, &second.pem);
    let rotated = stack
        .get_until(stack.http_addr(), SECURE_HOST, "/", CONVERGE, |r| {
            r.status == 200
        })
        .await;
    assert_eq!(rotated.body, "second");
    assert_eq!(
        served_versions(stack, "LDS").await,
        listeners,
        "no listener churn"
    );
    assert_eq!(
        served_versions(stack, "CDS").await,
        clusters,
        "no cluster churn"
    );
}

async fn cluster_certificate(delta: bool) {
    let local_host = "opts.default.svc.cluster.local";
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    scene.dir.write(
        "local.yaml",
        &Ingress::new(NS, "local")
            .rule(
                Rule::cluster_local(&[local_host]).path(HttpPath::new().split(Split::new(
                    NS,
                    "backend",
                    SERVICE_PORT,
                ))),
            )
            .to_yaml(),
    );
    let (certificate, key) = support::tls::certificate_for(&[local_host]);
    let secret = manifests::tls_secret(SYSTEM_NAMESPACE, "local-cert", &certificate, &key);
    scene
        .dir
        .write("local-cert.yaml", &manifests::to_yaml(&secret));
    let internal_https = stack.sluice.internal_https_addr();
    stack
        .get_until(stack.internal_http_addr(), local_host, "/", CONVERGE, |r| {
            r.status == 200
        })
        .await;
    assert!(
        support::tls::https_get(internal_https, local_host, &certificate)
            .await
            .is_err(),
        "no internal HTTPS without a certificate"
    );

    set_options(&scene.dir, &[("cluster-cert-secret", "local-cert")]);
    let mut last = String::new();
    let served = poll_until(CONVERGE, async || {
        match support::tls::https_get(internal_https, local_host, &certificate).await {
            Ok(response) if response.status == 200 => Some(response),
            Ok(response) => {
                last = format!("{} {}", response.status, response.body);
                None
            }
            Err(error) => {
                last = error;
                None
            }
        }
    })
    .await
    .unwrap_or_else(|| panic!("no cluster-local HTTPS: {last}\n{}", stack.logs()));
    assert_eq!(served.body, "backend");
    // External hosts stay off the internal listener.
    let external = support::tls::https_get(internal_https, HOST, &certificate).await;
    assert!(
        external.as_ref().is_err() || external.as_ref().is_ok_and(|r| r.status == 404),
        "{:?}",
        external.map(|r| r.status)
    );
}

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

/// Spans an in-test OTLP collector received: (service name, every string attribute value).
#[derive(Default)]
struct Collector {
    spans: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl Collector {
    fn record(&self, request: ExportTraceServiceRequest) {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        let strings = |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
            attributes
                .iter()
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(value) => Some((kv.key.clone(), value.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| strings(&r.attributes))
                .unwrap_or_default();
            let service = resource
                .iter()
                .find(|(key, _)| key == "service.name")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let values = strings(&span.attributes).into_iter().map(|(_, v)| v);
                    spans.push((service.clone(), values.collect()));
                }
            }
        }
    }

    /// Whether a span of `service` mentions `text` in an attribute.
    fn saw(&self, service: &str, text: &str) -> bool {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .any(|(s, values)| s == service && values.iter().any(|v| v.contains(text)))
    }

    fn mentions(&self, text: &str) -> bool {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .any(|(_, values)| values.iter().any(|v| v.contains(text)))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector over OTLP/gRPC and over OTLP/HTTP (protobuf at any path), on two ports.
fn serve_collector(collector: Arc<Collector>) -> (u16, u16) {
    let bind = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        (port, tokio::net::TcpListener::from_std(listener).unwrap())
    };
    let (grpc_port, grpc) = bind();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::from_arc(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
    );
    let (http_port, http) = bind();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = http.accept().await {
            let collector = collector.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let collector = collector.clone();
                        async move {
                            use http_body_util::BodyExt;
                            use prost::Message;
                            let body = request.into_body().collect().await?.to_bytes();
                            if let Ok(spans) = ExportTraceServiceRequest::decode(body) {
                                collector.record(spans);
                            }
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (grpc_port, http_port)
}

/// Sends requests for `path` until the collector has a span of `service` for it.
async fn until_traced(stack: &Stack, collector: &Collector, service: &str, path: &str) {
    let traced = wait_for_async(CONVERGE, async || {
        let _ = client::get(stack.http_addr(), HOST, path, &[]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        collector.saw(service, path)
    })
    .await;
    assert!(traced, "no span of {service} for {path}\n{}", stack.logs());
}

async fn tracing(delta: bool) {
    let collector = Arc::new(Collector::default());
    let (grpc_port, http_port) = serve_collector(collector.clone());
    let scene = scene(delta, &[]).await;
    let stack = &scene.stack;
    let grpc_endpoint = format!("http://127.0.0.1:{grpc_port}");
    set_options(
        &scene.dir,
        &[
            ("tracing-endpoint", &grpc_endpoint),
            ("tracing-service-name", "traced-grpc"),
        ],
    );
    until_listener(stack, "external-http", "took the tracer", |l| {
        l.contains("envoy.tracers.opentelemetry")
    })
    .await;
    until_traced(stack, &collector, "traced-grpc", "/over-grpc").await;

    set_options(&scene.dir, &[]);
    until_listener(stack, "external-http", "dropped the tracer", |l| {
        !l.contains("opentelemetry")
    })
    .await;
    let untraced = format!("/{}", unique("untraced"));
    assert_eq!(get(stack, &untraced, &[]).await.status, 200);

    let http_endpoint = format!("http://127.0.0.1:{http_port}/v1/traces");
    set_options(
        &scene.dir,
        &[
            ("tracing-endpoint", &http_endpoint),
            ("tracing-protocol", "http/protobuf"),
            ("tracing-service-name", "traced-http"),
        ],
    );
    until_listener(stack, "external-http", "took the HTTP exporter", |l| {
        l.contains("/v1/traces")
    })
    .await;
    until_traced(stack, &collector, "traced-http", "/over-http").await;
    assert!(
        !collector.mentions(&untraced),
        "a request was traced while tracing was off"
    );
}

in_both_modes!(
    tracing,
    upstream_tls,
    cluster_certificate,
    access_logs,
    client_address,
    proxy_protocol,
    server_header_and_idle_timeout,
    tls_policy,
    ext_authz_grpc,
    ext_authz_http,
    listen_addresses,
    bad_options_change_nothing,
);
