//! How a command reaches a process's HTTP or gRPC port: a TCP address, or a port-forward
//! through the API server to a pod (as `kubectl port-forward` does, with no local port).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

use super::http;

/// How long a gRPC call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to a port.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A Kubernetes error as the API server put it, without the debug form of its Status.
pub fn kube_error(error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => anyhow::anyhow!(
            "the API server answered {} {}: {}",
            status.code,
            status.reason,
            status.message
        ),
        other => anyhow::Error::new(other),
    }
}

#[derive(Clone)]
pub enum Dialer {
    /// host:port.
    Tcp(String),
    /// A port of a pod, through the API server (the pod's own loopback included).
    PortForward(Box<PodPort>),
}

#[derive(Clone)]
pub struct PodPort {
    pub pods: Api<Pod>,
    pub namespace: String,
    pub pod: String,
    pub port: u16,
}

impl Dialer {
    /// Where it leads, for messages.
    pub fn describe(&self) -> String {
        match self {
            Dialer::Tcp(address) => address.clone(),
            Dialer::PortForward(to) => {
                format!(
                    "pod {}/{} port {} (port-forward)",
                    to.namespace, to.pod, to.port
                )
            }
        }
    }

    pub async fn open(&self) -> anyhow::Result<Box<dyn Io>> {
        match self {
            Dialer::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .with_context(|| format!("cannot connect to {address}"))?;
                Ok(Box::new(stream))
            }
            Dialer::PortForward(to) => {
                let PodPort {
                    pods,
                    namespace,
                    pod,
                    port,
                } = to.as_ref();
                let mut forwarder = pods
                    .portforward(pod, &[*port])
                    .await
                    .map_err(kube_error)
                    .with_context(|| {
                    format!(
                        "cannot port-forward to pod {namespace}/{pod} port {port} through the API \
                         server; the same as `kubectl -n {namespace} port-forward pod/{pod} \
                         {port}` needs (the pods/portforward permission, a running pod)"
                    )
                })?;
                let stream = forwarder
                    .take_stream(*port)
                    .context("the port-forward has no stream for its port")?;
                Ok(Box::new(stream))
            }
        }
    }

    /// `GET path` with `Host: localhost`.
    pub async fn get(&self, path: &str) -> anyhow::Result<http::Reply> {
        match self {
            Dialer::Tcp(address) => http::get(address, "localhost", path, None).await,
            Dialer::PortForward(_) => http::get_on(self.open().await?, "localhost", path)
                .await
                .with_context(|| format!("GET {path} from {} failed", self.describe())),
        }
    }

    /// A gRPC channel; each of its connections dials anew.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        match self {
            Dialer::Tcp(address) => Ok(Endpoint::from_shared(format!("http://{address}"))
                .with_context(|| format!("{address} is not HOST:PORT"))?
                .timeout(CALL_TIMEOUT)
                .connect()
                .await?),
            Dialer::PortForward(_) => {
                // The first connection's stream is opened here, so that a refused port-forward
                // reads as the API server's answer rather than as a transport error.
                let first = Arc::new(Mutex::new(Some(self.open().await?)));
                let dialer = self.clone();
                let connector = tower::service_fn(move |_: hyper::Uri| {
                    let dialer = dialer.clone();
                    let opened = first.lock().unwrap_or_else(|p| p.into_inner()).take();
                    async move {
                        let io = match opened {
                            Some(io) => io,
                            None => dialer
                                .open()
                                .await
                                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)?,
                        };
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(io))
                    }
                });
                Ok(Endpoint::from_static("http://sluice.port-forward")
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(connector)
                    .await?)
            }
        }
    }
}
