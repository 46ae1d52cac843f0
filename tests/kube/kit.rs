//! What every Kubernetes-mode test needs: a namespace of its own in the shared API server, a
//! sluice watching only it, backends that EndpointSlices can point at, and the status the API
//! server holds.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kube::Api;
use serde_json::Value;
use sluice::knative::{IngressResource, IngressStatus};

use crate::support::cluster::{Applier, Cluster, TEST_ADDRESS};
use crate::support::manifests::{self, SERVICE_PORT};
use crate::support::{Backend, Sluice, Stack, StackOptions, poll_until};

/// How long status and traffic may take to follow a change.
pub const CONVERGE: Duration = Duration::from_secs(20);
/// The Lease duration the tests give sluice (seconds), so that a hand-over is quick.
pub const LEASE_SECONDS: u64 = 4;

/// One test's namespace, and a client that applies objects to it.
pub struct Scene<'a> {
    pub cluster: &'a Cluster,
    pub ns: String,
    pub applier: Applier,
}

impl<'a> Scene<'a> {
    pub async fn new(cluster: &'a Cluster, prefix: &str) -> Scene<'a> {
        let ns = cluster.namespace(prefix).await;
        let applier = Applier::new(cluster.client().await).await;
        Scene {
            cluster,
            ns,
            applier,
        }
    }

    /// The flags that keep a sluice to this test's namespace: its watches, its Lease and its
    /// replicas' reports.
    pub fn sluice_args(&self) -> Vec<String> {
        [
            "--namespace",
            &self.ns,
            "--system-namespace",
            &self.ns,
            "--lease-duration",
            &LEASE_SECONDS.to_string(),
            "--startup-grace",
            "2",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `sluice serve` in Kubernetes mode as the administrator, with `extra` flags.
    pub fn sluice(&self, extra: &[&str]) -> Sluice {
        self.sluice_as(&self.cluster.kubeconfig, extra)
    }

    /// `sluice serve` in Kubernetes mode with the credentials of `kubeconfig`.
    pub fn sluice_as(&self, kubeconfig: &Path, extra: &[&str]) -> Sluice {
        let mut args = self.sluice_args();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sluice::start_in_cluster(kubeconfig, &args)
    }

    /// A sluice and an Envoy it configures, both ready.
    pub async fn stack(&self, delta: bool) -> Stack {
        Stack::start_on(
            self.sluice(&[]),
            StackOptions {
                delta,
                ..StackOptions::default()
            },
        )
        .await
    }

    pub async fn apply(&self, objects: &[Value]) {
        self.applier.apply(objects).await;
    }

    pub async fn delete(&self, objects: &[Value]) {
        self.applier.delete(objects).await;
    }

    /// Service `name` (port [`SERVICE_PORT`], named `http`) with one EndpointSlice pointing at
    /// `backend`.
    pub fn service(&self, name: &str, backend: SocketAddr) -> Vec<Value> {
        vec![
            manifests::service(name, &self.ns, "http", SERVICE_PORT, backend.port()),
            self.slice(name, &format!("{name}-1"), backend),
        ]
    }

    /// An EndpointSlice `slice` of Service `service` with one endpoint, `backend`.
    pub fn slice(&self, service: &str, slice: &str, backend: SocketAddr) -> Value {
        manifests::endpoint_slice_at(
            service,
            slice,
            &self.ns,
            "http",
            &backend.ip().to_string(),
            backend.port(),
        )
    }

    /// An owned ingress `name`: `host` to Service `service` at 100%.
    pub fn ingress(&self, name: &str, host: &str, service: &str) -> Value {
        manifests::Ingress::new(&self.ns, name)
            .rule(manifests::Rule::external(&[host]).path(
                manifests::HttpPath::new().split(manifests::Split::new(
                    &self.ns,
                    service,
                    SERVICE_PORT,
                )),
            ))
            .to_value()
    }

    pub fn ingresses(&self) -> Api<IngressResource> {
        Api::namespaced(self.applier.client().clone(), &self.ns)
    }

    /// The ingress as the API server holds it.
    pub async fn get_ingress(&self, name: &str) -> IngressResource {
        self.ingresses()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get ingress {}/{name}: {e}", self.ns))
    }

    /// Waits until ingress `name`'s status in the API server satisfies `accept`.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        accept: impl Fn(&IngressResource) -> bool,
    ) -> IngressResource {
        let mut last = None;
        let found = poll_until(CONVERGE, async || {
            let ingress = self.ingresses().get(name).await.ok()?;
            if accept(&ingress) {
                return Some(ingress);
            }
            last = Some(ingress.status);
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "ingress {}/{name}: no {what} within {CONVERGE:?}; last status: {last:?}",
                self.ns
            )
        })
    }

    /// Waits until ingress `name` is Ready at its current generation.
    pub async fn wait_ready(&self, name: &str) -> IngressResource {
        self.wait_status(name, "Ready=True at its generation", |ingress| {
            ready(ingress) == Some(("True".to_owned(), String::new())) && observed_current(ingress)
        })
        .await
    }
}

/// A backend on the test address, which EndpointSlices accept.
pub fn backend(name: &str) -> Backend {
    let listener =
        std::net::TcpListener::bind(SocketAddr::new(TEST_ADDRESS, 0)).expect("bind a backend");
    Backend::start_on(name, listener)
}

/// The status and reason of an ingress's `Ready` condition.
pub fn ready(ingress: &IngressResource) -> Option<(String, String)> {
    condition(ingress.status.as_ref()?, "Ready")
}

pub fn condition(status: &IngressStatus, type_: &str) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether the status describes the ingress's current generation.
pub fn observed_current(ingress: &IngressResource) -> bool {
    ingress.status.as_ref().and_then(|s| s.observed_generation) == ingress.metadata.generation
}

/// Requests looped through Envoy by a background task, each checked against the backend that
/// must answer it, until [`TrafficLoop::finish`].
pub struct TrafficLoop {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl TrafficLoop {
    /// Loops `GET host/` to each `(listener address, host, backend)` in turn.
    pub fn start(targets: Vec<(SocketAddr, String, String)>) -> TrafficLoop {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut sent = 0;
            let mut failures = Vec::new();
            while !*stopped.borrow_and_update() {
                for (addr, host, backend) in &targets {
                    sent += 1;
                    match crate::support::client::get(*addr, host, "/", &[]).await {
                        Ok(response)
                            if response.status == 200 && response.backend() == Some(backend) => {}
                        Ok(response) => failures.push(format!(
                            "{host}: {} from {:?}: {}",
                            response.status,
                            response.backend(),
                            response.body.trim()
                        )),
                        Err(error) => failures.push(format!("{host}: {error}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sent, failures)
        });
        TrafficLoop { stop, task }
    }

    /// Stops the loop; panics unless every request was answered by its backend.
    pub async fn finish(self) -> usize {
        self.stop.send_replace(true);
        let (sent, failures) = self.task.await.expect("the traffic loop panicked");
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed; the first: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        sent
    }
}

/// Sends `signal` (e.g. `STOP`, `CONT`, `KILL`) to process `pid`, which the test started.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
