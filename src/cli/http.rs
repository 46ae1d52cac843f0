//! A small HTTP/1.1 client on hyper for what the commands fetch: sluice's health endpoints,
//! Envoy's admin interface (over TCP or a port-forward), and the request `sluice curl` sends
//! (over TLS with rustls when asked).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// TLS for one request: the server name sent as SNI and checked against the certificate.
pub struct Tls {
    pub server_name: String,
    pub config: Arc<ClientConfig>,
}

/// `GET path` from `addr` (host:port) with `Host: host`.
pub async fn get(addr: &str, host: &str, path: &str, tls: Option<&Tls>) -> anyhow::Result<Reply> {
    tokio::time::timeout(REQUEST_TIMEOUT, send(addr, host, path, tls))
        .await
        .with_context(|| format!("no answer from {addr} within {REQUEST_TIMEOUT:?}"))?
}

/// `GET path` with `Host: host` over a connection already open (e.g. a port-forward).
pub async fn get_on<S>(io: S, host: &str, path: &str) -> anyhow::Result<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = request(host, path)?;
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(TokioIo::new(io), request))
        .await
        .with_context(|| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

fn request(host: &str, path: &str) -> anyhow::Result<Request<Empty<Bytes>>> {
    Request::get(path)
        .header(hyper::header::HOST, host)
        .header(
            hyper::header::USER_AGENT,
            concat!("sluice/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("{path:?} is not a valid request path"))
}

async fn send(addr: &str, host: &str, path: &str, tls: Option<&Tls>) -> anyhow::Result<Reply> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = request(host, path)?;
    let response = match tls {
        None => exchange(TokioIo::new(tcp), request).await,
        Some(tls) => {
            let name = ServerName::try_from(tls.server_name.clone())
                .with_context(|| format!("{:?} is not a valid TLS server name", tls.server_name))?;
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(name, tcp)
                .await
                .with_context(|| {
                    format!("TLS handshake with {addr} for {} failed", tls.server_name)
                })?;
            exchange(TokioIo::new(stream), request).await
        }
    };
    response.with_context(|| format!("the request to {addr} failed"))
}

async fn exchange<S>(io: TokioIo<S>, request: Request<Empty<Bytes>>) -> anyhow::Result<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Reply { status, body })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config that trusts `cacert` (PEM), else the Mozilla roots; or, with
/// `insecure`, any certificate (as `curl --insecure`).
pub fn client_config(cacert: Option<&Path>, insecure: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls has no safe protocol versions")?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match cacert {
            Some(path) => {
                for certificate in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read the CA bundle {}", path.display()))?
                {
                    let certificate = certificate
                        .with_context(|| format!("{} holds an unreadable PEM", path.display()))?;
                    roots.add(certificate).with_context(|| {
                        format!("{} holds a certificate rustls refuses", path.display())
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `--insecure`: accepts any certificate, but still checks the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
