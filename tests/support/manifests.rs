//! Manifests for sluice's `--dir` source: Services with Endpoints or EndpointSlices pointing at
//! local backends, Knative Ingresses, and a directory to write them into atomically.
//!
//! Objects are built as `serde_json::Value`s (easy to tweak in a test) and rendered as block
//! YAML with every string double-quoted.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::temp_dir;

/// The ingress class sluice owns.
pub const INGRESS_CLASS: &str = "sluice.ingress.networking.knative.dev";
/// The annotation carrying an ingress's class.
pub const CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// The port number the helper Services expose (mapped by `targetPort` to a backend's port).
pub const SERVICE_PORT: u16 = 80;

/// A temp directory to point `sluice serve --dir` at. Files are written to a sibling staging
/// directory and renamed in, so a watcher never sees a half-written file.
pub struct ManifestDir {
    root: tempfile::TempDir,
    dir: PathBuf,
    staging: PathBuf,
}

impl Default for ManifestDir {
    fn default() -> Self {
        ManifestDir::new()
    }
}

impl ManifestDir {
    pub fn new() -> ManifestDir {
        let root = temp_dir("sluice-manifests-");
        let dir = root.path().join("manifests");
        let staging = root.path().join("staging");
        fs::create_dir(&dir).expect("create manifests dir");
        fs::create_dir(&staging).expect("create staging dir");
        ManifestDir { root, dir, staging }
    }

    /// The directory to give to `--dir`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Atomically creates or replaces `file_name` (e.g. `"hello.yaml"`) with `yaml`.
    pub fn write(&self, file_name: &str, yaml: &str) {
        let staged = self.staging.join(file_name);
        fs::write(&staged, yaml).unwrap_or_else(|e| panic!("write {}: {e}", staged.display()));
        let target = self.dir.join(file_name);
        fs::rename(&staged, &target)
            .unwrap_or_else(|e| panic!("rename into {}: {e}", target.display()));
    }

    /// Removes `file_name` (which must exist).
    pub fn remove(&self, file_name: &str) {
        let target = self.dir.join(file_name);
        fs::remove_file(&target).unwrap_or_else(|e| panic!("remove {}: {e}", target.display()));
    }

    /// The current contents of `file_name`.
    pub fn read(&self, file_name: &str) -> String {
        let target = self.dir.join(file_name);
        fs::read_to_string(&target).unwrap_or_else(|e| panic!("read {}: {e}", target.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// YAML rendering

/// Renders `value` as one YAML document (block style; strings double-quoted, JSON escapes).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => emit_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => emit_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

/// Renders several documents into one multi-document YAML text.
pub fn documents(values: &[Value]) -> String {
    values.iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}

fn inline(value: &Value) -> String {
    match value {
        Value::Object(map) if map.is_empty() => "{}".to_string(),
        Value::Array(items) if items.is_empty() => "[]".to_string(),
        // Strings as JSON strings are valid YAML double-quoted scalars.
        other => serde_json::to_string(other).expect("JSON value serializes"),
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn key(k: &str) -> String {
    let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        k.to_string()
    } else {
        serde_json::to_string(k).expect("string serializes")
    }
}

fn emit_map(out: &mut String, map: &Map<String, Value>, indent: usize) {
    for (k, v) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(k));
        out.push(':');
        if is_block(v) {
            out.push('\n');
            emit_block(out, v, indent + 2);
        } else {
            out.push(' ');
            out.push_str(&inline(v));
            out.push('\n');
        }
    }
}

fn emit_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        if is_block(item) {
            // Render the item two columns in, then turn its first indent into "- ".
            let mut nested = String::new();
            emit_block(&mut nested, item, indent + 2);
            out.push_str(&" ".repeat(indent));
            out.push_str("- ");
            out.push_str(&nested[indent + 2..]);
        } else {
            out.push_str(&" ".repeat(indent));
            out.push_str("- ");
            out.push_str(&inline(item));
            out.push('\n');
        }
    }
}

fn emit_block(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) => emit_map(out, map, indent),
        Value::Array(items) => emit_seq(out, items, indent),
        _ => unreachable!("emit_block is only called for non-empty maps and sequences"),
    }
}

// ---------------------------------------------------------------------------------------------
// Services and endpoints

fn app_protocol(port_name: &str) -> Option<&'static str> {
    matches!(port_name, "h2c" | "http2" | "grpc").then_some("kubernetes.io/h2c")
}

