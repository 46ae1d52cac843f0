//! Knative networking `Ingress` and `ClusterIngress` (networking.internal.knative.dev/v1alpha1):
//! the types, Knative's defaults and Knative's validation.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::status::IngressStatus;

pub const API_GROUP: &str = "networking.internal.knative.dev";
pub const API_VERSION: &str = "v1alpha1";
pub const INGRESS_CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// Older spelling of the class annotation, still honoured by Knative.
pub const LEGACY_INGRESS_CLASS_ANNOTATION: &str = "networking.knative.dev/ingress-class";

/// Which of the two Knative kinds an ingress object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IngressKind {
    Ingress,
    ClusterIngress,
}

impl IngressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressKind::Ingress => "Ingress",
            IngressKind::ClusterIngress => "ClusterIngress",
        }
    }
}

/// Identity of an ingress: `ClusterIngress` objects have an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IngressKey {
    pub kind: IngressKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for IngressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339; used to decide domain conflicts (oldest wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The objects this one belongs to: a Route's Ingress names its Route here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

/// What an owner reference says that sluice uses: who the owner is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub controller: bool,
}

impl ObjectMeta {
    /// The owner that controls this object, if any.
    pub fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references.iter().find(|owner| owner.controller)
    }
}

/// An `Ingress` or `ClusterIngress` as read from a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IngressSpec,
    /// The status the API server holds: reported, never served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IngressStatus>,
}

// Two printer columns repeat the derive's `printcolumn` attribute, which is how it takes a list.
#[allow(clippy::duplicated_attributes)]
/// The spec both kinds share. The derives also make the API server's view of the two kinds
/// ([`IngressResource`], [`ClusterIngressResource`]) and their CRDs.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "networking.internal.knative.dev",
    version = "v1alpha1",
    kind = "Ingress",
    root = "IngressResource",
    namespaced,
    status = "IngressStatus",
    shortname = "kingress",
    shortname = "king",
    category = "knative-internal",
    category = "networking",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].reason"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_option: Option<HttpOption>,
}

