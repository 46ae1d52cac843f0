//! sluice in a Knative cluster, as Gloo ran it: namespace `gloo-system`, two sluice replicas and
//! the two Envoy deployments `knative-external-proxy` and `knative-internal-proxy`, the
//! least-privilege RBAC sluice needs, and Knative Serving's `config-network` pointing at sluice.
//! xDS is mutual TLS, with certificates from Secrets the manifests only name (see [`certs`]), so
//! that they hold no key. `deploy/knative/` holds this output for the defaults.

use serde_json::{Value, json};

use super::certs;
use crate::bootstrap::{self, BootstrapConfig, BootstrapTls};

/// The ingress class Knative Serving is told to use.
pub const INGRESS_CLASS: &str = "sluice.ingress.networking.knative.dev";
pub const EXTERNAL_PROXY: &str = "knative-external-proxy";
pub const INTERNAL_PROXY: &str = "knative-internal-proxy";
const XDS_PORT: u16 = 9977;
const ADMIN_PORT: u16 = 9091;
/// The name of sluice's Service port for the admin API: `sluice proxy status` and `check` find
/// the replicas through the EndpointSlices' port of this name.
pub const ADMIN_PORT_NAME: &str = "http-admin";
/// Where each proxy's Envoy serves its admin interface, on the pod's loopback only.
pub const ENVOY_ADMIN_PORT: u16 = 19000;
/// The Envoy listeners' ports: each proxy gets only its own listeners, so both use these.
const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
/// Where sluice and the proxies find their xDS Secret's files. Not under the proxies'
/// `/etc/envoy`: a mount inside a read-only ConfigMap volume needs a directory the runtime
/// cannot make there.
pub const XDS_CERT_DIR: &str = "/etc/sluice-xds";
const ENVOY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";
/// Knative Serving's namespace, where its `config-network` lives.
const SERVING_NAMESPACE: &str = "knative-serving";

/// Where and with what image to install.
#[derive(Debug, Clone)]
pub struct KnativeInstall {
    pub namespace: String,
    pub image: String,
    /// sluice also serves Knative Routes (`serve --serve-routes`), for clusters without
    /// Knative Serving, and may read and write what that needs.
    pub serve_routes: bool,
}

impl Default for KnativeInstall {
    fn default() -> Self {
        KnativeInstall {
            namespace: "gloo-system".to_owned(),
            image: format!("ghcr.io/sluice-dev/sluice:{}", env!("CARGO_PKG_VERSION")),
            serve_routes: false,
        }
    }
}

/// The manifests, grouped by the file of `deploy/knative/` each goes in.
pub fn manifests(install: &KnativeInstall) -> Vec<(&'static str, Vec<Value>)> {
    let mut parts = vec![
        ("namespace.yaml", vec![namespace(install)]),
        ("rbac.yaml", rbac(install)),
        ("sluice.yaml", sluice(install)),
        (
            "knative-external-proxy.yaml",
            proxy(install, EXTERNAL_PROXY, "LoadBalancer"),
        ),
        (
            "knative-internal-proxy.yaml",
            proxy(install, INTERNAL_PROXY, "ClusterIP"),
        ),
        ("config-network.yaml", vec![config_network()]),
    ];
    if install.serve_routes {
        parts.push(("serve-routes.yaml", serve_routes(install)));
    }
    parts
}

/// Whether an object is Knative Serving's `config-network`, which only a cluster running
/// Knative Serving has a namespace for.
pub fn is_serving_config(object: &Value) -> bool {
    object["kind"] == "ConfigMap"
        && object["metadata"]["namespace"] == SERVING_NAMESPACE
        && object["metadata"]["name"] == "config-network"
}

fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/part-of": "sluice",
    })
}

/// The namespace of sluice and its proxies.
pub fn namespace(install: &KnativeInstall) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": install.namespace, "labels": {"app.kubernetes.io/part-of": "sluice"}},
    })
}

