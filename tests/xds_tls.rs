//! xDS over mutual TLS: `serve --xds-tls-cert/--xds-tls-key/--xds-client-ca` and
//! `bootstrap --xds-ca/--xds-client-cert/--xds-client-key`. An Envoy with a client certificate
//! of the CA is served; one without a client certificate, or with one of another CA, is refused
//! before any config reaches it. No private key (sluice's, Envoy's, an ingress's TLS secret)
//! appears in any output of the run. Both modes, real Envoy.

#[macro_use]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::sluice::{run_cli, run_sluice};
use support::{Backend, Envoy, ManifestDir, Sluice, Stack, local, poll_until};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);
/// How long a refused Envoy is watched for any config reaching it.
const REFUSED_FOR: Duration = Duration::from_secs(3);

/// A CA, sluice's certificate (for 127.0.0.1) and an Envoy client certificate it signed, and a
/// client certificate of another CA: PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    keys: Vec<String>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a directory for certificates");
        let mut pki = Pki {
            dir,
            keys: Vec::new(),
        };
        let ca = pki.ca("ca");
        let other = pki.ca("other-ca");
        pki.leaf("server", "127.0.0.1", &ca);
        pki.leaf("client", "envoy.sluice.test", &ca);
        pki.leaf("stranger", "envoy.sluice.test", &other);
        pki
    }

    fn ca(&mut self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("sluice test {name}"));
        let key = KeyPair::generate().expect("a CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("a CA");
        std::fs::write(self.path(&format!("{name}.crt")), ca.pem()).expect("write the CA");
        ca
    }

    fn leaf(&mut self, name: &str, san: &str, ca: &CertifiedIssuer<'static, KeyPair>) {
        let key = KeyPair::generate().expect("a key");
        let certificate = CertificateParams::new(vec![san.to_owned()])
            .expect("parameters")
            .signed_by(&key, ca)
            .expect("a certificate");
        std::fs::write(self.path(&format!("{name}.crt")), certificate.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
        self.keys.push(key.serialize_pem());
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

/// A piece of each private key's PEM body that no output may hold.
fn key_fingerprints(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|pem| {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            body[body.len() / 2..body.len() / 2 + 32].to_owned()
        })
        .collect()
}

fn bootstrap(sluice: &Sluice, node: &str, delta: bool, tls: &[String]) -> String {
    let mut args = vec![
        "bootstrap".to_owned(),
        "--xds-addr".to_owned(),
        sluice.xds_addr().to_string(),
        "--node-id".to_owned(),
        node.to_owned(),
        "--admin-addr".to_owned(),
        local(0).to_string(),
    ];
    if delta {
        args.push("--delta".to_owned());
    }
    args.extend(tls.iter().cloned());
    run_sluice(&args)
}

/// An Envoy refused by sluice: never connected, and never given a listener.
async fn expect_refused(sluice: &Sluice, envoy: &Envoy, node: &str) {
    // It never becomes ready: it waits for its first config.
    let up = poll_until(CONVERGE, async || envoy.try_admin_get("/ready").await.ok()).await;
    assert!(up.is_some(), "{node}'s admin never answered");
    tokio::time::sleep(REFUSED_FOR).await;
    let proxies = sluice.admin_get("/debug/proxies").await.body;
    assert!(
        !proxies.contains(node),
        "{node} must not be connected: {proxies}"
    );
    let listeners = envoy.admin_get("/listeners?format=json").await.body;
    assert!(
        !listeners.contains("external-http"),
        "{node} got config: {listeners}"
    );
    // With TLS 1.3 the client sees its handshake done before the server checks its certificate,
    // so Envoy may count a connection: what matters is that no config came through it.
    let stats = envoy
        .admin_get("/stats?filter=(cds|lds).update_success")
        .await
        .body;
    assert!(
        stats.contains("cluster_manager.cds.update_success: 0")
            && stats.contains("listener_manager.lds.update_success: 0"),
        "{node}: {stats}"
    );
}

async fn only_envoys_with_a_client_certificate_are_served(delta: bool) {
    let pki = Pki::new();
    let backend = Backend::start("hello").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("hello", NS, backend.port(), "http"),
    );
    // An ingress TLS secret too: its key must not show anywhere either.
    let (certificate, ingress_key) = support::tls::certificate("hello.example.com");
    dir.write(
        "secret.yaml",
        &manifests::to_yaml(&manifests::tls_secret(
            NS,
            "hello-tls",
            &certificate,
            &ingress_key,
        )),
    );
    let ingress = Ingress::new(NS, "hello")
        .rule(
            Rule::external(&["hello.example.com"]).path(HttpPath::new().split(Split::new(
                NS,
                "hello",
                SERVICE_PORT,
            ))),
        )
        .tls(&["hello.example.com"], NS, "hello-tls");
    dir.write("hello.yaml", &ingress.to_yaml());

    let sluice = Sluice::start_with(
        dir.path(),
        &[
            "--xds-tls-cert",
            &pki.arg("server.crt"),
            "--xds-tls-key",
            &pki.arg("server.key"),
            "--xds-client-ca",
            &pki.arg("ca.crt"),
        ],
    );
    sluice.wait_ready().await;
    let mtls = [
        "--xds-ca".to_owned(),
        pki.arg("ca.crt"),
        "--xds-client-cert".to_owned(),
        pki.arg("client.crt"),
        "--xds-client-key".to_owned(),
        pki.arg("client.key"),
    ];
    let trusted = bootstrap(&sluice, "trusted", delta, &mtls);
    let envoy = Envoy::start_with(&trusted, &[]);
    envoy.wait_ready().await;
    let stack = Stack { envoy, sluice };
    stack
        .sluice
        .wait_ingress_ready(NS, "hello", "True", CONVERGE)
        .await;
    let response = stack.get("hello.example.com", "/").await;
    assert_eq!((response.status, response.body.as_str()), (200, "hello"));

    let no_certificate = bootstrap(
        &stack.sluice,
        "no-certificate",
        delta,
        &["--xds-ca".to_owned(), pki.arg("ca.crt")],
    );
    let anonymous = Envoy::start_with(&no_certificate, &[]);
    expect_refused(&stack.sluice, &anonymous, "no-certificate").await;

    let mut other_ca = mtls.clone();
    other_ca[3] = pki.arg("stranger.crt");
    other_ca[5] = pki.arg("stranger.key");
    let stranger_bootstrap = bootstrap(&stack.sluice, "stranger", delta, &other_ca);
    let stranger = Envoy::start_with(&stranger_bootstrap, &[]);
    expect_refused(&stack.sluice, &stranger, "stranger").await;

    // Plain gRPC to a TLS port is refused too.
    let plain = Envoy::start_with(&bootstrap(&stack.sluice, "plain", delta, &[]), &[]);
    expect_refused(&stack.sluice, &plain, "plain").await;

    // Every output of the run, searched for the keys.
    let admin = stack.sluice.admin_addr().to_string();
    let envoy_admin = stack
        .envoy
        .admin_addr()
        .expect("Envoy's admin address")
        .to_string();
    let mut outputs = vec![
        trusted,
        no_certificate,
        stranger_bootstrap,
        stack.sluice.logs(),
        stack.sluice.admin_get("/debug/config").await.body,
        stack.sluice.admin_get("/debug/proxies").await.body,
        stack.sluice.admin_get("/metrics").await.body,
    ];
    let commands: [&[&str]; 6] = [
        &["get", "ingress", "-A", "-o", "yaml"],
        &["proxy", "status", "-o", "json"],
        &["proxy", "served-config", "--node", "trusted", "-o", "json"],
        &["proxy", "served-config", "--role", "both", "-o", "yaml"],
        &[
            "proxy",
            "dump",
            "-o",
            "json",
            "--envoy-admin-addr",
            &envoy_admin,
        ],
        &["check"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--admin-addr", &admin]);
        let output = run_cli(&args).await;
        outputs.push(format!("{}{}", output.stdout, output.stderr));
    }
    let mut keys = pki.keys.clone();
    keys.push(ingress_key);
    for fingerprint in key_fingerprints(&keys) {
        for (index, output) in outputs.iter().enumerate() {
            assert!(
                !output.contains(&fingerprint),
                "output {index} holds a private key"
            );
        }
    }
    let served = &outputs[outputs.len() - 3];
    assert!(
        served.contains("hello-tls"),
        "the SDS secret was looked at: {served}"
    );
}

/// A key or certificate that cannot be used stops `serve` with a message naming the file,
/// and never its content.
#[tokio::test]
async fn unusable_tls_files_are_clear_errors() {
    let pki = Pki::new();
    let dir = ManifestDir::new();
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let cases = [
        (
            pki.arg("missing.crt"),
            pki.arg("server.key"),
            "cannot read the xDS TLS certificate",
        ),
        (
            not_pem.display().to_string(),
            pki.arg("server.key"),
            "holds no PEM certificate",
        ),
        (
            pki.arg("server.crt"),
            not_pem.display().to_string(),
            "holds no PEM private key",
        ),
    ];
    for (certificate, key, expected) in cases {
        let sluice = Sluice::start_with(
            dir.path(),
            &["--xds-tls-cert", &certificate, "--xds-tls-key", &key],
        );
        let exited = poll_until(CONVERGE, async || sluice.exited()).await;
        assert!(
            exited.is_some_and(|status| !status.success()),
            "sluice must stop"
        );
        let logs = sluice.logs();
        assert!(logs.contains(expected), "{expected}: {logs}");
        for fingerprint in key_fingerprints(&pki.keys) {
            assert!(!logs.contains(&fingerprint));
        }
    }
}

in_both_modes!(only_envoys_with_a_client_certificate_are_served);