// Two printer columns repeat the derive's `printcolumn` attribute, which is how it takes a list.
#[allow(clippy::duplicated_attributes)]
/// The legacy cluster-scoped kind: the same spec as [`IngressSpec`], no namespace.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "networking.internal.knative.dev",
    version = "v1alpha1",
    kind = "ClusterIngress",
    root = "ClusterIngressResource",
    status = "IngressStatus",
    category = "knative-internal",
    category = "networking",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].reason"
    )
)]
pub struct ClusterIngressSpec {
    #[serde(flatten)]
    pub spec: IngressSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_namespace: String,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Visibility {
    #[default]
    ExternalIP,
    ClusterLocal,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpOption {
    #[default]
    Enabled,
    Redirected,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngressRuleValue {
    #[serde(default)]
    pub paths: Vec<HttpIngressPath>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngressPath {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rewrite_host: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
    #[serde(default)]
    pub splits: Vec<IngressBackendSplit>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(default)]
    pub exact: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressBackendSplit {
    #[serde(default)]
    pub service_namespace: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub service_port: ServicePort,
    /// `None` is Knative's "unset", which defaults to 100 for a lone split.
    #[serde(default, skip_serializing_if = "is_unset_or_zero")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

/// Go's `omitempty` on an int: zero is left out, as Knative serializes the spec.
fn is_unset_or_zero(percent: &Option<u32>) -> bool {
    percent.unwrap_or(0) == 0
}

/// Kubernetes `IntOrString` for a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServicePort {
    Number(i32),
    Name(String),
}

impl Default for ServicePort {
    fn default() -> Self {
        ServicePort::Number(0)
    }
}

/// Kubernetes spells an int-or-string with its own schema extension; a structural CRD schema
/// has no other way to say it.
impl JsonSchema for ServicePort {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePort::Number(n) => write!(f, "{n}"),
            ServicePort::Name(s) => f.write_str(s),
        }
    }
}

/// Why an ingress spec is not acceptable, in Knative's words where Knative has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("spec.rules: at least one rule is required")]
    NoRules,
    #[error("spec.rules[{rule}].hosts: at least one host is required")]
    NoHosts { rule: usize },
    #[error("spec.rules[{rule}].http: an http section with at least one path is required")]
    NoPaths { rule: usize },
    #[error("spec.rules[{rule}].http.paths[{path}].path: {reason}")]
    BadPath {
        rule: usize,
        path: usize,
        reason: &'static str,
    },
    #[error("spec.rules[{rule}].http.paths[{path}].splits: at least one split is required")]
    NoSplits { rule: usize, path: usize },
    #[error(
        "spec.rules[{rule}].http.paths[{path}].splits[{split}].percent: {percent} is outside 0..100"
    )]
    PercentOutOfRange {
        rule: usize,
        path: usize,
        split: usize,
        percent: u32,
    },
    #[error(
        "spec.rules[{rule}].http.paths[{path}].splits: percents sum to {sum}, they must sum to 100"
    )]
    PercentSum { rule: usize, path: usize, sum: u32 },
    #[error("spec.rules[{rule}].http.paths[{path}].splits[{split}].{field}: a value is required")]
    MissingBackendField {
        rule: usize,
        path: usize,
        split: usize,
        field: &'static str,
    },
    #[error(
        "spec.rules[{rule}].http.paths[{path}].splits[{split}].serviceNamespace: {found:?} must equal the ingress namespace {expected:?}"
    )]
    CrossNamespaceBackend {
        rule: usize,
        path: usize,
        split: usize,
        found: String,
        expected: String,
    },
    #[error("spec.rules[{rule}].http.paths[{path}].headers[{header}].exact: a value is required")]
    EmptyHeaderMatch {
        rule: usize,
        path: usize,
        header: String,
    },
    #[error("{field}[{}]: {reason}", abbreviated(.header))]
    BadHeader {
        field: String,
        header: String,
        reason: &'static str,
    },
    #[error("spec.rules[{rule}].http.paths[{path}].rewriteHost: contains CR, LF or NUL")]
    BadRewriteHost { rule: usize, path: usize },
    #[error("{field}: {} is not a valid host name: {reason}", abbreviated(.host))]
    BadHost {
        field: String,
        host: String,
        reason: String,
    },
    #[error("spec.tls[{index}].{field}: a value is required")]
    MissingTlsField { index: usize, field: &'static str },
    #[error("spec.tls[{index}].hosts: at least one host is required")]
    NoTlsHosts { index: usize },
}

impl Ingress {
    /// Applies Knative's defaults in place: visibility `ExternalIP`, `httpOption: Enabled`,
    /// a lone split without a percent gets 100, and an empty split namespace is the ingress's.
    pub fn set_defaults(&mut self) {
        let namespace = self.metadata.namespace.clone();
        self.spec.http_option.get_or_insert(HttpOption::Enabled);
        for rule in &mut self.spec.rules {
            rule.visibility.get_or_insert(Visibility::ExternalIP);
            for path in rule.http.iter_mut().flat_map(|http| http.paths.iter_mut()) {
                if let [only] = path.splits.as_mut_slice() {
                    only.percent.get_or_insert(100);
                }
                for split in &mut path.splits {
                    if split.service_namespace.is_empty() {
                        split.service_namespace = namespace.clone();
                    }
                }
            }
        }
        for tls in &mut self.spec.tls {
            if tls.secret_namespace.is_empty() {
                tls.secret_namespace = namespace.clone();
            }
        }
    }