/// A `v1` Service `namespace/name` with one TCP port `port_name` = `port`, mapped by
/// `targetPort` to `target_port`. Ports named `h2c`, `http2` or `grpc` also get
/// `appProtocol: kubernetes.io/h2c`.
pub fn service(name: &str, namespace: &str, port_name: &str, port: u16, target_port: u16) -> Value {
    let mut service_port = json!({
        "name": port_name,
        "port": port,
        "protocol": "TCP",
        "targetPort": target_port,
    });
    if let Some(app_protocol) = app_protocol(port_name) {
        service_port["appProtocol"] = json!(app_protocol);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ClusterIP", "ports": [service_port]},
    })
}

/// A `v1` Endpoints `namespace/name` with one subset per backend port, each 127.0.0.1 with port
/// `port_name` = that backend port.
pub fn endpoints(name: &str, namespace: &str, port_name: &str, backend_ports: &[u16]) -> Value {
    let subsets: Vec<Value> = backend_ports
        .iter()
        .map(|port| {
            json!({
                "addresses": [{"ip": "127.0.0.1"}],
                "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace},
        "subsets": subsets,
    })
}

/// A `discovery.k8s.io/v1` EndpointSlice `namespace/slice_name` for Service `service`
/// (by the `kubernetes.io/service-name` label): one ready endpoint 127.0.0.1, port
/// `port_name` = `backend_port`.
pub fn endpoint_slice(
    service: &str,
    slice_name: &str,
    namespace: &str,
    port_name: &str,
    backend_port: u16,
) -> Value {
    endpoint_slice_at(
        service,
        slice_name,
        namespace,
        port_name,
        "127.0.0.1",
        backend_port,
    )
}

/// Like [`endpoint_slice`], with the endpoint at `address` (an API server refuses loopback).
pub fn endpoint_slice_at(
    service: &str,
    slice_name: &str,
    namespace: &str,
    port_name: &str,
    address: &str,
    backend_port: u16,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": port_name, "port": backend_port, "protocol": "TCP"}],
    })
}

/// Service `namespace/name` (port [`SERVICE_PORT`] named `port_name`, `targetPort` the
/// backend's port) plus Endpoints at 127.0.0.1:`backend_port`, as one YAML text.
pub fn service_for(name: &str, namespace: &str, backend_port: u16, port_name: &str) -> String {
    service_for_ports(name, namespace, &[backend_port], port_name)
}

/// Like [`service_for`], with one endpoint per backend port (for load-balancing tests).
pub fn service_for_ports(
    name: &str,
    namespace: &str,
    backend_ports: &[u16],
    port_name: &str,
) -> String {
    let target = backend_ports.first().copied().unwrap_or(0);
    documents(&[
        service(name, namespace, port_name, SERVICE_PORT, target),
        endpoints(name, namespace, port_name, backend_ports),
    ])
}

/// Service `namespace/name` plus one EndpointSlice (`<name>-<i>`) per backend port.
pub fn service_with_slices(
    name: &str,
    namespace: &str,
    backend_ports: &[u16],
    port_name: &str,
) -> String {
    let target = backend_ports.first().copied().unwrap_or(0);
    let mut docs = vec![service(name, namespace, port_name, SERVICE_PORT, target)];
    for (i, port) in backend_ports.iter().enumerate() {
        docs.push(endpoint_slice(
            name,
            &format!("{name}-{i}"),
            namespace,
            port_name,
            *port,
        ));
    }
    documents(&docs)
}

// ---------------------------------------------------------------------------------------------
// Knative ingresses

/// The simplest owned ingress: `namespace/name`, one external rule for `host`, every path to
/// `service` (same namespace) port `service_port` at 100%.
pub fn ingress(
    namespace: &str,
    name: &str,
    host: &str,
    service: &str,
    service_port: u16,
) -> String {
    Ingress::new(namespace, name)
        .rule(
            Rule::external(&[host]).path(HttpPath::new().split(Split::new(
                namespace,
                service,
                service_port,
            ))),
        )
        .to_yaml()
}

/// A Knative `networking.internal.knative.dev/v1alpha1` Ingress (or ClusterIngress) builder.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `None` leaves the class annotation out.
    pub class: Option<String>,
    pub annotations: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub creation_timestamp: Option<String>,
    pub generation: Option<i64>,
    pub rules: Vec<Rule>,
    pub http_option: Option<String>,
    pub tls: Vec<Value>,
}

