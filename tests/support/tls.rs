//! TLS for tests: self-signed certificates and an HTTPS client that dials a given address with
//! a given SNI, trusting only the certificate it is handed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A self-signed certificate for `host` and its key, as PEM.
pub fn certificate(host: &str) -> (String, String) {
    certificate_for(&[host])
}

/// A self-signed certificate for all of `hosts` and its key, as PEM.
pub fn certificate_for(hosts: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let names = hosts
        .iter()
        .map(|host| host.to_string())
        .collect::<Vec<_>>();
    let certificate = rcgen::CertificateParams::new(names)
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("a self-signed certificate");
    (certificate.pem(), key.serialize_pem())
}

pub struct HttpsResponse {
    pub status: u16,
    pub body: String,
    /// The certificate the server presented.
    pub peer: CertificateDer<'static>,
}

/// `GET https://{host}/` over TLS to `addr`, with SNI `host`, trusting only `trusted` (PEM).
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    trusted: &str,
) -> Result<HttpsResponse, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} for {host}: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("no server certificate")?
            .clone()
            .into_owned();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(HttpsResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            peer,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("https://{host} via {addr}: timed out"))?
}