/// Read what is served, write only ingress status; Leases and the replicas' reports only in
/// sluice's own namespace.
fn rbac(install: &KnativeInstall) -> Vec<Value> {
    let ns = &install.namespace;
    let name = format!("sluice-{ns}");
    let read = json!(["get", "list", "watch"]);
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "sluice", "namespace": ns, "labels": labels("sluice")},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels("sluice")},
            "rules": [
                {
                    "apiGroups": ["networking.internal.knative.dev"],
                    "resources": ["ingresses", "clusteringresses"],
                    "verbs": read,
                },
                {
                    "apiGroups": ["networking.internal.knative.dev"],
                    "resources": ["ingresses/status", "clusteringresses/status"],
                    "verbs": ["patch", "update"],
                },
                {"apiGroups": [""], "resources": ["services", "secrets"], "verbs": read},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels("sluice")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "sluice", "namespace": ns}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "sluice", "namespace": ns, "labels": labels("sluice")},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "sluice", "namespace": ns, "labels": labels("sluice")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sluice"},
            "subjects": [{"kind": "ServiceAccount", "name": "sluice", "namespace": ns}],
        }),
    ]
}

/// A container that runs as nobody, on a read-only root, with no privileges to gain.
fn locked_down() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn xds_cert_file(file: &str) -> String {
    format!("{XDS_CERT_DIR}/{file}")
}

/// The volume of an xDS Secret and its read-only mount at [`XDS_CERT_DIR`].
fn xds_cert_volume(secret: &str) -> (Value, Value) {
    (
        json!({"name": "xds-tls", "secret": {"secretName": secret}}),
        json!({"name": "xds-tls", "mountPath": XDS_CERT_DIR, "readOnly": true}),
    )
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn sluice(install: &KnativeInstall) -> Vec<Value> {
    let ns = &install.namespace;
    let mut args = vec![
        "serve".to_owned(),
        "--xds-addr".to_owned(),
        format!("0.0.0.0:{XDS_PORT}"),
        "--admin-addr".to_owned(),
        format!("0.0.0.0:{ADMIN_PORT}"),
        "--http-port".to_owned(),
        HTTP_PORT.to_string(),
        "--https-port".to_owned(),
        HTTPS_PORT.to_string(),
        "--internal-http-port".to_owned(),
        HTTP_PORT.to_string(),
        "--internal-https-port".to_owned(),
        HTTPS_PORT.to_string(),
        "--xds-tls-cert".to_owned(),
        xds_cert_file(certs::CERTIFICATE_FILE),
        "--xds-tls-key".to_owned(),
        xds_cert_file(certs::KEY_FILE),
        "--xds-client-ca".to_owned(),
        xds_cert_file(certs::CA_FILE),
    ];
    let (volume, mount) = xds_cert_volume(certs::SERVER_SECRET);
    if install.serve_routes {
        args.push("--serve-routes".to_owned());
    }
    let probe =
        |path: &str| json!({"httpGet": {"path": path, "port": "admin"}, "periodSeconds": 5});
    vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "sluice", "namespace": ns, "labels": labels("sluice")},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels("sluice")},
                "template": {
                    "metadata": {"labels": labels("sluice")},
                    "spec": {
                        "serviceAccountName": "sluice",
                        "containers": [{
                            "name": "sluice",
                            "image": install.image,
                            "args": args,
                            "env": [
                                field_env("POD_NAME", "metadata.name"),
                                field_env("POD_NAMESPACE", "metadata.namespace"),
                            ],
                            "ports": [
                                {"name": "xds", "containerPort": XDS_PORT},
                                {"name": "admin", "containerPort": ADMIN_PORT},
                            ],
                            "livenessProbe": probe("/healthz"),
                            "readinessProbe": probe("/readyz"),
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "securityContext": locked_down(),
                            "volumeMounts": [mount],
                        }],
                        "volumes": [volume],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sluice", "namespace": ns, "labels": labels("sluice")},
            "spec": {
                "selector": labels("sluice"),
                "ports": [
                    {"name": "grpc-xds", "port": XDS_PORT, "targetPort": "xds", "appProtocol": "grpc"},
                    {"name": ADMIN_PORT_NAME, "port": ADMIN_PORT, "targetPort": "admin"},
                ],
            },
        }),
    ]
}

