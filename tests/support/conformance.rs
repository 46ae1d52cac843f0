//! The helpers of Knative's ingress conformance suite (knative.dev/networking
//! `test/conformance/ingress/util.go`) for sluice, in file mode and in Kubernetes mode: an
//! [`Env`] is the "cluster" (sluice, one Envoy, and where the objects go) plus an HTTP client
//! aimed at the public load balancer (Envoy's external listener), and its methods are the
//! suite's `CreateRuntimeService`, `CreateIngressReady`, `UpdateIngressReady`,
//! `RuntimeRequest` and friends. The cases themselves are in [`cases`], written once for both
//! modes.
//!
//! How the cluster maps onto each [`Target`]:
//! - A Pod is an in-process [`Image`] on a fresh port of the Pod IP: 127.0.0.1 in file mode,
//!   [`TEST_ADDRESS`] in Kubernetes mode (the API server refuses loopback endpoints). Its
//!   Service is a `v1` Service plus, in file mode, Endpoints written into the manifest
//!   directory, and in Kubernetes mode an EndpointSlice applied to the API server. Deleting
//!   the Service removes both and stops the image.
//! - Each case has a namespace of its own: [`NAMESPACE`] in file mode (each case has its own
//!   directory), a fresh one in the shared API server in Kubernetes mode, which its sluice
//!   alone watches (`--namespace`).
//! - An Ingress is written as the suite would create it: Knative's defaults applied
//!   (`SetDefaults`: visibility, 100% for a lone split) plus the suite's `httpOption: Enabled`,
//!   and the class annotation of sluice's class; Secrets likewise.
//! - "Ready" is Knative's `IsReady` (`observedGeneration == generation` and `Ready=True`). In
//!   Kubernetes mode that is read, as the suite does, from the ingress's status in the API
//!   server; then sluice's served route configurations must carry the spec's Knative hash
//!   (`K-Network-Hash`, computed here independently by [`knative_hash`]). File mode has no
//!   `observedGeneration`, so "sluice has observed this spec" is that hash in the served
//!   configuration, and then `Ready=True` (from `sluice get ingress`) means Envoy has ACKed
//!   that version.
//! - Load balancers: sluice reports domains in the status; the public one is dialled at
//!   Envoy's external listener and the private one at the internal listener, as the suite's
//!   `CreateDialContext` would resolve them in a cluster.
//!
//! Checks the suite makes with `t.Error` on the control plane's status (rather than on
//! traffic) are recorded with [`Env::error`] and reported together by [`Env::finish`], so one
//! status problem does not hide whether traffic flows.

#[macro_use]
pub mod cases;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Api;
use serde_json::{Value, json};
use sha2::Digest;
use sluice::knative::IngressResource;
use tokio_tungstenite::tungstenite::Message;

use super::client::{Response, WebSocket};
use super::cluster::{Applier, Cluster, TEST_ADDRESS};
use super::images::{Image, RuntimeInfo};
use super::manifests::{self, HttpPath, INGRESS_CLASS, Ingress, Rule, Split};
use super::{ManifestDir, Sluice, Stack, StackOptions, error_chain, poll_until};

/// `test.ServingNamespace`: the namespace of every file-mode case.
pub const NAMESPACE: &str = "serving-tests";
/// `test.NetworkingFlags.ServiceDomain`.
pub const SERVICE_DOMAIN: &str = "example.com";
/// `test.NetworkingFlags.ClusterSuffix`.
pub const CLUSTER_SUFFIX: &str = "cluster.local";
/// `networking.ServicePortNameHTTP1`.
pub const PORT_NAME_HTTP1: &str = "http";
/// `networking.ServicePortNameH2C`.
pub const PORT_NAME_H2C: &str = "h2c";
/// `networking.AppProtocolH2C`.
pub const APP_PROTOCOL_H2C: &str = "kubernetes.io/h2c";
/// How long an ingress may take to become Ready after a write (the suite's `PollTimeout` is
/// minutes; sluice takes well under a second).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one request through the client may take (connect, send, whole body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The environment

/// Where a case runs, and over which ADS variant its Envoy talks to sluice.
#[derive(Clone, Copy)]
pub enum Target {
    /// sluice in file mode: objects are manifests in its directory.
    Files { delta: bool },
    /// sluice in Kubernetes mode: objects go through `cluster`'s API server, in a namespace of
    /// the case's own.
    Cluster {
        cluster: &'static Cluster,
        delta: bool,
    },
}

