//! A real Kubernetes control plane for a test binary: etcd and kube-apiserver (built by
//! scripts/install-kube.sh into `.kube-bin`) on free ports, with token authentication, RBAC on
//! and no controller-manager, so tests write EndpointSlices themselves.
//!
//! The API server refuses loopback addresses in EndpointSlices, so these tests run inside a
//! network namespace of their own (see `tests/kube/main.rs`) where [`TEST_ADDRESS`] sits on `lo`
//! for the API server, backends and Envoy; nothing leaves the namespace.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::{Client, Config};

use super::{free_ports, keep_temp, poll_until, tail, temp_dir};

/// The address the test network namespace puts on `lo`: the API server, the backends (as
/// EndpointSlice addresses) and Envoy's listeners use it.
pub const TEST_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));
/// The bearer token of the cluster's administrator (group `system:masters`).
const ADMIN_TOKEN: &str = "sluice-test-admin";
/// How long the API server may take to answer `/readyz` (about 7 s on 2 cores).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The folder scripts/install-kube.sh builds into.
fn binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".kube-bin");
    for binary in ["kube-apiserver", "etcd"] {
        assert!(
            dir.join(binary).is_file(),
            "{} is missing: run scripts/install-kube.sh (scripts/test.sh does) to build \
             kube-apiserver and etcd from their Go modules",
            dir.join(binary).display()
        );
    }
    dir
}

/// A running etcd and kube-apiserver. Dropping it kills (SIGKILL) and reaps both.
pub struct Cluster {
    dir: tempfile::TempDir,
    etcd: Mutex<Child>,
    apiserver: Mutex<Option<Child>>,
    apiserver_args: Vec<String>,
    pub api_addr: SocketAddr,
    /// A kubeconfig for the administrator.
    pub kubeconfig: PathBuf,
    ca_file: String,
    namespaces: AtomicUsize,
}

impl Cluster {
    /// Starts etcd and the API server, waits until it is ready and applies sluice's CRDs.
    pub async fn start() -> Cluster {
        let bin = binaries();
        let dir = temp_dir("sluice-cluster-");
        let ports = free_ports(3);
        let (etcd_client, etcd_peer, api_port) = (ports[0], ports[1], ports[2]);
        let api_addr = SocketAddr::new(TEST_ADDRESS, api_port);

        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice-test-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("a CA");
        let server_key = rcgen::KeyPair::generate().expect("a server key");
        let mut server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("server parameters");
        server_params.subject_alt_names.extend([
            rcgen::SanType::IpAddress(TEST_ADDRESS),
            rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ]);
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("a server certificate");
        let account_key = rcgen::KeyPair::generate().expect("a service account key");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            fs::write(&path, text).expect("write a cluster file");
            path.display().to_string()
        };
        let ca_file = write("ca.crt", &ca.pem());
        let cert_file = write("apiserver.crt", &server.pem());
        let key_file = write("apiserver.key", &server_key.serialize_pem());
        let sa_key = write("sa.key", &account_key.serialize_pem());
        let sa_pub = write("sa.pub", &account_key.public_key_pem());
        let tokens = write(
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        );

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = spawn(
            &bin.join("etcd"),
            &[
                "--data-dir".into(),
                dir.path().join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                etcd_url.clone(),
                "--advertise-client-urls".into(),
                etcd_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                format!("default={peer_url}"),
                "--log-level".into(),
                "warn".into(),
            ],
            &dir.path().join("etcd.log"),
        );
        let apiserver_args: Vec<String> = [
            "--etcd-servers",
            &etcd_url,
            "--bind-address",
            &TEST_ADDRESS.to_string(),
            "--advertise-address",
            &TEST_ADDRESS.to_string(),
            "--secure-port",
            &api_port.to_string(),
            "--tls-cert-file",
            &cert_file,
            "--tls-private-key-file",
            &key_file,
            "--client-ca-file",
            &ca_file,
            "--token-auth-file",
            &tokens,
            "--authorization-mode",
            "RBAC",
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            &sa_pub,
            "--service-account-signing-key-file",
            &sa_key,
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--enable-priority-and-fairness=false",
        ]
        .map(str::to_owned)
        .to_vec();
        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(
            &kubeconfig,
            kubeconfig_yaml(api_addr, &ca_file, ADMIN_TOKEN),
        )
        .expect("write the kubeconfig");
        let cluster = Cluster {
            apiserver: Mutex::new(None),
            etcd: Mutex::new(etcd),
            apiserver_args,
            api_addr,
            kubeconfig,
            ca_file,
            dir,
            namespaces: AtomicUsize::new(0),
        };
        cluster.start_apiserver().await;
        let client = cluster.client().await;
        let crds = sluice::install::crds();
        sluice::install::apply(&client, &crds)
            .await
            .expect("apply sluice's CRDs");
        wait_served(&client, &crds).await;
        cluster
    }

    /// Starts the API server (again) and waits until it is ready.
    pub async fn start_apiserver(&self) {
        let log = self.dir.path().join("apiserver.log");
        let child = spawn(
            &binaries().join("kube-apiserver"),
            &self.apiserver_args,
            &log,
        );
        *self.apiserver.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let client = self.client().await;
        // `/readyz` passes once every post-start hook ran, the default RBAC roles included.
        let ready = poll_until(START_TIMEOUT, async || {
            let request = hyper::Request::get("/readyz").body(Vec::new()).ok()?;
            let answer = client.request_text(request).await.ok()?;
            (answer.trim() == "ok").then_some(())
        })
        .await;
        if ready.is_none() {
            panic!(
                "kube-apiserver not ready within {START_TIMEOUT:?}; its log ends:\n{}",
                tail(&fs::read_to_string(&log).unwrap_or_default(), 40)
            );
        }
    }

    /// Kills the API server (etcd stays); [`Cluster::start_apiserver`] brings it back.
    pub fn stop_apiserver(&self) {
        let apiserver = self
            .apiserver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut child) = apiserver {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client with the administrator's rights.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// A kubeconfig that authenticates with `token` (e.g. a service account's).
    pub fn kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        fs::write(&path, kubeconfig_yaml(self.api_addr, &self.ca_file, token))
            .expect("write a kubeconfig");
        path
    }

    /// A fresh namespace, `<prefix>-<n>`, for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}",
            self.namespaces.fetch_add(1, Ordering::SeqCst)
        );
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }
}

