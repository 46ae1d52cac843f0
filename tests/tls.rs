//! TLS and `httpOption` through a real Envoy, in both xDS modes: HTTPS by SNI with the secret
//! delivered by SDS, rotation that changes no listener, a bad secret that fails only the
//! ingresses naming it (and never reaches Envoy), and HTTP redirected to HTTPS per ingress.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::tls::{HttpsResponse, certificate, https_get};
use support::{Backend, ManifestDir, Stack, poll_until};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);

async fn https_until(
    addr: SocketAddr,
    host: &str,
    trusted: &str,
    check: impl Fn(&HttpsResponse) -> bool,
) -> HttpsResponse {
    let mut last = String::new();
    let found = poll_until(CONVERGE, async || {
        match https_get(addr, host, trusted).await {
            Ok(response) if check(&response) => Some(response),
            Ok(response) => {
                last = format!("status {} body {:?}", response.status, response.body);
                None
            }
            Err(error) => {
                last = error;
                None
            }
        }
    })
    .await;
    found
        .unwrap_or_else(|| panic!("https://{host} via {addr} never passed the check; last: {last}"))
}

fn ingress(name: &str, host: &str, secret: &str, http_option: &str) -> Ingress {
    Ingress::new(NS, name)
        .rule(
            Rule::external(&[host]).path(HttpPath::new().split(Split::new(
                NS,
                "backend",
                SERVICE_PORT,
            ))),
        )
        .tls(&[host], NS, secret)
        .http_option(http_option)
}

fn write_secret(dir: &ManifestDir, name: &str, (certificate, key): &(String, String)) {
    let secret = manifests::tls_secret(NS, name, certificate, key);
    dir.write(&format!("secret-{name}.yaml"), &manifests::to_yaml(&secret));
}

async fn listener_version(stack: &Stack, name: &str) -> Option<String> {
    let config: Value = stack
        .sluice
        .admin_get("/debug/config?type=LDS")
        .await
        .json();
    config["groups"]["All"]["LDS"][name]["version"]
        .as_str()
        .map(str::to_owned)
}

async fn tls_end_to_end(delta: bool) {
    let backend = Backend::start("backend").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("backend", NS, backend.port(), "http"),
    );
    let secure = "secure.example.com";
    let first = certificate(secure);
    write_secret(&dir, "secure-cert", &first);
    dir.write(
        "secure.yaml",
        &ingress("secure", secure, "secure-cert", "Enabled").to_yaml(),
    );
    let redirected = "redirected.example.com";
    let redirect_cert = certificate(redirected);
    write_secret(&dir, "redirected-cert", &redirect_cert);
    dir.write(
        "redirected.yaml",
        &ingress("redirected", redirected, "redirected-cert", "Redirected").to_yaml(),
    );
    let stack = Stack::start(dir.path(), delta).await;
    let https = stack.sluice.https_addr();
    for name in ["secure", "redirected"] {
        stack
            .sluice
            .wait_ingress_ready(NS, name, "True", CONVERGE)
            .await;
    }

    // HTTPS by SNI, and plain HTTP per httpOption.
    let response = https_until(https, secure, &first.0, |r| r.status == 200).await;
    assert_eq!(response.body, "backend");
    assert_eq!(
        stack.get(secure, "/").await.status,
        200,
        "Enabled serves HTTP too"
    );
    let response = https_until(https, redirected, &redirect_cert.0, |r| r.status == 200).await;
    assert_eq!(response.body, "backend");
    let plain = stack.get(redirected, "/some/path").await;
    assert_eq!(plain.status, 301, "Redirected answers plain HTTP with 301");
    let location = plain.header("location").unwrap_or_default();
    assert!(
        location.starts_with("https://redirected.example.com") && location.ends_with("/some/path"),
        "redirect to https: {location}"
    );
    assert_eq!(
        stack.get_internal(redirected, "/").await.status,
        200,
        "the internal listener is not redirected"
    );

    // Rotation: a new key pair in the same secret is served without changing any listener.
    let listener_before = listener_version(&stack, "external-https").await;
    assert!(
        listener_before.is_some(),
        "an external HTTPS listener is served"
    );
    let second = certificate(secure);
    write_secret(&dir, "secure-cert", &second);
    let rotated = https_until(https, secure, &second.0, |r| r.status == 200).await;
    assert_ne!(rotated.peer, response.peer);
    assert_eq!(
        listener_version(&stack, "external-https").await,
        listener_before
    );

    // A key that does not match its certificate fails only the ingress that names it, and
    // Envoy never sees it.
    let (_, wrong_key) = certificate(redirected);
    write_secret(
        &dir,
        "redirected-cert",
        &(redirect_cert.0.clone(), wrong_key),
    );
    let failed = stack
        .sluice
        .wait_ingress_ready(NS, "redirected", "False", CONVERGE)
        .await;
    assert_eq!(failed["reason"], "InvalidTLSSecret", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tls.key"),
        "{failed}"
    );
    stack
        .sluice
        .wait_ingress_ready(NS, "secure", "True", CONVERGE)
        .await;
    let still = https_get(https, secure, &second.0)
        .await
        .expect("secure still served");
    assert_eq!(still.status, 200);
    let proxies: Value = stack.sluice.admin_get("/debug/proxies").await.json();
    assert!(
        !proxies.to_string().contains("\"last_nack\":{"),
        "Envoy rejected nothing: {proxies}"
    );
}

in_both_modes!(tls_end_to_end);