/// One proxy: its bootstrap (made by `sluice bootstrap`), its Envoy Deployment and its Service.
fn proxy(install: &KnativeInstall, name: &str, service_type: &str) -> Vec<Value> {
    let ns = &install.namespace;
    let bootstrap = bootstrap::render(&BootstrapConfig {
        tls: Some(BootstrapTls {
            ca: xds_cert_file(certs::CA_FILE),
            client: Some((
                xds_cert_file(certs::CERTIFICATE_FILE),
                xds_cert_file(certs::KEY_FILE),
            )),
        }),
        xds_addr: format!("sluice.{ns}.svc.cluster.local:{XDS_PORT}"),
        node_id: name.to_owned(),
        role: Some(format!("{ns}~{name}")),
        admin_addr: format!("127.0.0.1:{ENVOY_ADMIN_PORT}"),
        delta: true,
        eager_stats: false,
    })
    .expect("the install's addresses are HOST:PORT");
    let (xds_volume, xds_mount) = xds_cert_volume(certs::CLIENT_SECRET);
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-bootstrap"), "namespace": ns, "labels": labels(name)},
            "data": {"envoy.yaml": bootstrap},
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels(name)},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels(name)},
                "template": {
                    "metadata": {"labels": labels(name)},
                    "spec": {
                        "containers": [{
                            "name": "envoy",
                            "image": ENVOY_IMAGE,
                            "command": ["envoy"],
                            // Each pod is its own node, by name; the role in the bootstrap picks
                            // its listeners.
                            // Envoy runs a worker per core of the node unless told otherwise, and
                            // each worker holds its own copy of every cluster (about 21 MiB of RSS
                            // per worker at 5,000 ingresses): as many workers as the CPUs the pod
                            // asks for, rounded up, so raising the request adds workers.
                            "args": [
                                "-c", "/etc/envoy/envoy.yaml",
                                "--service-node", "$(POD_NAME)",
                                "--concurrency", "$(CPU_REQUEST)",
                                "--disable-hot-restart",
                                "--log-level", "info",
                            ],
                            "env": [
                                field_env("POD_NAME", "metadata.name"),
                                {
                                    "name": "CPU_REQUEST",
                                    "valueFrom": {"resourceFieldRef": {
                                        "containerName": "envoy",
                                        "resource": "requests.cpu",
                                        "divisor": "1",
                                    }},
                                },
                            ],
                            "ports": [
                                {"name": "http", "containerPort": HTTP_PORT},
                                {"name": "https", "containerPort": HTTPS_PORT},
                            ],
                            // The listeners come from sluice: the pod is ready once they do.
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 2},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "securityContext": locked_down(),
                            "volumeMounts": [
                                {"name": "bootstrap", "mountPath": "/etc/envoy", "readOnly": true},
                                xds_mount,
                            ],
                        }],
                        "volumes": [
                            {"name": "bootstrap", "configMap": {"name": format!("{name}-bootstrap")}},
                            xds_volume,
                        ],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels(name)},
            "spec": {
                "type": service_type,
                "selector": labels(name),
                "ports": [
                    {"name": "http", "port": 80, "targetPort": HTTP_PORT},
                    {"name": "https", "port": 443, "targetPort": HTTPS_PORT},
                ],
            },
        }),
    ]
}

/// What `--serve-routes` needs beyond the ingresses: Serving's Routes and Configurations, the
/// Routes' status, and Knative's `config-domain` and `config-features` in its namespace (made
/// here for clusters without Knative Serving, where those ConfigMaps may be added).
fn serve_routes(install: &KnativeInstall) -> Vec<Value> {
    let ns = &install.namespace;
    let name = format!("sluice-routes-{ns}");
    let read = json!(["get", "list", "watch"]);
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": SERVING_NAMESPACE},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels("sluice")},
            "rules": [
                {
                    "apiGroups": ["serving.knative.dev"],
                    "resources": ["routes", "configurations"],
                    "verbs": read,
                },
                {
                    "apiGroups": ["serving.knative.dev"],
                    "resources": ["routes/status"],
                    "verbs": ["patch", "update"],
                },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels("sluice")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "sluice", "namespace": ns}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": SERVING_NAMESPACE, "labels": labels("sluice")},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": read}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": SERVING_NAMESPACE, "labels": labels("sluice")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "sluice", "namespace": ns}],
        }),
    ]
}

fn config_network() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-network", "namespace": SERVING_NAMESPACE},
        "data": {"ingress-class": INGRESS_CLASS},
    })
}