/// Where an [`Env`] puts the objects a case creates.
enum Objects {
    /// A manifest directory, one file per Service (with its Endpoints), Ingress or Secret.
    Files(ManifestDir),
    /// The API server, with what each apply returned (by `kind/name`), for checks that the
    /// object was left alone.
    Api {
        applier: Box<Applier>,
        applied: Mutex<BTreeMap<String, Value>>,
    },
}

/// One "cluster": sluice, one Envoy and where the objects go, and a keep-alive HTTP client
/// dialling the public load balancer, like the `*http.Client` of `CreateIngressReady`.
pub struct Env {
    pub stack: Stack,
    /// Dials Envoy's external listener whatever the URL's host.
    pub client: HttpClient,
    objects: Objects,
    namespace: String,
    test: String,
    names: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// A Service with its Pod: the in-process image behind it.
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// The Service port (what an ingress split names).
    pub port: u16,
    pub image: Image,
    /// The Service and its endpoints, as written.
    objects: Vec<Value>,
}

/// An ingress that has become Ready, as `CreateIngressReady` returns it.
pub struct ReadyIngress {
    /// The ingress as written (defaults applied).
    pub ingress: Ingress,
    /// Its Knative hash ([`knative_hash`]).
    pub hash: String,
    /// Its status once Ready: its `sluice get ingress -o json` entry in file mode, its
    /// `status` in the API server in Kubernetes mode.
    pub status: Value,
    /// `status.publicLoadBalancer.ingress[0].domainInternal` (empty if absent).
    pub public_domain: String,
    /// `status.privateLoadBalancer.ingress[0].domainInternal` (empty if absent).
    pub private_domain: String,
}

impl ReadyIngress {
    pub fn name(&self) -> &str {
        &self.ingress.name
    }
}

