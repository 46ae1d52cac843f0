//! Knative Serving's `Route` and `Configuration` (serving.knative.dev/v1): the types sluice
//! reads, Knative's defaults and Knative's validation of a Route's traffic.
//!
//! The older `v1alpha1` shape is read too: its deprecated per-target `name` is the `tag`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ingress::ObjectMeta;
use super::status::StatusCondition;

pub const SERVING_GROUP: &str = "serving.knative.dev";
/// The version sluice watches and writes; the API server converts the older ones.
pub const SERVING_VERSION: &str = "v1";
/// The label Knative puts on a Route's Ingress, naming the Route.
pub const ROUTE_LABEL: &str = "serving.knative.dev/route";
/// The label Knative puts on a Route's Ingress, naming the Route's namespace.
pub const ROUTE_NAMESPACE_LABEL: &str = "serving.knative.dev/routeNamespace";
/// A Route labelled `cluster-local` with it is reachable only inside the cluster.
pub const VISIBILITY_LABEL: &str = "networking.knative.dev/visibility";
pub const CLUSTER_LOCAL: &str = "cluster-local";
/// `Enabled` or `Redirected` (any case): the Route's Ingress's `httpOption`.
pub const HTTP_PROTOCOL_ANNOTATION: &str = "networking.knative.dev/http-protocol";

/// A Route as read from a manifest or the API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RouteSpec,
    /// The status the API server holds: reported, never used to route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
    /// The manifest file it was read from, in file mode: `sluice rollout` rewrites it there.
    #[serde(skip)]
    pub origin: Option<String>,
}

// Two printer columns repeat the derive's `printcolumn` attribute, which is how it takes a list.
#[allow(clippy::duplicated_attributes)]
/// Which revisions get which share of traffic, under which tags. The derive also makes the API
/// server's view ([`RouteResource`]) and the CRD `sluice install crds` applies where Knative
/// Serving is not installed.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Route",
    root = "RouteResource",
    namespaced,
    status = "RouteStatus",
    shortname = "rt",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
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
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub configuration_name: String,
    /// Defaults to `revisionName` being empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Only in status, and only for tagged targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `v1alpha1`'s name for `tag`; read, never written.
    #[serde(default, rename = "name", skip_serializing)]
    #[schemars(skip)]
    pub deprecated_name: String,
}

/// A Route's status as Knative's route reconciler writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// The traffic as served, each target at the revision level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// Knative's `duckv1.Addressable`: where the Route is reached inside the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A Configuration as sluice reads it: only its latest ready revision matters, the target of
/// every `configurationName` (and `latestRevision`) traffic target naming it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: ConfigurationStatus,
}

/// The CRD's view of a Configuration: its revision template is Knative Serving's business, so
/// the schema keeps whatever it holds.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Configuration",
    root = "ConfigurationResource",
    namespaced,
    status = "ConfigurationStatus",
    shortname = "config",
    shortname = "cfg",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(
        name = "LatestReady",
        type_ = "string",
        json_path = ".status.latestReadyRevisionName"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub template: Option<serde_json::Value>,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_ready_revision_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_created_revision_name: String,
}

/// Why a Route's traffic is not acceptable, in Knative's words where Knative has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteValidationError {
    #[error(
        "spec.traffic[{index}]: expected exactly one, got both: revisionName, configurationName"
    )]
    BothRevisionAndConfiguration { index: usize },
    #[error(
        "spec.traffic[{index}]: expected exactly one, got neither: revisionName, configurationName"
    )]
    NeitherRevisionNorConfiguration { index: usize },
    #[error(
        "spec.traffic[{index}].latestRevision: may not set revisionName {revision:?} when latestRevision is {latest}"
    )]
    LatestRevisionMismatch {
        index: usize,
        revision: String,
        latest: bool,
    },
    #[error("spec.traffic[{index}].{field}: invalid name {value:?}: {reason}")]
    BadName {
        index: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("spec.traffic[{index}].percent: expected 0 <= {percent} <= 100")]
    PercentOutOfRange { index: usize, percent: i64 },
    #[error("spec.traffic[{index}].tag: not a DNS 1035 label: {tag:?} {reason}")]
    BadTag {
        index: usize,
        tag: String,
        reason: &'static str,
    },
    #[error(
        "spec.traffic[{second}].tag, spec.traffic[{first}].tag: Multiple definitions for {tag:?}"
    )]
    DuplicateTag {
        tag: String,
        first: usize,
        second: usize,
    },
    #[error(
        "spec.traffic[{index}]: name {name:?} and tag {tag:?} differ; name is the old spelling of tag, keep one"
    )]
    NameAndTag {
        index: usize,
        name: String,
        tag: String,
    },
    #[error("spec.traffic[{index}].url: must not be set in spec")]
    UrlInSpec { index: usize },
    #[error("spec.traffic: Traffic targets sum to {sum}, want 100")]
    PercentSum { sum: i64 },
    #[error(
        "metadata.annotations[{HTTP_PROTOCOL_ANNOTATION}]: incorrect http-protocol annotation: {value:?} (Enabled or Redirected)"
    )]
    BadHttpProtocol { value: String },
}