impl Ingress {
    /// An `Ingress` of class [`INGRESS_CLASS`], without rules yet.
    pub fn new(namespace: &str, name: &str) -> Ingress {
        Ingress {
            kind: "Ingress".to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            class: Some(INGRESS_CLASS.to_string()),
            annotations: Vec::new(),
            labels: Vec::new(),
            creation_timestamp: None,
            generation: None,
            rules: Vec::new(),
            http_option: None,
            tls: Vec::new(),
        }
    }

    /// A `ClusterIngress` (no namespace) of class [`INGRESS_CLASS`].
    pub fn cluster(name: &str) -> Ingress {
        Ingress {
            kind: "ClusterIngress".to_string(),
            ..Ingress::new("", name)
        }
    }

    /// Sets (`Some`) or removes (`None`) the class annotation.
    pub fn class(mut self, class: Option<&str>) -> Ingress {
        self.class = class.map(str::to_string);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Ingress {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Ingress {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// `metadata.creationTimestamp` (RFC 3339), which decides host conflicts.
    pub fn created(mut self, rfc3339: &str) -> Ingress {
        self.creation_timestamp = Some(rfc3339.to_string());
        self
    }

    pub fn generation(mut self, generation: i64) -> Ingress {
        self.generation = Some(generation);
        self
    }

    pub fn rule(mut self, rule: Rule) -> Ingress {
        self.rules.push(rule);
        self
    }

    /// `spec.httpOption`: `Enabled` or `Redirected`.
    pub fn http_option(mut self, option: &str) -> Ingress {
        self.http_option = Some(option.to_string());
        self
    }

    /// Adds a `spec.tls` entry.
    pub fn tls(mut self, hosts: &[&str], secret_namespace: &str, secret_name: &str) -> Ingress {
        self.tls.push(json!({
            "hosts": hosts,
            "secretNamespace": secret_namespace,
            "secretName": secret_name,
        }));
        self
    }

    pub fn to_value(&self) -> Value {
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(self.name));
        if !self.namespace.is_empty() {
            metadata.insert("namespace".into(), json!(self.namespace));
        }
        let mut annotations = Map::new();
        if let Some(class) = &self.class {
            annotations.insert(CLASS_ANNOTATION.into(), json!(class));
        }
        for (k, v) in &self.annotations {
            annotations.insert(k.clone(), json!(v));
        }
        if !annotations.is_empty() {
            metadata.insert("annotations".into(), Value::Object(annotations));
        }
        if !self.labels.is_empty() {
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            metadata.insert("labels".into(), Value::Object(labels));
        }
        if let Some(ts) = &self.creation_timestamp {
            metadata.insert("creationTimestamp".into(), json!(ts));
        }
        if let Some(generation) = self.generation {
            metadata.insert("generation".into(), json!(generation));
        }
        let mut spec = Map::new();
        if !self.tls.is_empty() {
            spec.insert("tls".into(), Value::Array(self.tls.clone()));
        }
        spec.insert(
            "rules".into(),
            Value::Array(self.rules.iter().map(Rule::to_value).collect()),
        );
        if let Some(option) = &self.http_option {
            spec.insert("httpOption".into(), json!(option));
        }
        json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1",
            "kind": self.kind,
            "metadata": metadata,
            "spec": spec,
        })
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(&self.to_value())
    }
}

/// One `spec.rules` entry.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub hosts: Vec<String>,
    /// `ExternalIP` or `ClusterLocal`; `None` leaves it out (Knative defaults it).
    pub visibility: Option<String>,
    pub paths: Vec<HttpPath>,
}

impl Rule {
    /// A rule for `hosts` with visibility `ExternalIP`.
    pub fn external(hosts: &[&str]) -> Rule {
        Rule::new(hosts).visibility("ExternalIP")
    }

    /// A rule for `hosts` with visibility `ClusterLocal`.
    pub fn cluster_local(hosts: &[&str]) -> Rule {
        Rule::new(hosts).visibility("ClusterLocal")
    }

    /// A rule for `hosts` with no visibility set.
    pub fn new(hosts: &[&str]) -> Rule {
        Rule {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Rule::default()
        }
    }

    pub fn visibility(mut self, visibility: &str) -> Rule {
        self.visibility = Some(visibility.to_string());
        self
    }

    pub fn path(mut self, path: HttpPath) -> Rule {
        self.paths.push(path);
        self
    }

