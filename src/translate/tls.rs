//! TLS secrets: validated before anything is pushed, so that one bad secret can never make Envoy
//! reject a listener, and delivered to Envoy by SDS.

use std::sync::LazyLock;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret as EnvoySecret, TlsCertificate, secret,
};
use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a secret cannot serve TLS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("secret {0} does not exist")]
    Missing(String),
    #[error("secret {secret} has no {key}; a TLS secret needs tls.crt and tls.key")]
    MissingKey { secret: String, key: &'static str },
    #[error("secret {secret}: {key} is not PEM that sluice can read: {reason}")]
    BadPem {
        secret: String,
        key: &'static str,
        reason: String,
    },
    #[error("secret {secret}: tls.key does not belong to the certificate in tls.crt: {reason}")]
    KeyMismatch { secret: String, reason: String },
    #[error(
        "secret {0} has no ca.crt; certs-secret-name must name a Secret with the CA of Knative's \
         system-internal certificates in ca.crt"
    )]
    MissingCa(String),
}

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(rustls::crypto::ring::default_provider);

/// A certificate chain and key that parse and belong together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub certificate_chain: Vec<u8>,
    pub private_key: Vec<u8>,
}

fn field<'a>(secret: &'a Secret, name: &str, key: &'static str) -> Result<&'a [u8], SecretProblem> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| bytes.0.as_slice())
        .filter(|bytes| !bytes.is_empty())
        .ok_or_else(|| SecretProblem::MissingKey {
            secret: name.to_owned(),
            key,
        })
}

/// Checks a `kubernetes.io/tls`-shaped secret: both keys present, PEM that parses, and the key
/// matching the first certificate.
pub fn validate(name: &str, secret: Option<&Secret>) -> Result<KeyPair, SecretProblem> {
    let secret = secret.ok_or_else(|| SecretProblem::Missing(name.to_owned()))?;
    let certificate_pem = field(secret, name, "tls.crt")?;
    let key_pem = field(secret, name, "tls.key")?;
    let bad_pem = |key: &'static str, reason: String| SecretProblem::BadPem {
        secret: name.to_owned(),
        key,
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad_pem("tls.crt", error.to_string()))?;
    if certificates.is_empty() {
        return Err(bad_pem("tls.crt", "no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| bad_pem("tls.key", error.to_string()))?;
    CertifiedKey::from_der(certificates, key, &PROVIDER).map_err(|error| {
        SecretProblem::KeyMismatch {
            secret: name.to_owned(),
            reason: error.to_string(),
        }
    })?;
    Ok(KeyPair {
        certificate_chain: certificate_pem.to_vec(),
        private_key: key_pem.to_vec(),
    })
}

/// Checks that a secret's `ca.crt` holds PEM certificates, and returns it.
pub fn validate_ca(name: &str, secret: Option<&Secret>) -> Result<Vec<u8>, SecretProblem> {
    let secret = secret.ok_or_else(|| SecretProblem::Missing(name.to_owned()))?;
    let pem = secret
        .data
        .as_ref()
        .and_then(|data| data.get("ca.crt"))
        .map(|bytes| bytes.0.as_slice())
        .filter(|bytes| !bytes.is_empty())
        .ok_or_else(|| SecretProblem::MissingCa(name.to_owned()))?;
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| SecretProblem::BadPem {
            secret: name.to_owned(),
            key: "ca.crt",
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(SecretProblem::BadPem {
            secret: name.to_owned(),
            key: "ca.crt",
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(pem.to_vec())
}

/// The SDS resource that verifies peers against a CA.
pub fn envoy_validation_secret(name: &str, ca: &[u8]) -> EnvoySecret {
    EnvoySecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(ca.to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

/// The SDS resource for a validated key pair.
pub fn envoy_secret(name: &str, pair: &KeyPair) -> EnvoySecret {
    let inline = |bytes: &[u8]| DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    };
    EnvoySecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&pair.certificate_chain)),
            private_key: Some(inline(&pair.private_key)),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    /// A self-signed certificate for `hosts` and its key, as PEM.
    pub(crate) fn self_signed(hosts: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let certificate = params.self_signed(&key).unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    pub(crate) fn secret(certificate: &str, key: &str) -> Secret {
        Secret {
            data: Some(
                [
                    (
                        "tls.crt".to_owned(),
                        ByteString(certificate.as_bytes().to_vec()),
                    ),
                    ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_matching_pair_is_valid() {
        let (certificate, key) = self_signed(&["a.example.com"]);
        let pair = validate("ns/a", Some(&secret(&certificate, &key))).unwrap();
        assert_eq!(pair.certificate_chain, certificate.as_bytes());
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let (certificate, _) = self_signed(&["a.example.com"]);
        let (_, other_key) = self_signed(&["b.example.com"]);
        let problem = validate("ns/a", Some(&secret(&certificate, &other_key))).unwrap_err();
        assert!(
            matches!(problem, SecretProblem::KeyMismatch { .. }),
            "{problem}"
        );
    }

    #[test]
    fn missing_and_garbled_secrets_say_what_is_wrong() {
        assert_eq!(
            validate("ns/a", None).unwrap_err().to_string(),
            "secret ns/a does not exist"
        );
        let (certificate, _) = self_signed(&["a.example.com"]);
        let problem = validate("ns/a", Some(&secret(&certificate, "not pem"))).unwrap_err();
        assert!(problem.to_string().contains("tls.key"), "{problem}");
        let problem = validate("ns/a", Some(&secret("", "x"))).unwrap_err();
        assert_eq!(
            problem,
            SecretProblem::MissingKey {
                secret: "ns/a".into(),
                key: "tls.crt"
            }
        );
    }
}