impl Route {
    /// Knative's defaults: `latestRevision` is true when there is no `revisionName`, a missing
    /// percent is 0; the deprecated `name` becomes the `tag`.
    pub fn set_defaults(&mut self) {
        for target in &mut self.spec.traffic {
            if target.tag.is_empty() && !target.deprecated_name.is_empty() {
                target.tag = std::mem::take(&mut target.deprecated_name);
            } else if target.deprecated_name == target.tag {
                target.deprecated_name.clear();
            }
            target
                .latest_revision
                .get_or_insert(target.revision_name.is_empty());
            target.percent.get_or_insert(0);
        }
    }

    /// Knative's validation of a defaulted Route. Returns every problem found, in spec order.
    pub fn validate(&self) -> Result<(), Vec<RouteValidationError>> {
        let mut errors = Vec::new();
        let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
        let mut sum = 0;
        for (index, target) in self.spec.traffic.iter().enumerate() {
            validate_target(index, target, &mut errors);
            sum += target.percent.unwrap_or(0);
            if target.tag.is_empty() {
                continue;
            }
            if let Err(reason) = dns1035_label(&target.tag) {
                errors.push(RouteValidationError::BadTag {
                    index,
                    tag: target.tag.clone(),
                    reason,
                });
            }
            match tags.get(target.tag.as_str()) {
                Some(&first) => errors.push(RouteValidationError::DuplicateTag {
                    tag: target.tag.clone(),
                    first,
                    second: index,
                }),
                None => {
                    tags.insert(&target.tag, index);
                }
            }
        }
        if sum != 100 {
            errors.push(RouteValidationError::PercentSum { sum });
        }
        if let Err(value) = self.http_option() {
            errors.push(RouteValidationError::BadHttpProtocol { value });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The `httpOption` of the Route's Ingress, from its annotation (default `Enabled`); the
    /// annotation's value when it is neither.
    pub fn http_option(&self) -> Result<super::HttpOption, String> {
        match self.metadata.annotations.get(HTTP_PROTOCOL_ANNOTATION) {
            None => Ok(super::HttpOption::Enabled),
            Some(value) if value.eq_ignore_ascii_case("enabled") => Ok(super::HttpOption::Enabled),
            Some(value) if value.eq_ignore_ascii_case("redirected") => {
                Ok(super::HttpOption::Redirected)
            }
            Some(value) => Err(value.clone()),
        }
    }

    /// Whether the Route's label keeps all of it inside the cluster.
    pub fn is_cluster_local(&self) -> bool {
        self.metadata
            .labels
            .get(VISIBILITY_LABEL)
            .map(String::as_str)
            == Some(CLUSTER_LOCAL)
    }

    /// Whether two versions ask for the same thing, whatever their status says.
    pub fn same_request(&self, other: &Route) -> bool {
        self.metadata == other.metadata && self.spec == other.spec && self.origin == other.origin
    }
}

fn validate_target(index: usize, target: &TrafficTarget, errors: &mut Vec<RouteValidationError>) {
    if !target.deprecated_name.is_empty() {
        errors.push(RouteValidationError::NameAndTag {
            index,
            name: target.deprecated_name.clone(),
            tag: target.tag.clone(),
        });
    }
    let pinned = !target.revision_name.is_empty();
    if let Some(latest) = target.latest_revision
        && latest == pinned
    {
        errors.push(RouteValidationError::LatestRevisionMismatch {
            index,
            revision: target.revision_name.clone(),
            latest,
        });
    }
    match (
        target.revision_name.as_str(),
        target.configuration_name.as_str(),
    ) {
        ("", "") => errors.push(RouteValidationError::NeitherRevisionNorConfiguration { index }),
        (_, "") | ("", _) => {
            let (field, value) = if pinned {
                ("revisionName", &target.revision_name)
            } else {
                ("configurationName", &target.configuration_name)
            };
            if let Err(reason) = qualified_name(value) {
                errors.push(RouteValidationError::BadName {
                    index,
                    field,
                    value: value.clone(),
                    reason,
                });
            }
        }
        _ => errors.push(RouteValidationError::BothRevisionAndConfiguration { index }),
    }
    if let Some(percent) = target.percent
        && !(0..=100).contains(&percent)
    {
        errors.push(RouteValidationError::PercentOutOfRange { index, percent });
    }
    if target.url.is_some() {
        errors.push(RouteValidationError::UrlInSpec { index });
    }
}

/// Kubernetes' `IsDNS1035Label`: lowercase letters, digits and `-`, starting with a letter,
/// ending with a letter or digit, at most 63 characters.
pub fn dns1035_label(value: &str) -> Result<(), &'static str> {
    if value.len() > 63 {
        return Err("must be no more than 63 characters");
    }
    let bytes = value.as_bytes();
    let valid = bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if valid {
        Ok(())
    } else {
        Err(
            "must consist of lower case alphanumeric characters or '-', start with an alphabetic \
             character, and end with an alphanumeric character",
        )
    }
}

/// Kubernetes' `IsDNS1123Label`: like a DNS-1035 label, but it may start with a digit.
pub fn dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Kubernetes' `IsQualifiedName` without a prefix: at most 63 characters of letters, digits,
/// `-`, `_` and `.`, starting and ending with a letter or digit.
fn qualified_name(value: &str) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    if bytes.len() > 63 {
        return Err("must be no more than 63 characters");
    }
    let valid = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end \
             with an alphanumeric character",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> Route {
        let mut route: Route = serde_saphyr::from_str(yaml).expect("test YAML parses");
        route.set_defaults();
        route
    }

    #[test]
    fn defaults_are_knatives() {
        let route = route(
            r#"
metadata: {name: r, namespace: default}
spec:
  traffic:
  - {configurationName: c, percent: 100}
  - {revisionName: r-1}
"#,
        );
        let traffic = &route.spec.traffic;
        assert_eq!(traffic[0].latest_revision, Some(true));
        assert_eq!(traffic[1].latest_revision, Some(false));
        assert_eq!(traffic[1].percent, Some(0));
        assert_eq!(route.validate(), Ok(()));
    }

    #[test]
    fn v1alpha1_name_is_the_tag() {
        let route = route(
            r#"
metadata: {name: r}
spec:
  traffic:
  - {name: current, revisionName: r-1, percent: 100}
"#,
        );
        assert_eq!(route.spec.traffic[0].tag, "current");
        assert_eq!(route.validate(), Ok(()));
    }

    #[test]
    fn validation_finds_every_problem() {
        let route = route(
            r#"
metadata: {name: r, annotations: {networking.knative.dev/http-protocol: sometimes}}
spec:
  traffic:
  - {revisionName: a, configurationName: b, percent: 50}
  - {tag: Bad_Tag, percent: 70}
  - {tag: dup, revisionName: c, latestRevision: true, percent: -10}
  - {tag: dup, revisionName: d}
"#,
        );
        let errors: Vec<String> = route
            .validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "spec.traffic[0]: expected exactly one, got both: revisionName, configurationName",
                "spec.traffic[1]: expected exactly one, got neither: revisionName, configurationName",
                "spec.traffic[1].tag: not a DNS 1035 label: \"Bad_Tag\" must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
                "spec.traffic[2].latestRevision: may not set revisionName \"c\" when latestRevision is true",
                "spec.traffic[2].percent: expected 0 <= -10 <= 100",
                "spec.traffic[3].tag, spec.traffic[2].tag: Multiple definitions for \"dup\"",
                "spec.traffic: Traffic targets sum to 110, want 100",
                "metadata.annotations[networking.knative.dev/http-protocol]: incorrect http-protocol annotation: \"sometimes\" (Enabled or Redirected)",
            ]
        );
    }

    #[test]
    fn tags_are_dns_1035_labels() {
        assert!(dns1035_label("latest").is_ok());
        assert!(dns1035_label("v1").is_ok());
        assert!(dns1035_label("1v").is_err());
        assert!(dns1035_label("v-").is_err());
        assert!(dns1035_label(&"a".repeat(64)).is_err());
        assert!(dns1123_label("00001"));
        assert!(!dns1123_label("a.b"));
    }
}