    /// Knative's validation of a defaulted spec. Returns every problem found, in spec order.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        let spec = &self.spec;
        if spec.rules.is_empty() {
            errors.push(ValidationError::NoRules);
        }
        for (r, rule) in spec.rules.iter().enumerate() {
            if rule.hosts.is_empty() || rule.hosts.iter().any(String::is_empty) {
                errors.push(ValidationError::NoHosts { rule: r });
            }
            check_hosts(&format!("spec.rules[{r}].hosts"), &rule.hosts, &mut errors);
            let paths = rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default();
            if paths.is_empty() {
                errors.push(ValidationError::NoPaths { rule: r });
            }
            for (p, path) in paths.iter().enumerate() {
                self.validate_path(r, p, path, &mut errors);
            }
        }
        for (index, tls) in spec.tls.iter().enumerate() {
            if tls.hosts.is_empty() {
                errors.push(ValidationError::NoTlsHosts { index });
            }
            check_hosts(&format!("spec.tls[{index}].hosts"), &tls.hosts, &mut errors);
            if tls.secret_name.is_empty() {
                errors.push(ValidationError::MissingTlsField {
                    index,
                    field: "secretName",
                });
            }
            if tls.secret_namespace.is_empty() {
                errors.push(ValidationError::MissingTlsField {
                    index,
                    field: "secretNamespace",
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validate_path(
        &self,
        rule: usize,
        path: usize,
        spec: &HttpIngressPath,
        errors: &mut Vec<ValidationError>,
    ) {
        if !spec.path.is_empty() && !spec.path.starts_with('/') {
            errors.push(ValidationError::BadPath {
                rule,
                path,
                reason: "must start with '/'",
            });
        }
        let field = format!("spec.rules[{rule}].http.paths[{path}]");
        check_headers(
            &format!("{field}.appendHeaders"),
            &spec.append_headers,
            errors,
        );
        for (split, backend) in spec.splits.iter().enumerate() {
            check_headers(
                &format!("{field}.splits[{split}].appendHeaders"),
                &backend.append_headers,
                errors,
            );
        }
        if has_control_bytes(&spec.rewrite_host) {
            errors.push(ValidationError::BadRewriteHost { rule, path });
        }
        for (header, matcher) in &spec.headers {
            let name = header.strip_prefix(':').unwrap_or(header);
            if !is_token(name) {
                errors.push(ValidationError::BadHeader {
                    field: format!("{field}.headers"),
                    header: header.clone(),
                    reason: "not a valid HTTP header name",
                });
            }
            if matcher.exact.is_empty() {
                errors.push(ValidationError::EmptyHeaderMatch {
                    rule,
                    path,
                    header: header.clone(),
                });
            }
        }
        if spec.splits.is_empty() {
            errors.push(ValidationError::NoSplits { rule, path });
            return;
        }
        let mut sum: u32 = 0;
        for (split, backend) in spec.splits.iter().enumerate() {
            let percent = backend.percent.unwrap_or(0);
            if percent > 100 {
                errors.push(ValidationError::PercentOutOfRange {
                    rule,
                    path,
                    split,
                    percent,
                });
            }
            // Percents come from the manifest: u32::MAX + 1 must not wrap to a valid sum.
            sum = sum.saturating_add(percent);
            if backend.service_name.is_empty() {
                errors.push(ValidationError::MissingBackendField {
                    rule,
                    path,
                    split,
                    field: "serviceName",
                });
            }
            let port_missing = match &backend.service_port {
                ServicePort::Number(n) => *n <= 0,
                ServicePort::Name(name) => name.is_empty(),
            };
            if port_missing {
                errors.push(ValidationError::MissingBackendField {
                    rule,
                    path,
                    split,
                    field: "servicePort",
                });
            }
            if self.metadata.namespace.is_empty() {
                if backend.service_namespace.is_empty() {
                    errors.push(ValidationError::MissingBackendField {
                        rule,
                        path,
                        split,
                        field: "serviceNamespace",
                    });
                }
            } else if backend.service_namespace != self.metadata.namespace {
                errors.push(ValidationError::CrossNamespaceBackend {
                    rule,
                    path,
                    split,
                    found: backend.service_namespace.clone(),
                    expected: self.metadata.namespace.clone(),
                });
            }
        }
        if sum != 100 {
            errors.push(ValidationError::PercentSum { rule, path, sum });
        }
    }

    /// Knative's hash of an ingress (`ingress.ComputeHash`): SHA-256 of the spec as Go's
    /// `json.Marshal` writes it (struct field order, `omitempty`, sorted map keys, HTML-safe
    /// escaping), then the namespace and the name. Probes carry it in `K-Network-Hash`.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(&self.spec).expect("an ingress spec always serializes");
        let go_escaped = ['<', '>', '&', '\u{2028}', '\u{2029}'];
        let go_json = if json.contains(go_escaped) {
            json.chars()
                .map(|c| match c {
                    '<' => "\\u003c".to_owned(),
                    '>' => "\\u003e".to_owned(),
                    '&' => "\\u0026".to_owned(),
                    '\u{2028}' => "\\u2028".to_owned(),
                    '\u{2029}' => "\\u2029".to_owned(),
                    c => c.to_string(),
                })
                .collect()
        } else {
            json
        };
        let digest = sha2::Sha256::new()
            .chain_update(go_json.as_bytes())
            .chain_update(self.metadata.namespace.as_bytes())
            .chain_update(self.metadata.name.as_bytes())
            .finalize();
        hex::encode(digest)
    }

    /// Whether two versions ask for the same thing: the same metadata and spec, whatever the
    /// status says.
    pub fn same_request(&self, other: &Ingress) -> bool {
        self.metadata == other.metadata && self.spec == other.spec
    }

    /// The class this ingress asks for, from either spelling of the annotation.
    pub fn ingress_class(&self) -> Option<&str> {
        let annotations = &self.metadata.annotations;
        annotations
            .get(INGRESS_CLASS_ANNOTATION)
            .or_else(|| annotations.get(LEGACY_INGRESS_CLASS_ANNOTATION))
            .map(String::as_str)
    }
}

/// RFC 9110 token characters: what a header name may contain.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Envoy matches hosts, and Knative's hosts are DNS names (RFC 1123): at most 253 characters,
/// labels of 1 to 63 letters, digits and inner hyphens. Anything else would be served under a
/// name no client can ask for, or make Envoy's route configuration unwieldy.
fn check_hosts(field: &str, hosts: &[String], errors: &mut Vec<ValidationError>) {
    for (index, host) in hosts.iter().enumerate() {
        if let Err(reason) = dns_name(host) {
            errors.push(ValidationError::BadHost {
                field: format!("{field}[{index}]"),
                host: host.clone(),
                reason,
            });
        }
    }
}

const MAX_DNS_NAME: usize = 253;
const MAX_DNS_LABEL: usize = 63;

fn dns_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        // Reported as a missing host.
        return Ok(());
    }
    if host.len() > MAX_DNS_NAME {
        return Err(format!(
            "it is {} characters long, a DNS name at most {MAX_DNS_NAME}",
            host.len()
        ));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '-' | '.'))
    {
        return Err(format!(
            "it contains {bad:?}; a DNS name has only letters, digits, '-' and '.'"
        ));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (a leading, trailing or doubled '.')".into());
        }
        if label.len() > MAX_DNS_LABEL {
            return Err(format!(
                "its label {} is {} characters long, a DNS label at most {MAX_DNS_LABEL}",
                abbreviated(label),
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("its label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// A value for a message: quoted, and cut short when long (a hostile host can be megabytes).
fn abbreviated(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((end, _)) => format!(
            "{:?}... ({} characters)",
            &value[..end],
            value.chars().count()
        ),
    }
}

fn has_control_bytes(value: &str) -> bool {
    value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Envoy refuses to set pseudo-headers or `host` and rejects invalid names and values along
/// with the whole route configuration, so such an ingress is refused here instead.
fn check_headers(
    field: &str,
    headers: &BTreeMap<String, String>,
    errors: &mut Vec<ValidationError>,
) {
    for (name, value) in headers {
        let reason = if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            Some("pseudo-headers and host cannot be set; use rewriteHost to change the host")
        } else if !is_token(name) {
            Some("not a valid HTTP header name")
        } else if has_control_bytes(value) {
            Some("the value contains CR, LF or NUL")
        } else {
            None
        };
        if let Some(reason) = reason {
            errors.push(ValidationError::BadHeader {
                field: field.to_owned(),
                header: name.clone(),
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(yaml: &str) -> Ingress {
        let mut ingress: Ingress = serde_saphyr::from_str(yaml).expect("test YAML parses");
        ingress.set_defaults();
        ingress
    }

    const HELLO: &str = r#"
metadata: {name: hello, namespace: default}
spec:
  rules:
  - hosts: [hello.default.example.com]
    http:
      paths:
      - splits:
        - serviceName: hello
          servicePort: 80
"#;

    #[test]
    fn lone_split_defaults_to_100_percent_external_ip_and_own_namespace() {
        let ingress = ingress(HELLO);
        let rule = &ingress.spec.rules[0];
        assert_eq!(rule.visibility, Some(Visibility::ExternalIP));
        let split = &rule.http.as_ref().unwrap().paths[0].splits[0];
        assert_eq!(split.percent, Some(100));
        assert_eq!(split.service_namespace, "default");
        assert_eq!(ingress.spec.http_option, Some(HttpOption::Enabled));
        assert_eq!(ingress.validate(), Ok(()));
    }

    #[test]
    fn percents_must_sum_to_100() {
        let ingress = ingress(
            r#"
metadata: {name: x, namespace: default}
spec:
  rules:
  - hosts: [x.example.com]
    http:
      paths:
      - splits:
        - {serviceName: a, servicePort: 80, percent: 60}
        - {serviceName: b, servicePort: http, percent: 30}
"#,
        );
        assert_eq!(
            ingress.validate(),
            Err(vec![ValidationError::PercentSum {
                rule: 0,
                path: 0,
                sum: 90
            }])
        );
    }

    #[test]
    fn huge_percents_do_not_overflow_the_sum() {
        let mut ingress = ingress(HELLO);
        let path = &mut ingress.spec.rules[0].http.as_mut().unwrap().paths[0];
        let mut second = path.splits[0].clone();
        path.splits[0].percent = Some(u32::MAX);
        second.percent = Some(101);
        path.splits.push(second);
        let errors = ingress.validate().unwrap_err();
        assert!(
            errors.contains(&ValidationError::PercentSum {
                rule: 0,
                path: 0,
                sum: u32::MAX
            }),
            "{errors:?}"
        );
    }

    #[test]
    fn backend_in_another_namespace_is_rejected() {
        let ingress = ingress(
            r#"
metadata: {name: x, namespace: default}
spec:
  rules:
  - hosts: [x.example.com]
    http:
      paths:
      - splits: [{serviceNamespace: other, serviceName: a, servicePort: 80}]
"#,
        );
        let errors = ingress.validate().unwrap_err();
        assert!(matches!(
            errors.as_slice(),
            [ValidationError::CrossNamespaceBackend { .. }]
        ));
        assert!(errors[0].to_string().contains("\"other\""));
    }

    #[test]
    fn headers_envoy_would_refuse_are_invalid() {
        let ingress = ingress(
            r#"
metadata: {name: x, namespace: default}
spec:
  rules:
  - hosts: [x.example.com]
    http:
      paths:
      - appendHeaders: {":path": /evil, ok-header: fine}
        headers: {"bad header": {exact: x}}
        splits: [{serviceName: a, servicePort: 80, appendHeaders: {Host: other}}]
"#,
        );
        let errors: Vec<String> = ingress
            .validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("spec.rules[0].http.paths[0].appendHeaders[\":path\"]"));
        assert!(errors[1].contains("splits[0].appendHeaders[\"Host\"]"));
        assert!(errors[2].contains("headers[\"bad header\"]: not a valid HTTP header name"));
    }

    #[test]
    fn hosts_must_be_dns_names() {
        let long_label = "a".repeat(64);
        let long_host = "ab.".repeat(3_333) + "x";
        let cases = [
            (
                long_host.as_str(),
                "10000 characters long, a DNS name at most 253",
            ),
            (
                &format!("{long_label}.example.com"),
                "64 characters long, a DNS label at most 63",
            ),
            ("x.example.com\r\nEvil: 1", "it contains '\\r'"),
            ("*.example.com", "it contains '*'"),
            ("x.example.com:8080", "it contains ':'"),
            ("x..example.com", "empty label"),
            ("-x.example.com", "starts or ends with '-'"),
        ];
        for (host, reason) in cases {
            let mut ingress = ingress(HELLO);
            ingress.spec.rules[0].hosts = vec!["fine.example.com".into(), host.to_owned()];
            ingress.spec.tls.push(IngressTls {
                hosts: vec![host.to_owned()],
                secret_name: "s".into(),
                secret_namespace: "default".into(),
            });
            let errors: Vec<String> = ingress
                .validate()
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(errors.len(), 2, "{errors:?}");
            assert!(
                errors[0].starts_with("spec.rules[0].hosts[1]: ") && errors[0].contains(reason),
                "{reason}: {}",
                errors[0]
            );
            assert!(
                errors[1].starts_with("spec.tls[0].hosts[0]: "),
                "{}",
                errors[1]
            );
            assert!(
                errors[0].len() < 300,
                "a long host is cut short: {}",
                errors[0]
            );
        }
        let mut ingress = ingress(HELLO);
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        ingress.spec.rules[0].hosts = vec![longest, "UPPER.Example.com".into(), "1.2.3.4".into()];
        assert_eq!(ingress.validate(), Ok(()));
    }

    #[test]
    fn hash_is_knatives_compute_hash() {
        let ingress = ingress(HELLO);
        let spec = r#"{"rules":[{"hosts":["hello.default.example.com"],"visibility":"ExternalIP","http":{"paths":[{"splits":[{"serviceNamespace":"default","serviceName":"hello","servicePort":80,"percent":100}]}]}}],"httpOption":"Enabled"}"#;
        let expected = hex::encode(sha2::Sha256::digest(format!("{spec}defaulthello")));
        assert_eq!(ingress.hash(), expected);

        let mut escaped = ingress.clone();
        escaped.spec.rules[0].hosts = vec!["a<b>&c".into()];
        let spec = spec.replace("hello.default.example.com", "a\\u003cb\\u003e\\u0026c");
        let expected = hex::encode(sha2::Sha256::digest(format!("{spec}defaulthello")));
        assert_eq!(
            escaped.hash(),
            expected,
            "Go's json.Marshal escapes <, > and &"
        );
    }

    #[test]
    fn tls_needs_a_secret_name() {
        let mut ingress = ingress(HELLO);
        ingress.spec.tls.push(IngressTls {
            hosts: vec!["hello.default.example.com".into()],
            ..Default::default()
        });
        ingress.set_defaults();
        assert_eq!(
            ingress.validate(),
            Err(vec![ValidationError::MissingTlsField {
                index: 0,
                field: "secretName"
            }])
        );
    }

    #[test]
    fn named_service_port_and_class_annotation_parse() {
        let ingress = ingress(
            r#"
metadata:
  name: x
  namespace: default
  annotations: {networking.knative.dev/ingress-class: sluice.ingress.networking.knative.dev}
spec:
  rules:
  - hosts: [x.example.com]
    visibility: ClusterLocal
    http:
      paths:
      - path: /api
        splits: [{serviceName: a, servicePort: h2c}]
"#,
        );
        assert_eq!(
            ingress.ingress_class(),
            Some("sluice.ingress.networking.knative.dev")
        );
        let split = &ingress.spec.rules[0].http.as_ref().unwrap().paths[0].splits[0];
        assert_eq!(split.service_port, ServicePort::Name("h2c".into()));
        assert_eq!(ingress.validate(), Ok(()));
    }
}
