//! The certificates of xDS over mutual TLS in a cluster, made the way Gloo's, Istio's and
//! linkerd's installs make theirs without cert-manager: a private CA signs sluice's server
//! certificate and the proxies' client certificate, each kept in a `kubernetes.io/tls` Secret
//! (`tls.crt`, `tls.key`, `ca.crt`, the shape cert-manager writes too). The CA's key signs the
//! two certificates and is dropped: a stolen Secret cannot mint new identities.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, Error as KubeError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;

use super::InstallError;

/// sluice's certificate and key, and the CA the proxies' client certificates must chain to.
pub const SERVER_SECRET: &str = "sluice-xds-server";
/// The proxies' client certificate and key, and the CA sluice's certificate must chain to.
pub const CLIENT_SECRET: &str = "sluice-xds-client";
/// The files of a `kubernetes.io/tls` Secret, as mounted.
pub const CERTIFICATE_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";
/// How long the certificates sluice makes are valid, in years. Nothing renews them: see
/// docs/security.md for replacing them.
pub const VALID_YEARS: i16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot make the xDS {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
}

/// The names sluice's Service answers to in `namespace`, each a SAN of its certificate: the
/// proxies dial the last.
pub fn server_names(namespace: &str) -> Vec<String> {
    vec![
        "sluice".to_owned(),
        format!("sluice.{namespace}"),
        format!("sluice.{namespace}.svc"),
        format!("sluice.{namespace}.svc.cluster.local"),
    ]
}

/// The last day of certificates made `today`.
pub fn valid_until(today: jiff::civil::Date) -> jiff::civil::Date {
    today.saturating_add(jiff::Span::new().years(VALID_YEARS))
}

/// The two Secrets, [`SERVER_SECRET`] then [`CLIENT_SECRET`], of a new CA, valid from `today`
/// for [`VALID_YEARS`].
pub fn generate(
    namespace: &str,
    today: jiff::civil::Date,
) -> Result<[Secret; 2], CertificateError> {
    let fail = |what| move |source| CertificateError::Generate { what, source };
    let until = valid_until(today);
    // jiff's months and days are 1..=12 and 1..=31: they fit.
    let midnight = |day: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(day.year()), day.month() as u8, day.day() as u8)
    };
    let validity = |params: &mut CertificateParams| {
        params.not_before = midnight(today);
        params.not_after = midnight(until);
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA"))?;
    validity(&mut ca_params);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("sluice xDS CA ({namespace})"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail("CA key"))?)
        .map_err(fail("CA"))?;

    let leaf = |what: &'static str, names: Vec<String>, common_name: String, usage| {
        let mut params = CertificateParams::new(names).map_err(fail(what))?;
        validity(&mut params);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().map_err(fail(what))?;
        let certificate = params.signed_by(&key, &ca).map_err(fail(what))?;
        Ok((certificate.pem(), key.serialize_pem()))
    };
    let server = leaf(
        "server certificate",
        server_names(namespace),
        format!("sluice.{namespace}.svc"),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let client = leaf(
        "client certificate",
        Vec::new(),
        format!("knative-proxy.{namespace}"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let ca = ca.pem();
    Ok([
        secret(namespace, SERVER_SECRET, server, &ca),
        secret(namespace, CLIENT_SECRET, client, &ca),
    ])
}

fn secret(namespace: &str, name: &str, (certificate, key): (String, String), ca: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CERTIFICATE_FILE, certificate),
        (KEY_FILE, key),
        (CA_FILE, ca.to_owned()),
    ]
    .into_iter()
    .map(|(file, pem)| (file.to_owned(), ByteString(pem.into_bytes())))
    .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "sluice"},
        },
        "type": "kubernetes.io/tls",
        "data": data,
    }))
    .expect("a Secret reads back")
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Both Secrets were made, valid until this day.
    Created { until: jiff::civil::Date },
    /// Both existed (made earlier, or brought by the operator) and were left as they are.
    Existing,
}

/// Creates both Secrets in `namespace` when neither exists; never changes an existing one.
/// One without the other is refused: a new CA would not match the one that is there.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    today: jiff::civil::Date,
) -> Result<Ensured, InstallError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let exists = async |name: &str| {
        api.get_opt(name)
            .await
            .map(|found| found.is_some())
            .map_err(|source| InstallError::Read {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })
    };
    match (exists(SERVER_SECRET).await?, exists(CLIENT_SECRET).await?) {
        (false, false) => {}
        (true, true) => return Ok(Ensured::Existing),
        (server, _) => {
            let (present, missing) = if server {
                (SERVER_SECRET, CLIENT_SECRET)
            } else {
                (CLIENT_SECRET, SERVER_SECRET)
            };
            return Err(InstallError::HalfTheXdsSecrets {
                namespace: namespace.to_owned(),
                present: present.to_owned(),
                missing: missing.to_owned(),
            });
        }
    }
    for secret in generate(namespace, today)? {
        let name = secret.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            // Made meanwhile by someone else: theirs stays.
            Err(KubeError::Api(status)) if status.code == 409 => {}
            Err(source) => {
                return Err(InstallError::Create {
                    kind: "Secret",
                    namespace: namespace.to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(Ensured::Created {
        until: valid_until(today),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn file<'a>(secret: &'a Secret, name: &str) -> &'a [u8] {
        &secret.data.as_ref().unwrap()[name].0
    }

    fn certificate(pem: &[u8]) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem).expect("a PEM certificate")
    }

    fn at(day: jiff::civil::Date) -> UnixTime {
        let seconds = day
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second();
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds as u64))
    }

    #[test]
    fn the_server_certificate_names_the_service_and_the_client_one_is_of_the_same_ca() {
        let today = jiff::civil::date(2026, 12, 2);
        let [server, client] = generate("edge", today).unwrap();
        assert_eq!(server.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(file(&server, CA_FILE), file(&client, CA_FILE));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate(file(&server, CA_FILE))).unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = at(jiff::civil::date(2027, 6, 1));

        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        for name in server_names("edge") {
            servers
                .verify_server_cert(
                    &certificate(file(&server, CERTIFICATE_FILE)),
                    &[],
                    &ServerName::try_from(name.clone()).unwrap(),
                    &[],
                    now,
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(
            servers
                .verify_server_cert(
                    &certificate(file(&server, CERTIFICATE_FILE)),
                    &[],
                    &ServerName::try_from("sluice.other.svc").unwrap(),
                    &[],
                    now,
                )
                .is_err()
        );
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        clients
            .verify_client_cert(&certificate(file(&client, CERTIFICATE_FILE)), &[], now)
            .unwrap();
        assert!(
            clients
                .verify_client_cert(&certificate(file(&server, CERTIFICATE_FILE)), &[], now)
                .is_err(),
            "sluice's certificate is not a client's"
        );
        let expired = clients.verify_client_cert(
            &certificate(file(&client, CERTIFICATE_FILE)),
            &[],
            at(valid_until(today).tomorrow().unwrap()),
        );
        assert!(expired.is_err(), "valid after {}", valid_until(today));
        for secret in [&server, &client] {
            let key = std::str::from_utf8(file(secret, KEY_FILE)).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        }
    }

    #[test]
    fn each_install_gets_its_own_ca() {
        let today = jiff::civil::date(2026, 12, 2);
        let [first, _] = generate("gloo-system", today).unwrap();
        let [second, _] = generate("gloo-system", today).unwrap();
        assert_ne!(file(&first, CA_FILE), file(&second, CA_FILE));
    }
}