/// Server-side applies objects given as JSON (with `apiVersion` and `kind`), and deletes them.
pub struct Applier {
    client: Client,
    discovery: kube::discovery::Discovery,
}

impl Applier {
    pub async fn new(client: Client) -> Applier {
        let discovery = kube::discovery::Discovery::new(client.clone())
            .run()
            .await
            .expect("discover the API server's resources");
        Applier { client, discovery }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, object: &serde_json::Value) -> (Api<DynamicObject>, String) {
        let api_version = object["apiVersion"].as_str().expect("an apiVersion");
        let kind = object["kind"].as_str().expect("a kind");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = self
            .discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the API server does not serve {api_version} {kind}"));
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        let api = match (capabilities.scope, object["metadata"]["namespace"].as_str()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            _ => Api::all_with(self.client.clone(), &resource),
        };
        (api, name)
    }

    /// Server-side applies each object (field manager `sluice-test`).
    pub async fn apply(&self, objects: &[serde_json::Value]) {
        for object in objects {
            self.apply_one(object).await;
        }
    }

    /// Server-side applies `object` and returns it as the API server then holds it.
    pub async fn apply_one(&self, object: &serde_json::Value) -> DynamicObject {
        let (api, name) = self.api(object);
        api.patch(
            &name,
            &PatchParams::apply("sluice-test").force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {object}: {e}"))
    }

    /// The object as the API server holds it, if it exists.
    pub async fn get(&self, object: &serde_json::Value) -> Option<DynamicObject> {
        let (api, name) = self.api(object);
        api.get_opt(&name)
            .await
            .unwrap_or_else(|e| panic!("get {object}: {e}"))
    }

    /// Whether the object exists in the API server.
    pub async fn exists(&self, object: &serde_json::Value) -> bool {
        self.get(object).await.is_some()
    }

    /// Deletes each object (which must exist).
    pub async fn delete(&self, objects: &[serde_json::Value]) {
        for object in objects {
            let (api, name) = self.api(object);
            api.delete(&name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("delete {object}: {e}"));
        }
    }
}

impl Cluster {
    /// Kills the API server and etcd, and removes their files (etcd's data is over 100 MB)
    /// unless `SLUICE_TEST_KEEP` is set. A cluster held in a static, or leaked, is never dropped,
    /// so this is where its folder goes.
    pub fn stop(&self) {
        self.stop_apiserver();
        let mut etcd = self.etcd.lock().unwrap_or_else(|p| p.into_inner());
        let _ = etcd.kill();
        let _ = etcd.wait();
        if !keep_temp() {
            let _ = fs::remove_dir_all(self.dir.path());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until discovery serves every kind of `crds`: a CRD's group is listed a moment
/// before its version answers, and discovery in between fails with a 404.
async fn wait_served(client: &Client, crds: &[CustomResourceDefinition]) {
    let kinds: Vec<GroupVersionKind> = crds
        .iter()
        .flat_map(|crd| {
            crd.spec.versions.iter().map(|version| {
                GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind)
            })
        })
        .collect();
    let mut last = String::from("nothing yet");
    let served = poll_until(START_TIMEOUT, async || {
        let discovery = match Discovery::new(client.clone()).run().await {
            Ok(discovery) => discovery,
            Err(e) => {
                last = e.to_string();
                return None;
            }
        };
        let missing: Vec<&GroupVersionKind> = kinds
            .iter()
            .filter(|kind| discovery.resolve_gvk(kind).is_none())
            .collect();
        if missing.is_empty() {
            return Some(());
        }
        last = format!("not served yet: {missing:?}");
        None
    })
    .await;
    if served.is_none() {
        panic!("sluice's CRDs not served within {START_TIMEOUT:?}; last discovery: {last}");
    }
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("read the test kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client configuration");
    Client::try_from(config).expect("a client")
}

fn kubeconfig_yaml(server: SocketAddr, ca_file: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{server}\n    certificate-authority: {ca_file}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n"
    )
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> Child {
    let out = File::create(log).expect("create a log file");
    let err = out.try_clone().expect("clone a log file");
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))
}