impl Env {
    /// Starts sluice and an Envoy for `target`, with no object yet. `test` names the objects
    /// this test creates, like `test.ObjectNameForTest` (and, in Kubernetes mode, its
    /// namespace).
    pub async fn start(target: Target, test: &str) -> Env {
        let (stack, objects, namespace) = match target {
            Target::Files { delta } => {
                let dir = ManifestDir::new();
                let stack = Stack::start(dir.path(), delta).await;
                (stack, Objects::Files(dir), NAMESPACE.to_owned())
            }
            Target::Cluster { cluster, delta } => {
                let namespace = cluster.namespace(test).await;
                let applier = Applier::new(cluster.client().await).await;
                let sluice = Sluice::start_in_cluster(
                    &cluster.kubeconfig,
                    &["--namespace", &namespace, "--system-namespace", &namespace],
                );
                let options = StackOptions {
                    delta,
                    ..StackOptions::default()
                };
                let stack = Stack::start_on(sluice, options).await;
                let objects = Objects::Api {
                    applier: Box::new(applier),
                    applied: Mutex::new(BTreeMap::new()),
                };
                (stack, objects, namespace)
            }
        };
        let client = HttpClient::new(stack.http_addr());
        Env {
            stack,
            client,
            objects,
            namespace,
            test: test.to_string(),
            names: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// The namespace of this case's objects (`test.ServingNamespace`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The address Pods listen on: loopback in file mode; in Kubernetes mode the test
    /// address, which EndpointSlices accept.
    fn pod_ip(&self) -> IpAddr {
        match self.objects {
            Objects::Files(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Objects::Api { .. } => TEST_ADDRESS,
        }
    }

    /// Creates or updates `objects`: as the manifest `file`, or applied to the API server.
    async fn put(&self, file: &str, objects: &[Value]) {
        match &self.objects {
            Objects::Files(dir) => dir.write(file, &manifests::documents(objects)),
            Objects::Api { applier, applied } => {
                for object in objects {
                    let held = applier.apply_one(object).await;
                    let held = serde_json::to_value(held).expect("an applied object as JSON");
                    applied
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(object_key(object), held);
                }
            }
        }
    }

    /// Deletes `objects`, written by [`Env::put`] as `file`.
    async fn remove(&self, file: &str, objects: &[Value]) {
        match &self.objects {
            Objects::Files(dir) => dir.remove(file),
            Objects::Api { applier, .. } => applier.delete(objects).await,
        }
    }

    /// A fresh object name for this test: `<test>-<n><random>`, a valid DNS label.
    pub fn object_name(&self) -> String {
        use std::hash::{BuildHasher, Hasher};
        let n = self.names.fetch_add(1, Ordering::SeqCst);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(n);
        let mut bits = hasher.finish();
        let mut suffix = String::new();
        for _ in 0..5 {
            suffix.push(char::from(
                b"abcdefghijklmnopqrstuvwxyz0123456789"[(bits % 36) as usize],
            ));
            bits /= 36;
        }
        format!("{}-{n}{suffix}", self.test)
    }

    /// `name` under the service domain: `name.example.com`.
    pub fn domain(&self, name: &str) -> String {
        format!("{name}.{SERVICE_DOMAIN}")
    }

    /// Records a non-fatal failure (Go's `t.Error`), reported by [`Env::finish`].
    pub fn error(&self, message: impl Into<String>) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.into());
    }

    /// Fails the test if [`Env::error`] recorded anything.
    pub fn finish(self) {
        let errors = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()));
        assert!(
            errors.is_empty(),
            "{} check(s) failed:\n- {}",
            errors.len(),
            errors.join("\n- ")
        );
    }

    // -----------------------------------------------------------------------------------------
    // Services

    /// A Service port in the suite's range (50..100), mapped to the image's port.
    fn service_port(&self) -> u16 {
        50 + (self.names.load(Ordering::SeqCst) * 7 % 50) as u16
    }

    /// Service `name` (one port, `port_name` and `app_protocol` exactly as given) and its
    /// endpoints at the image: Endpoints in file mode, an EndpointSlice in Kubernetes mode.
    fn service_objects(
        &self,
        name: &str,
        port_name: Option<&str>,
        app_protocol: Option<&str>,
        port: u16,
        image: &Image,
    ) -> Vec<Value> {
        let mut service_port = json!({
            "port": port,
            "protocol": "TCP",
            "targetPort": image.port(),
        });
        let mut endpoint_port = json!({"port": image.port(), "protocol": "TCP"});
        if let Some(port_name) = port_name {
            service_port["name"] = json!(port_name);
            endpoint_port["name"] = json!(port_name);
        }
        if let Some(app_protocol) = app_protocol {
            service_port["appProtocol"] = json!(app_protocol);
        }
        let namespace = &self.namespace;
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": {"test-pod": name}},
            "spec": {"type": "ClusterIP", "ports": [service_port]},
        });
        let ip = image.addr().ip().to_string();
        let endpoints = match self.objects {
            Objects::Files(_) => json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name, "namespace": namespace},
                "subsets": [{"addresses": [{"ip": ip}], "ports": [endpoint_port]}],
            }),
            Objects::Api { .. } => json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-pod"),
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                "ports": [endpoint_port],
            }),
        };
        vec![service, endpoints]
    }

    async fn create_service(
        &self,
        port_name: Option<&str>,
        app_protocol: Option<&str>,
        image: impl FnOnce(IpAddr, &str) -> Image,
    ) -> Service {
        let name = self.object_name();
        let port = self.service_port();
        let image = image(self.pod_ip(), &name);
        let objects = self.service_objects(&name, port_name, app_protocol, port, &image);
        self.put(&service_file(&name), &objects).await;
        Service {
            name,
            namespace: self.namespace.clone(),
            port,
            image,
            objects,
        }
    }

    /// `CreateRuntimeService`: the runtime image behind a Service port named `port_name`
    /// (with `appProtocol` if given).
    pub async fn create_runtime_service(
        &self,
        port_name: &str,
        app_protocol: Option<&str>,
    ) -> Service {
        self.create_service(Some(port_name), app_protocol, Image::runtime)
            .await
    }

    /// `CreateTimeoutService`: the timeout image behind port `http`.
    pub async fn create_timeout_service(&self) -> Service {
        self.create_service(Some(PORT_NAME_HTTP1), None, Image::timeout)
            .await
    }

    /// `CreateRetryService`: the retry image behind port `h2c` (no `appProtocol`).
    pub async fn create_retry_service(&self) -> Service {
        self.create_service(Some(PORT_NAME_H2C), None, Image::retry)
            .await
    }

    /// `CreateWebsocketService`: the wsserver image (`SUFFIX=suffix`) behind port `http`.
    pub async fn create_websocket_service(&self, suffix: &str) -> Service {
        self.create_service(Some(PORT_NAME_HTTP1), None, |ip, name| {
            Image::wsserver(ip, name, suffix)
        })
        .await
    }

    /// `CreateGRPCService`: the grpc-ping image (`SUFFIX=suffix`) behind port `h2c` with
    /// `appProtocol: kubernetes.io/h2c`.
    pub async fn create_grpc_service(&self, suffix: &str) -> Service {
        self.create_service(Some(PORT_NAME_H2C), Some(APP_PROTOCOL_H2C), |ip, name| {
            Image::grpc_ping(ip, name, suffix)
        })
        .await
    }

    /// `CreateProxyService`: the httpproxy image (`TARGET_HOST=target`, gateway at `gateway`)
    /// behind an unnamed port.
    pub async fn create_proxy_service(&self, target: &str, gateway: SocketAddr) -> Service {
        self.create_service(None, None, |ip, name| {
            Image::httpproxy(ip, name, target, gateway)
        })
        .await
    }

    /// `createExternalNameService`: Service `<first label of target>` in the namespace of its
    /// second label, of type ExternalName pointing at the gateway. In a cluster its port is 80,
    /// the gateway's port; here the gateway (an Envoy listener) is on a free port, so the
    /// Service port is that port (sluice resolves an ExternalName Service to
    /// `externalName:port`). Returns its name and port.
    pub async fn create_external_name_service(
        &self,
        target: &str,
        gateway: SocketAddr,
    ) -> (String, u16) {
        let labels: Vec<&str> = target.splitn(3, '.').collect();
        assert!(labels.len() >= 2, "target {target} has no namespace label");
        let (name, namespace) = (labels[0], labels[1]);
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "sessionAffinity": "None",
                "ports": [{
                    "name": PORT_NAME_H2C,
                    "port": gateway.port(),
                    "targetPort": gateway.port(),
                }],
            },
        });
        assert!(
            gateway.ip().is_loopback(),
            "the gateway must be on loopback: {gateway}"
        );
        self.put(&service_file(name), &[service]).await;
        (name.to_string(), gateway.port())
    }

    /// Deletes a Service (and its endpoints) and its Pod (stops the image).
    pub async fn delete_service(&self, service: Service) {
        self.remove(&service_file(&service.name), &service.objects)
            .await;
        drop(service.image);
    }

    // -----------------------------------------------------------------------------------------
    // Ingresses

    /// An ingress named for this test over `rules`, as `CreateIngress` makes it: class
    /// annotation, Knative's defaults and `httpOption: Enabled`.
    pub fn new_ingress(&self, rules: Vec<Rule>) -> Ingress {
        ingress_with_defaults(&self.namespace, &self.object_name(), rules)
    }

    /// Writes `ingress` (create or update). Returns its Knative hash.
    pub async fn write_ingress(&self, ingress: &Ingress) -> String {
        self.put(&ingress_file(&ingress.name), &[ingress.to_value()])
            .await;
        knative_hash(ingress)
    }

    /// Writes ingress `name` exactly as `value` has it (for ingresses `CreateIngress` would
    /// not make, e.g. without the class annotation).
    pub async fn write_ingress_value(&self, name: &str, value: Value) {
        self.put(&ingress_file(name), &[value]).await;
    }

    /// `CreateIngressReady`: creates an ingress over `rules` and waits until it is Ready.
    pub async fn create_ingress_ready(&self, rules: Vec<Rule>) -> ReadyIngress {
        self.create_ready(self.new_ingress(rules)).await
    }

    /// `CreateTLSSecret`: a self-signed certificate for `hosts` in a new `kubernetes.io/tls`
    /// Secret. Returns the secret's name and the certificate (PEM) for clients to trust.
    pub async fn create_tls_secret(&self, hosts: &[&str]) -> (String, String) {
        let name = self.object_name();
        let (certificate, key) = super::tls::certificate_for(hosts);
        let secret = manifests::tls_secret(&self.namespace, &name, &certificate, &key);
        self.put(&format!("secret-{name}.yaml"), &[secret]).await;
        (name, certificate)
    }

    /// `CreateIngressReadyWithTLS`: `ingress` as given (with its `spec.tls` and `httpOption`),
    /// created and waited on until Ready.
    pub async fn create_ready(&self, ingress: Ingress) -> ReadyIngress {
        let hash = self.write_ingress(&ingress).await;
        let ready = self.wait_ready(ingress, hash).await;
        // `CreateDialContext` dials the public load balancer of every ingress it is given, and
        // `t.Fatal`s without one.
        if ready.public_domain.is_empty() {
            self.error(format!(
                "ingress {}/{} is Ready but has no status.publicLoadBalancer: upstream's \
                 CreateIngressReady → CreateDialContext (util.go) fails with \"Ingress does not \
                 have a public load balancer assigned.\"; status: {}",
                self.namespace,
                ready.name(),
                ready.status
            ));
        }
        ready
    }

    /// `UpdateIngressReady`: replaces the spec of ingress `name` with `rules` and waits until
    /// that version is Ready.
    pub async fn update_ingress_ready(&self, name: &str, rules: Vec<Rule>) -> ReadyIngress {
        let ingress = ingress_with_defaults(&self.namespace, name, rules);
        let hash = self.write_ingress(&ingress).await;
        self.wait_ready(ingress, hash).await
    }

    /// Waits until `ingress` (whose Knative hash is `hash`) is Ready at the version written.
    async fn wait_ready(&self, ingress: Ingress, hash: String) -> ReadyIngress {
        let (status, public_domain, private_domain) = match &self.objects {
            Objects::Files(_) => {
                let entry = self.wait_listed_ready(&ingress.name, &hash).await;
                let domain = |balancer: &str| {
                    entry["status"][balancer][0]["domainInternal"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                };
                let domains = (domain("publicLoadBalancer"), domain("privateLoadBalancer"));
                (entry, domains.0, domains.1)
            }
            Objects::Api { applier, .. } => {
                let held = self.wait_api_ready(applier, &ingress.name).await;
                self.expect_hash_served(&ingress.name, &hash).await;
                let status = held.status.unwrap_or_default();
                let domain = |balancer: Option<&sluice::knative::LoadBalancerStatus>| {
                    balancer
                        .and_then(|b| b.ingress.first())
                        .map(|i| i.domain_internal.clone())
                        .unwrap_or_default()
                };
                let public = domain(status.public_load_balancer.as_ref());
                let private = domain(status.private_load_balancer.as_ref());
                let status = serde_json::to_value(&status).expect("an ingress status as JSON");
                (status, public, private)
            }
        };
        ReadyIngress {
            ingress,
            hash,
            status,
            public_domain,
            private_domain,
        }
    }

    /// File mode: waits until sluice serves the version of ingress `name` whose Knative hash
    /// is `hash` and reports it `Ready=True`; returns its `sluice get ingress` entry.
    async fn wait_listed_ready(&self, name: &str, hash: &str) -> Value {
        let sluice = &self.stack.sluice;
        let namespace = &self.namespace;
        let mut last = String::from("nothing yet");
        let found = poll_until(READY_TIMEOUT, async || {
            let config = sluice.admin_get("/debug/config?type=RDS").await;
            if !config.body.contains(hash) {
                last = format!(
                    "sluice's served route configurations do not carry the spec's hash {hash} \
                     yet; ingress listing: {}",
                    listed(sluice, namespace, name).await.unwrap_or(Value::Null)
                );
                return None;
            }
            let entry = listed(sluice, namespace, name).await?;
            if ready_condition(&entry)["status"] == "True" {
                Some(entry)
            } else {
                last = format!("served, not Ready yet: {entry}");
                None
            }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "ingress {namespace}/{name} (hash {hash}) did not become Ready within \
                 {READY_TIMEOUT:?}; last: {last}"
            )
        })
    }

    /// Kubernetes mode: waits until the API server holds ingress `name` with `Ready=True`
    /// observed at its current generation (Knative's `IsReady`).
    async fn wait_api_ready(&self, applier: &Applier, name: &str) -> IngressResource {
        let api: Api<IngressResource> = Api::namespaced(applier.client().clone(), &self.namespace);
        let mut last = String::from("nothing yet");
        let found = poll_until(READY_TIMEOUT, async || {
            let ingress = match api.get(name).await {
                Ok(ingress) => ingress,
                Err(e) => {
                    last = format!("get failed: {e}");
                    return None;
                }
            };
            let status = ingress.status.as_ref();
            let observed = status.and_then(|s| s.observed_generation);
            let ready = status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            if ready && observed.is_some() && observed == ingress.metadata.generation {
                return Some(ingress);
            }
            last = format!(
                "generation {:?}, status {:?}",
                ingress.metadata.generation, ingress.status
            );
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "ingress {}/{name} was not Ready at its generation within {READY_TIMEOUT:?}; \
                 last: {last}",
                self.namespace
            )
        })
    }

    /// Ready at a generation means Envoy holds that spec's routes, probe twins and their
    /// `K-Network-Hash` included: sluice's served route configurations must carry `hash`.
    async fn expect_hash_served(&self, name: &str, hash: &str) {
        let config = self.stack.sluice.admin_get("/debug/config?type=RDS").await;
        assert!(
            config.body.contains(hash),
            "ingress {}/{name} is Ready at its generation, but sluice's served route \
             configurations do not carry the spec's hash {hash}",
            self.namespace
        );
    }

    /// `TestIngressClass`'s check, 2 s after ingress `name` (not of sluice's class) was
    /// written: sluice did not pick it up. Everywhere sluice lists it as not owned, with no
    /// condition `True` and no load balancers; in Kubernetes mode, as upstream checks, the API
    /// server also still holds it exactly as it was created (sluice wrote no status).
    pub async fn expect_not_picked_up(&self, case: &str, name: &str) {
        let entry = self
            .listed(name)
            .await
            .unwrap_or_else(|| panic!("{case}: ingress {name} was not even read by sluice"));
        let conditions = entry["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            entry["owned"] == false
                && ready_condition(&entry)["status"] != "True"
                && conditions.iter().all(|c| c["status"] != "True")
                && entry["status"]["publicLoadBalancer"].is_null()
                && entry["status"]["privateLoadBalancer"].is_null(),
            "{case}: ingress {name} must not be picked up; sluice lists {entry}"
        );
        if let Objects::Api { applier, applied } = &self.objects {
            let key = format!("Ingress/{name}");
            let created = applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
                .unwrap_or_else(|| panic!("{case}: ingress {name} was never applied"));
            let now = applier
                .get(&created)
                .await
                .unwrap_or_else(|| panic!("{case}: ingress {name} is gone"));
            let now = serde_json::to_value(now).expect("an ingress as JSON");
            assert_eq!(
                now, created,
                "{case}: ingress {name} must be left as created (sluice must not reconcile an \
                 ingress of another class)"
            );
        }
    }

    /// The address of the ingress's private load balancer (Envoy's internal listener), after
    /// checking the status names one (`Status.PrivateLoadBalancer.Ingress[0].DomainInternal`).
    pub fn private_load_balancer(&self, ingress: &ReadyIngress) -> SocketAddr {
        assert!(
            !ingress.private_domain.is_empty(),
            "ingress {} has no status.privateLoadBalancer[0].domainInternal: {}",
            ingress.name(),
            ingress.status
        );
        self.stack.internal_http_addr()
    }

    /// The entry of ingress `name` (in this case's namespace) in `sluice get ingress -o json`,
    /// if listed.
    pub async fn listed(&self, name: &str) -> Option<Value> {
        listed(&self.stack.sluice, &self.namespace, name).await
    }

    // -----------------------------------------------------------------------------------------
    // Requests

    /// `RuntimeRequest`: `GET http://{host}{path}` through the public load balancer; the
    /// runtime image's answer if the status is 200 and the body is its JSON, else an error
    /// describing what came back.
    pub async fn runtime_request(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<RuntimeInfo, String> {
        runtime_request(&self.client, host, path, headers).await
    }

    /// [`Env::runtime_request`], panicking on failure.
    pub async fn expect_runtime(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RuntimeInfo {
        self.runtime_request(host, path, headers)
            .await
            .unwrap_or_else(|e| panic!("RuntimeRequest: {e}"))
    }

    /// `RuntimeRequestWithExpectations(..., StatusCodeExpectation(404), allowDialError=true)`:
    /// the host must not be served on the public load balancer (404, or no connection).
    pub async fn expect_not_public(&self, host: &str, path: &str) {
        match self.client.get(host, path, &[]).await {
            Ok(resp) => assert_eq!(
                resp.status, 404,
                "GET http://{host}{path} on the public load balancer must be 404 (not exposed); \
                 got {} {:?} {:?}",
                resp.status, resp.headers, resp.body
            ),
            Err(e) => assert!(
                e.contains("connect"),
                "GET http://{host}{path} on the public load balancer: {e}"
            ),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let errors = self.errors.get_mut().unwrap_or_else(|p| p.into_inner());
        if std::thread::panicking() && !errors.is_empty() {
            eprintln!(
                "---- also recorded ({}) ----\n- {}",
                errors.len(),
                errors.join("\n- ")
            );
        }
    }
}

fn service_file(name: &str) -> String {
    format!("svc-{name}.yaml")
}

fn ingress_file(name: &str) -> String {
    format!("ing-{name}.yaml")
}

/// `kind/name` of an object given as JSON.
fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The entry of `namespace/name` in `sluice get ingress -o json`.
async fn listed(sluice: &Sluice, namespace: &str, name: &str) -> Option<Value> {
    let all = sluice.ingresses().await;
    all.as_array()?
        .iter()
        .find(|i| i["namespace"] == namespace && i["name"] == name)
        .cloned()
}

/// Condition `Ready` of a listing entry (`Null` if absent).
pub fn ready_condition(entry: &Value) -> Value {
    entry["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `RuntimeRequest` with any client.
pub async fn runtime_request(
    client: &HttpClient,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<RuntimeInfo, String> {
    let resp = client.get(host, path, headers).await?;
    if resp.status != 200 {
        return Err(format!(
            "GET http://{host}{path}: status {}, wanted 200; headers {:?}; body {:?}",
            resp.status, resp.headers, resp.body
        ));
    }
    serde_json::from_str(&resp.body).map_err(|e| {
        format!(
            "GET http://{host}{path}: unable to parse the runtime image's response ({e}): {:?}",
            resp.body
        )
    })
}

/// An ingress `namespace/name` of sluice's class over `rules`, with what `CreateIngress` adds:
/// Knative's `SetDefaults` (visibility `ExternalIP`, 100% for a lone split without a percent)
/// and the suite's `httpOption: Enabled`.
pub fn ingress_with_defaults(namespace: &str, name: &str, rules: Vec<Rule>) -> Ingress {
    let mut ingress = Ingress::new(namespace, name).class(Some(INGRESS_CLASS));
    for mut rule in rules {
        rule.visibility
            .get_or_insert_with(|| "ExternalIP".to_string());
        for path in &mut rule.paths {
            if let [only] = path.splits.as_mut_slice()
                && only.percent.unwrap_or(0) == 0
            {
                only.percent = Some(100);
            }
        }
        ingress = ingress.rule(rule);
    }
    ingress.http_option("Enabled")
}

/// A split to Service `service` (its namespace and port).
pub fn split_to(service: &Service) -> Split {
    Split::new(&service.namespace, &service.name, service.port)
}

/// One path, no match, one split to `service`.
pub fn path_to(service: &Service) -> HttpPath {
    HttpPath::new().split(split_to(service))
}

// ---------------------------------------------------------------------------------------------
// Knative's hash

/// Knative's `ingress.ComputeHash`: SHA-256 over the spec as Go's `json.Marshal` writes
/// `v1alpha1.IngressSpec` (struct field order, `omitempty`, map keys sorted, HTML-safe
/// escaping), then the namespace, then the name; hex-encoded as `K-Network-Hash` carries it.
pub fn knative_hash(ingress: &Ingress) -> String {
    let mut json = String::new();
    spec_json(&mut json, ingress);
    let digest = sha2::Sha256::new()
        .chain_update(json.as_bytes())
        .chain_update(ingress.namespace.as_bytes())
        .chain_update(ingress.name.as_bytes())
        .finalize();
    hex::encode(digest)
}

/// A Go-`json.Marshal`-encoded string.
fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"k":v,...}` with the fields that are present, in the given order.
fn go_object(out: &mut String, fields: Vec<(&str, String)>) {
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&go_string(key));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
}

fn go_array(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(","))
}

/// A `map[string]string` (or `map[string]HeaderMatch` via `value`): keys sorted bytewise.
fn go_map(pairs: &[(String, String)], value: impl Fn(&str) -> String) -> String {
    let sorted: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut out = String::new();
    go_object(
        &mut out,
        sorted.iter().map(|(k, v)| (*k, value(v))).collect(),
    );
    out
}

fn spec_json(out: &mut String, ingress: &Ingress) {
    let mut fields = Vec::new();
    if !ingress.tls.is_empty() {
        let tls = ingress.tls.iter().map(|entry| {
            let mut item = String::new();
            let mut f = Vec::new();
            if let Some(hosts) = entry["hosts"].as_array().filter(|h| !h.is_empty()) {
                let hosts = hosts
                    .iter()
                    .map(|h| go_string(h.as_str().unwrap_or_default()));
                f.push(("hosts", go_array(hosts)));
            }
            for key in ["secretName", "secretNamespace"] {
                if let Some(v) = entry[key].as_str().filter(|v| !v.is_empty()) {
                    f.push((key, go_string(v)));
                }
            }
            go_object(&mut item, f);
            item
        });
        fields.push(("tls", go_array(tls)));
    }
    if !ingress.rules.is_empty() {
        fields.push(("rules", go_array(ingress.rules.iter().map(rule_json))));
    }
    if let Some(option) = ingress.http_option.as_deref().filter(|o| !o.is_empty()) {
        fields.push(("httpOption", go_string(option)));
    }
    go_object(out, fields);
}

fn rule_json(rule: &Rule) -> String {
    let mut fields = Vec::new();
    if !rule.hosts.is_empty() {
        fields.push(("hosts", go_array(rule.hosts.iter().map(|h| go_string(h)))));
    }
    if let Some(visibility) = rule.visibility.as_deref().filter(|v| !v.is_empty()) {
        fields.push(("visibility", go_string(visibility)));
    }
    let mut http = String::new();
    go_object(
        &mut http,
        vec![("paths", go_array(rule.paths.iter().map(path_json)))],
    );
    fields.push(("http", http));
    let mut out = String::new();
    go_object(&mut out, fields);
    out
}

fn path_json(path: &HttpPath) -> String {
    let mut fields = Vec::new();
    if let Some(p) = path.path.as_deref().filter(|p| !p.is_empty()) {
        fields.push(("path", go_string(p)));
    }
    if let Some(host) = path.rewrite_host.as_deref().filter(|h| !h.is_empty()) {
        fields.push(("rewriteHost", go_string(host)));
    }
    if !path.headers.is_empty() {
        let headers = go_map(&path.headers, |exact| {
            let mut m = String::new();
            go_object(&mut m, vec![("exact", go_string(exact))]);
            m
        });
        fields.push(("headers", headers));
    }
    fields.push(("splits", go_array(path.splits.iter().map(split_json))));
    if !path.append_headers.is_empty() {
        fields.push(("appendHeaders", go_map(&path.append_headers, go_string)));
    }
    let mut out = String::new();
    go_object(&mut out, fields);
    out
}

fn split_json(split: &Split) -> String {
    let port = match &split.service_port {
        Value::String(name) => go_string(name),
        other => other.to_string(),
    };
    let mut fields = vec![
        ("serviceNamespace", go_string(&split.service_namespace)),
        ("serviceName", go_string(&split.service_name)),
        ("servicePort", port),
    ];
    if let Some(percent) = split.percent.filter(|p| *p != 0) {
        fields.push(("percent", percent.to_string()));
    }
    if !split.append_headers.is_empty() {
        fields.push(("appendHeaders", go_map(&split.append_headers, go_string)));
    }
    let mut out = String::new();
    go_object(&mut out, fields);
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// A keep-alive HTTP/1.1 client that dials one address (a load balancer) whatever the URL's
/// host, like the suite's `http.Client` with `CreateDialContext`'s dialer: connections are
/// pooled and reused, and a request on a pooled connection the server closed is retried on a
/// new one when it was never sent (as Go's transport does).
#[derive(Clone)]
pub struct HttpClient {
    addr: SocketAddr,
    client: LegacyClient<HttpConnector, Full<Bytes>>,
}

/// A response with when its head and its end arrived.
#[derive(Debug, Clone)]
pub struct Timed {
    pub response: Response,
    /// From sending the request to having the status line and headers.
    pub head_after: Duration,
    /// From sending the request to having the whole body.
    pub total: Duration,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        let client = LegacyClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        HttpClient { addr, client }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET http://{host}{path}` with `headers` (appended in order), bounded by
    /// [`REQUEST_TIMEOUT`].
    pub async fn get(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        self.get_timed(host, path, headers)
            .await
            .map(|timed| timed.response)
    }

    /// Like [`HttpClient::get`], also timing the head and the body.
    pub async fn get_timed(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Timed, String> {
        let what = format!("GET http://{host}{path} via {}", self.addr);
        match tokio::time::timeout(REQUEST_TIMEOUT, self.get_inner(host, path, headers)).await {
            Ok(Ok(timed)) => Ok(timed),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out after {REQUEST_TIMEOUT:?}")),
        }
    }

    async fn get_inner(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Timed, String> {
        let uri: hyper::Uri = format!("http://{}{path}", self.addr)
            .parse()
            .map_err(|e| format!("URI: {e}"))?;
        let mut req = hyper::Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("building request: {e}"))?;
        for (name, value) in headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?;
            req.headers_mut().append(name, value);
        }
        if !req.headers().contains_key(HOST) {
            let host = HeaderValue::from_str(host).map_err(|e| format!("host: {e}"))?;
            req.headers_mut().insert(HOST, host);
        }
        let started = Instant::now();
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        let head_after = started.elapsed();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {}", error_chain(&e)))?
            .to_bytes();
        Ok(Timed {
            response: Response {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            head_after,
            total: started.elapsed(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// WebSockets

/// Sends `text` on `ws` and returns the next text (or binary) message, skipping control frames;
/// bounded by [`REQUEST_TIMEOUT`].
pub async fn ws_round_trip(ws: &mut WebSocket, text: &str) -> Result<String, String> {
    let exchange = async {
        ws.send(Message::text(text))
            .await
            .map_err(|e| format!("WriteMessage() = {e}"))?;
        for _ in 0..64 {
            match ws.next().await {
                Some(Ok(Message::Text(reply))) => return Ok(reply.to_string()),
                Some(Ok(Message::Binary(reply))) => {
                    return Ok(String::from_utf8_lossy(&reply).into_owned());
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("ReadMessage(): closed: {frame:?}"));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("ReadMessage() = {e}")),
                None => return Err("ReadMessage(): stream ended".to_string()),
            }
        }
        Err("ReadMessage(): only control frames came back".to_string())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("round trip of {text:?} timed out"))?
}

/// A random-ish number below `n`, for the suite's `rand.Intn` in messages.
pub fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.finish() % n
}