    pub fn to_value(&self) -> Value {
        let mut rule = Map::new();
        rule.insert("hosts".into(), json!(self.hosts));
        if let Some(visibility) = &self.visibility {
            rule.insert("visibility".into(), json!(visibility));
        }
        rule.insert(
            "http".into(),
            json!({"paths": self.paths.iter().map(HttpPath::to_value).collect::<Vec<_>>()}),
        );
        Value::Object(rule)
    }
}

/// One `http.paths` entry.
#[derive(Debug, Clone, Default)]
pub struct HttpPath {
    /// A path prefix (regex in Knative's terms); `None` matches everything.
    pub path: Option<String>,
    /// `headers: {name: {exact: value}}` matches.
    pub headers: Vec<(String, String)>,
    pub rewrite_host: Option<String>,
    pub append_headers: Vec<(String, String)>,
    pub splits: Vec<Split>,
}

impl HttpPath {
    /// Matches every path; add splits.
    pub fn new() -> HttpPath {
        HttpPath::default()
    }

    /// Only requests whose path starts with `path`.
    pub fn prefix(path: &str) -> HttpPath {
        HttpPath {
            path: Some(path.to_string()),
            ..HttpPath::default()
        }
    }

    /// Also require request header `name` to equal `exact`.
    pub fn header(mut self, name: &str, exact: &str) -> HttpPath {
        self.headers.push((name.to_string(), exact.to_string()));
        self
    }

    pub fn rewrite_host(mut self, host: &str) -> HttpPath {
        self.rewrite_host = Some(host.to_string());
        self
    }

    pub fn append_header(mut self, name: &str, value: &str) -> HttpPath {
        self.append_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    pub fn split(mut self, split: Split) -> HttpPath {
        self.splits.push(split);
        self
    }

    pub fn to_value(&self) -> Value {
        let mut path = Map::new();
        if let Some(p) = &self.path {
            path.insert("path".into(), json!(p));
        }
        if !self.headers.is_empty() {
            let headers: Map<String, Value> = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!({"exact": v})))
                .collect();
            path.insert("headers".into(), Value::Object(headers));
        }
        if let Some(host) = &self.rewrite_host {
            path.insert("rewriteHost".into(), json!(host));
        }
        if !self.append_headers.is_empty() {
            path.insert("appendHeaders".into(), string_map(&self.append_headers));
        }
        path.insert(
            "splits".into(),
            Value::Array(self.splits.iter().map(Split::to_value).collect()),
        );
        Value::Object(path)
    }
}

/// One traffic split.
#[derive(Debug, Clone)]
pub struct Split {
    pub service_namespace: String,
    pub service_name: String,
    /// A number or a port name.
    pub service_port: Value,
    /// `None` leaves `percent` out (Knative: 100 for a lone split).
    pub percent: Option<u32>,
    pub append_headers: Vec<(String, String)>,
}

impl Split {
    /// To Service `namespace/name` port number `port`, percent unset.
    pub fn new(namespace: &str, name: &str, port: u16) -> Split {
        Split {
            service_namespace: namespace.to_string(),
            service_name: name.to_string(),
            service_port: json!(port),
            percent: None,
            append_headers: Vec::new(),
        }
    }

    /// To Service `namespace/name` port named `port_name`.
    pub fn named_port(namespace: &str, name: &str, port_name: &str) -> Split {
        Split {
            service_port: json!(port_name),
            ..Split::new(namespace, name, 0)
        }
    }

    pub fn percent(mut self, percent: u32) -> Split {
        self.percent = Some(percent);
        self
    }

    pub fn append_header(mut self, name: &str, value: &str) -> Split {
        self.append_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    pub fn to_value(&self) -> Value {
        let mut split = Map::new();
        split.insert("serviceNamespace".into(), json!(self.service_namespace));
        split.insert("serviceName".into(), json!(self.service_name));
        split.insert("servicePort".into(), self.service_port.clone());
        if let Some(percent) = self.percent {
            split.insert("percent".into(), json!(percent));
        }
        if !self.append_headers.is_empty() {
            split.insert("appendHeaders".into(), string_map(&self.append_headers));
        }
        Value::Object(split)
    }
}

fn string_map(pairs: &[(String, String)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// A `v1` Secret of type `kubernetes.io/tls` with PEM `cert` and `key` (base64-encoded here).
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64(cert_pem.as_bytes()),
            "tls.key": base64(key_pem.as_bytes()),
        },
    })
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
