//! A Route's traffic resolved to revisions, and the Ingress Knative Serving's route reconciler
//! makes for it (knative/serving `pkg/reconciler/route/traffic` and `resources/ingress.go`):
//!
//! - Traffic is grouped by name: the Route's own group holds every target, each tag also one of
//!   its own. Within a group, targets of the same revision are summed, and a group of one target
//!   gets 100% (a 0% tag still serves its own host).
//! - Each group gets a ClusterLocal rule (`name.ns`, `name.ns.svc`, `name.ns.svc.<cluster
//!   domain>`) and, unless the Route is cluster-local, an ExternalIP rule with its public host;
//!   groups in name order, the Route's own first.
//! - Each path splits between the group's revisions with more than 0%: the revision's Service,
//!   port 80, and the headers `Knative-Serving-Revision` and `Knative-Serving-Namespace`.
//! - With tag-header routing, the Route's own hosts first match `Knative-Serving-Tag: <tag>` to
//!   each tag's revision, and otherwise append `Knative-Serving-Default-Route: true`; a tag's
//!   hosts append `Knative-Serving-Tag: <tag>`.

use std::collections::BTreeMap;

use crate::knative::{
    HeaderMatch, HttpIngressPath, HttpIngressRuleValue, INGRESS_CLASS_ANNOTATION, Ingress,
    IngressBackendSplit, IngressRule, IngressSpec, LEGACY_INGRESS_CLASS_ANNOTATION, ObjectMeta,
    OwnerReference, ROUTE_LABEL, ROUTE_NAMESPACE_LABEL, Route, SERVING_GROUP, SERVING_VERSION,
    ServicePort, TrafficTarget, Visibility,
};

use super::domains::{self, BadHost, DomainConfig};

pub const REVISION_HEADER: &str = "Knative-Serving-Revision";
pub const NAMESPACE_HEADER: &str = "Knative-Serving-Namespace";
pub const TAG_HEADER: &str = "Knative-Serving-Tag";
pub const DEFAULT_ROUTE_HEADER: &str = "Knative-Serving-Default-Route";
/// The tags' hosts, as JSON, on the Ingress.
pub const TAG_TO_HOST_ANNOTATION: &str = "networking.internal.knative.dev/tag-to-host";
/// A revision's Kubernetes Service listens here, as Knative creates it.
pub const REVISION_PORT: i32 = 80;
/// Annotations a Route's Ingress does not inherit (Knative's `ExcludedAnnotations`).
const EXCLUDED_ANNOTATIONS: [&str; 3] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    LEGACY_INGRESS_CLASS_ANNOTATION,
    "networking.knative.dev/certificate-class",
];

/// What shapes every Route's Ingress besides the Route itself.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub domains: &'a DomainConfig,
    pub cluster_domain: &'a str,
    /// The class a Route's Ingress gets unless the Route names one.
    pub ingress_class: &'a str,
    pub tag_header_routing: bool,
}

/// One traffic target at the revision level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tag: String,
    pub revision: String,
    pub percent: i64,
    pub latest_revision: bool,
}

/// Why a target does not resolve to a revision, as Knative's route status says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// The Configuration a target names is not there (`ConfigurationMissing`).
    ConfigurationMissing { configuration: String },
    /// The Configuration has no ready revision yet (`RevisionMissing`).
    NotReady { configuration: String },
}

/// Resolves each target of a valid, defaulted Route to its revision; `latest_ready` gives a
/// Configuration's `status.latestReadyRevisionName` (`None`: no such Configuration). Like
/// Knative, a missing Configuration is reported over one that is not ready.
pub fn resolve<'a>(
    route: &Route,
    latest_ready: impl Fn(&str) -> Option<&'a str>,
) -> Result<Vec<Resolved>, Unresolved> {
    let mut resolved = Vec::new();
    let mut problem = None;
    for target in &route.spec.traffic {
        let revision = if target.revision_name.is_empty() {
            let configuration = target.configuration_name.clone();
            match latest_ready(&configuration) {
                None => {
                    problem = Some(Unresolved::ConfigurationMissing { configuration });
                    continue;
                }
                Some("") => {
                    if problem.is_none() {
                        problem = Some(Unresolved::NotReady { configuration });
                    }
                    continue;
                }
                Some(revision) => revision.to_owned(),
            }
        } else {
            target.revision_name.clone()
        };
        resolved.push(Resolved {
            tag: target.tag.clone(),
            revision,
            percent: target.percent.unwrap_or(0),
            latest_revision: target.latest_revision.unwrap_or(false),
        });
    }
    match problem {
        Some(problem) => Err(problem),
        None => Ok(resolved),
    }
}

/// The Ingress for a Route whose traffic resolved, and the traffic its status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub ingress: Ingress,
    pub traffic: Vec<TrafficTarget>,
}

/// Builds the Route's Ingress, named and labelled as Knative names and labels it.
pub fn generate(
    route: &Route,
    resolved: &[Resolved],
    settings: &Settings,
) -> Result<Generated, BadHost> {
    let namespace = route.metadata.namespace.as_str();
    let mut groups: BTreeMap<&str, Vec<&Resolved>> = BTreeMap::new();
    for target in resolved {
        groups.entry("").or_default().push(target);
        if !target.tag.is_empty() {
            groups.entry(&target.tag).or_default().push(target);
        }
    }
    let groups: BTreeMap<&str, Vec<(&str, i64)>> = groups
        .into_iter()
        .map(|(name, targets)| (name, consolidate(&targets)))
        .collect();
    let mut rules = Vec::new();
    let mut tag_to_host: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut tag_urls: BTreeMap<&str, String> = BTreeMap::new();
    for (name, splits) in &groups {
        let hosts = domains::hosts(route, name, settings.domains, settings.cluster_domain)?;
        let path = base_path(namespace, splits);
        let mut group_rules = vec![rule(
            hosts.cluster_local_expanded(settings.cluster_domain),
            Visibility::ClusterLocal,
            path.clone(),
        )];
        if let Some(external) = &hosts.external {
            group_rules.push(rule(vec![external.clone()], Visibility::ExternalIP, path));
        }
        if settings.tag_header_routing {
            for group_rule in &mut group_rules {
                add_tag_header_routing(group_rule, name, &groups, namespace);
            }
        }
        rules.extend(group_rules);
        if !name.is_empty() {
            tag_to_host
                .entry(name)
                .or_default()
                .extend(std::iter::once(hosts.cluster_local.clone()).chain(hosts.external.clone()));
            tag_urls.insert(name, hosts.url());
        }
    }
    let traffic = status_traffic(resolved, &tag_urls);
    let mut annotations = BTreeMap::from([(
        INGRESS_CLASS_ANNOTATION.to_owned(),
        route_class(route)
            .unwrap_or(settings.ingress_class)
            .to_owned(),
    )]);
    annotations.extend(route.metadata.annotations.clone());
    annotations.retain(|key, _| !EXCLUDED_ANNOTATIONS.contains(&key.as_str()));
    if !tag_to_host.is_empty() {
        annotations.insert(
            TAG_TO_HOST_ANNOTATION.to_owned(),
            serde_json::to_string(&tag_to_host).expect("a map of strings serializes"),
        );
    }
    let mut labels = route.metadata.labels.clone();
    labels.insert(ROUTE_LABEL.to_owned(), route.metadata.name.clone());
    labels.insert(ROUTE_NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    let ingress = Ingress {
        metadata: ObjectMeta {
            name: route.metadata.name.clone(),
            namespace: namespace.to_owned(),
            annotations,
            labels,
            creation_timestamp: route.metadata.creation_timestamp.clone(),
            generation: None,
            owner_references: vec![OwnerReference {
                api_version: format!("{SERVING_GROUP}/{SERVING_VERSION}"),
                kind: "Route".to_owned(),
                name: route.metadata.name.clone(),
                controller: true,
            }],
        },
        spec: IngressSpec {
            tls: Vec::new(),
            rules,
            http_option: Some(route.http_option().unwrap_or_default()),
        },
        status: None,
    };
    Ok(Generated { ingress, traffic })
}

/// The class the Route asks for, from either spelling of the annotation.
fn route_class(route: &Route) -> Option<&str> {
    let annotations = &route.metadata.annotations;
    annotations
        .get(INGRESS_CLASS_ANNOTATION)
        .or_else(|| annotations.get(LEGACY_INGRESS_CLASS_ANNOTATION))
        .map(String::as_str)
}

/// A group's revisions with their shares: the same revision summed, in first-seen order; a
/// lone revision gets everything.
fn consolidate<'a>(targets: &[&'a Resolved]) -> Vec<(&'a str, i64)> {
    let mut splits: Vec<(&str, i64)> = Vec::new();
    for target in targets {
        match splits.iter_mut().find(|(rev, _)| *rev == target.revision) {
            Some((_, percent)) => *percent += target.percent,
            None => splits.push((&target.revision, target.percent)),
        }
    }
    if let [(_, percent)] = splits.as_mut_slice() {
        *percent = 100;
    }
    splits
}

fn base_path(namespace: &str, splits: &[(&str, i64)]) -> HttpIngressPath {
    HttpIngressPath {
        splits: splits
            .iter()
            .filter(|(_, percent)| *percent > 0)
            .map(|(revision, percent)| IngressBackendSplit {
                service_namespace: namespace.to_owned(),
                service_name: (*revision).to_owned(),
                service_port: ServicePort::Number(REVISION_PORT),
                percent: u32::try_from(*percent).ok(),
                append_headers: BTreeMap::from([
                    (REVISION_HEADER.to_owned(), (*revision).to_owned()),
                    (NAMESPACE_HEADER.to_owned(), namespace.to_owned()),
                ]),
            })
            .collect(),
        ..HttpIngressPath::default()
    }
}

fn rule(hosts: Vec<String>, visibility: Visibility, path: HttpIngressPath) -> IngressRule {
    IngressRule {
        hosts,
        visibility: Some(visibility),
        http: Some(HttpIngressRuleValue { paths: vec![path] }),
    }
}

fn add_tag_header_routing(
    rule: &mut IngressRule,
    name: &str,
    groups: &BTreeMap<&str, Vec<(&str, i64)>>,
    namespace: &str,
) {
    let Some(http) = rule.http.as_mut() else {
        return;
    };
    if name.is_empty() {
        http.paths[0]
            .append_headers
            .insert(DEFAULT_ROUTE_HEADER.to_owned(), "true".to_owned());
        let tagged = groups
            .iter()
            .filter(|(tag, _)| !tag.is_empty())
            .map(|(tag, splits)| HttpIngressPath {
                headers: BTreeMap::from([(
                    TAG_HEADER.to_owned(),
                    HeaderMatch {
                        exact: (*tag).to_owned(),
                    },
                )]),
                ..base_path(namespace, splits)
            });
        http.paths.splice(0..0, tagged);
    } else {
        http.paths[0]
            .append_headers
            .insert(TAG_HEADER.to_owned(), name.to_owned());
    }
}

/// The traffic a Route's status reports: each target at its revision, targets with the same
/// tag, revision and `latestRevision` summed, tags with their URL.
fn status_traffic(resolved: &[Resolved], tag_urls: &BTreeMap<&str, String>) -> Vec<TrafficTarget> {
    let mut merged: Vec<&Resolved> = Vec::new();
    let mut percents: Vec<i64> = Vec::new();
    for target in resolved {
        let same = merged.iter().position(|seen| {
            seen.tag == target.tag
                && seen.revision == target.revision
                && seen.latest_revision == target.latest_revision
        });
        match same {
            Some(index) => percents[index] += target.percent,
            None => {
                merged.push(target);
                percents.push(target.percent);
            }
        }
    }
    merged
        .into_iter()
        .zip(percents)
        .map(|(target, percent)| TrafficTarget {
            tag: target.tag.clone(),
            revision_name: target.revision.clone(),
            latest_revision: Some(target.latest_revision),
            percent: Some(percent),
            url: tag_urls.get(target.tag.as_str()).cloned(),
            ..TrafficTarget::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Each rule of Knative's route reconciler, checked against the Ingress Knative makes for
    //! the same Route: the expected Ingresses are written by hand from knative/serving's
    //! `resources/ingress_test.go` and `traffic/traffic_test.go` (namespace `test-ns`, domain
    //! `example.com`, cluster domain `cluster.local`).

    use super::*;
    use crate::knative::HttpOption;

    const NS: &str = "test-ns";

    fn route(yaml: &str) -> Route {
        let mut route: Route = serde_saphyr::from_str(yaml).expect("test YAML parses");
        route.metadata.namespace = NS.into();
        route.set_defaults();
        route.validate().expect("a valid route");
        route
    }

    fn settings(domains: &DomainConfig, tag_header_routing: bool) -> Settings<'_> {
        Settings {
            domains,
            cluster_domain: "cluster.local",
            ingress_class: "sluice.ingress.networking.knative.dev",
            tag_header_routing,
        }
    }

    fn ingress_for(route: &Route, configurations: &[(&str, &str)], tags: bool) -> Generated {
        let resolved = resolve(route, |name| {
            configurations
                .iter()
                .find(|(configuration, _)| *configuration == name)
                .map(|(_, revision)| *revision)
        })
        .expect("every target resolves");
        let domains = DomainConfig::single("example.com");
        generate(route, &resolved, &settings(&domains, tags)).expect("valid hosts")
    }

    /// The expected Ingress, as YAML in Knative's own shape.
    fn expected(yaml: &str) -> Ingress {
        serde_saphyr::from_str(yaml).expect("expected YAML parses")
    }

    fn split(revision: &str, percent: u32) -> String {
        format!(
            "{{serviceNamespace: test-ns, serviceName: {revision}, servicePort: 80, percent: {percent}, \
             appendHeaders: {{Knative-Serving-Revision: {revision}, Knative-Serving-Namespace: test-ns}}}}"
        )
    }

    /// `TestMakeIngressCorrectMetadata`: the Route's name and namespace, its labels plus the
    /// route labels (which it cannot override), its annotations over the class, and the
    /// Route as controlling owner; kubectl's last-applied annotation is not inherited
    /// (`TestIngressNoKubectlAnnotation`).
    #[test]
    fn metadata() {
        let route = route(
            r#"
metadata:
  name: test-route
  labels: {serving.knative.dev/route: try-to-override, serving.knative.dev/routeNamespace: try-to-override, test-label: foo}
  annotations: {networking.knative.dev/ingress.class: ok-ingress, test-annotation: bar, kubectl.kubernetes.io/last-applied-configuration: "{}"}
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  traffic: [{revisionName: v1, percent: 100}]
"#,
        );
        let meta = ingress_for(&route, &[], false).ingress.metadata;
        assert_eq!(meta.name, "test-route");
        assert_eq!(meta.namespace, NS);
        assert_eq!(
            meta.labels,
            BTreeMap::from([
                ("serving.knative.dev/route".into(), "test-route".into()),
                ("serving.knative.dev/routeNamespace".into(), NS.into()),
                ("test-label".into(), "foo".into()),
            ])
        );
        assert_eq!(
            meta.annotations,
            BTreeMap::from([
                (
                    "networking.knative.dev/ingress.class".into(),
                    "ok-ingress".into()
                ),
                ("test-annotation".into(), "bar".into()),
            ])
        );
        assert_eq!(
            meta.controller(),
            Some(&OwnerReference {
                api_version: "serving.knative.dev/v1".into(),
                kind: "Route".into(),
                name: "test-route".into(),
                controller: true,
            })
        );
        assert_eq!(
            meta.creation_timestamp.as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
    }

    /// `TestMakeIngressSpecCorrectRules`: the Route's own group (ClusterLocal, then
    /// ExternalIP), then each tag's, a lone target at 100%; the tag-to-host annotation of
    /// `TestMakeIngressWithTaggedRollout`.
    #[test]
    fn rules_per_name_and_visibility() {
        let route = route(
            r#"
metadata: {name: test-route}
spec:
  traffic:
  - {revisionName: v2, percent: 100}
  - {tag: v1, revisionName: v1, percent: 0}
"#,
        );
        let generated = ingress_for(&route, &[], false);
        let want = expected(&format!(
            r#"
metadata: {{name: test-route}}
spec:
  rules:
  - hosts: [test-route.test-ns, test-route.test-ns.svc, test-route.test-ns.svc.cluster.local]
    visibility: ClusterLocal
    http: {{paths: [{{splits: [{v2}]}}]}}
  - hosts: [test-route.test-ns.example.com]
    visibility: ExternalIP
    http: {{paths: [{{splits: [{v2}]}}]}}
  - hosts: [v1-test-route.test-ns, v1-test-route.test-ns.svc, v1-test-route.test-ns.svc.cluster.local]
    visibility: ClusterLocal
    http: {{paths: [{{splits: [{v1}]}}]}}
  - hosts: [v1-test-route.test-ns.example.com]
    visibility: ExternalIP
    http: {{paths: [{{splits: [{v1}]}}]}}
  httpOption: Enabled
"#,
            v2 = split("v2", 100),
            v1 = split("v1", 100),
        ));
        assert_eq!(generated.ingress.spec, want.spec);
        assert_eq!(
            generated.ingress.metadata.annotations[TAG_TO_HOST_ANNOTATION],
            r#"{"v1":["v1-test-route.test-ns.svc.cluster.local","v1-test-route.test-ns.example.com"]}"#
        );
    }

    /// `TestMakeIngressRuleZeroPercentTarget` and `TestMakeIngressRuleTwoTargets`: 0% targets
    /// are left out of the split, the others keep their share and their order.
    #[test]
    fn zero_percent_targets_are_dropped() {
        let route = route(
            r#"
metadata: {name: test-route, labels: {networking.knative.dev/visibility: cluster-local}}
spec:
  traffic:
  - {revisionName: revision-beluga, percent: 80}
  - {revisionName: new-revision-narwhal, percent: 20}
  - {revisionName: new-revision-orca, percent: 0}
"#,
        );
        let generated = ingress_for(&route, &[], false);
        let want = expected(&format!(
            r#"
spec:
  rules:
  - hosts: [test-route.test-ns, test-route.test-ns.svc, test-route.test-ns.svc.cluster.local]
    visibility: ClusterLocal
    http: {{paths: [{{splits: [{a}, {b}]}}]}}
  httpOption: Enabled
"#,
            a = split("revision-beluga", 80),
            b = split("new-revision-narwhal", 20),
        ));
        assert_eq!(generated.ingress.spec, want.spec);
    }

    /// `TestMakeIngressSpecCorrectRuleVisibility` ("private route"): the visibility label
    /// makes every rule ClusterLocal, tags included.
    #[test]
    fn a_cluster_local_route_has_no_public_rule() {
        let route = route(
            r#"
metadata: {name: myroute, labels: {networking.knative.dev/visibility: cluster-local}}
spec:
  traffic: [{tag: t, revisionName: v2, percent: 100}]
"#,
        );
        let generated = ingress_for(&route, &[], false);
        let visibilities: Vec<_> = generated
            .ingress
            .spec
            .rules
            .iter()
            .map(|rule| (rule.hosts[0].as_str(), rule.visibility))
            .collect();
        assert_eq!(
            visibilities,
            [
                ("myroute.test-ns", Some(Visibility::ClusterLocal)),
                ("t-myroute.test-ns", Some(Visibility::ClusterLocal)),
            ]
        );
        assert_eq!(
            generated.traffic[0].url.as_deref(),
            Some("http://t-myroute.test-ns.svc.cluster.local")
        );
    }

    /// traffic.go's `consolidate`: targets of the same revision are summed in the Route's
    /// group; `mergeIfNecessary`: the status merges only the same tag, revision and
    /// `latestRevision`.
    #[test]
    fn targets_of_the_same_revision_are_merged() {
        let route = route(
            r#"
metadata: {name: test-route}
spec:
  traffic:
  - {revisionName: a, percent: 30}
  - {revisionName: b, percent: 40}
  - {revisionName: a, percent: 20}
  - {tag: also-a, revisionName: a, percent: 10}
"#,
        );
        let generated = ingress_for(&route, &[], false);
        let splits: Vec<(String, Option<u32>)> =
            generated.ingress.spec.rules[1].http.as_ref().unwrap().paths[0]
                .splits
                .iter()
                .map(|split| (split.service_name.clone(), split.percent))
                .collect();
        assert_eq!(splits, [("a".into(), Some(60)), ("b".into(), Some(40))]);
        let status: Vec<(&str, &str, Option<i64>)> = generated
            .traffic
            .iter()
            .map(|t| (t.tag.as_str(), t.revision_name.as_str(), t.percent))
            .collect();
        assert_eq!(
            status,
            [
                ("", "a", Some(50)),
                ("", "b", Some(40)),
                ("also-a", "a", Some(10))
            ]
        );
        assert_eq!(
            generated.traffic[2].url.as_deref(),
            Some("http://also-a-test-route.test-ns.example.com")
        );
    }

    /// `TestMakeIngressSpecCorrectRulesWithTagBasedRouting`.
    #[test]
    fn tag_header_routing() {
        let route = route(
            r#"
metadata: {name: test-route}
spec:
  traffic:
  - {revisionName: v2, percent: 100}
  - {tag: v1, revisionName: v1, percent: 0}
"#,
        );
        let generated = ingress_for(&route, &[], true);
        let main = format!(
            "[{{headers: {{Knative-Serving-Tag: {{exact: v1}}}}, splits: [{v1}]}}, \
             {{appendHeaders: {{Knative-Serving-Default-Route: 'true'}}, splits: [{v2}]}}]",
            v1 = split("v1", 100),
            v2 = split("v2", 100),
        );
        let tagged = format!(
            "[{{appendHeaders: {{Knative-Serving-Tag: v1}}, splits: [{v1}]}}]",
            v1 = split("v1", 100),
        );
        let want = expected(&format!(
            r#"
spec:
  rules:
  - hosts: [test-route.test-ns, test-route.test-ns.svc, test-route.test-ns.svc.cluster.local]
    visibility: ClusterLocal
    http: {{paths: {main}}}
  - hosts: [test-route.test-ns.example.com]
    visibility: ExternalIP
    http: {{paths: {main}}}
  - hosts: [v1-test-route.test-ns, v1-test-route.test-ns.svc, v1-test-route.test-ns.svc.cluster.local]
    visibility: ClusterLocal
    http: {{paths: {tagged}}}
  - hosts: [v1-test-route.test-ns.example.com]
    visibility: ExternalIP
    http: {{paths: {tagged}}}
  httpOption: Enabled
"#
        ));
        assert_eq!(generated.ingress.spec, want.spec);
    }

    /// traffic.go's `addConfigurationTarget`: a configuration target is its Configuration's
    /// latest ready revision; a missing Configuration wins over one that is not ready.
    #[test]
    fn configuration_targets_resolve_to_the_latest_ready_revision() {
        let route = route(
            r#"
metadata: {name: test-route}
spec:
  traffic:
  - {configurationName: config, percent: 90}
  - {tag: pinned, revisionName: config-00001, percent: 10}
"#,
        );
        let generated = ingress_for(&route, &[("config", "config-00002")], false);
        let status: Vec<(&str, Option<bool>)> = generated
            .traffic
            .iter()
            .map(|t| (t.revision_name.as_str(), t.latest_revision))
            .collect();
        assert_eq!(
            status,
            [("config-00002", Some(true)), ("config-00001", Some(false))]
        );
        let not_ready = resolve(&route, |_| Some(""));
        assert_eq!(
            not_ready,
            Err(Unresolved::NotReady {
                configuration: "config".into()
            })
        );
        let two = self::route(
            r#"
metadata: {name: test-route}
spec:
  traffic:
  - {configurationName: ready-later, percent: 50}
  - {configurationName: gone, percent: 50}
"#,
        );
        let missing = resolve(&two, |name| (name == "ready-later").then_some(""));
        assert_eq!(
            missing,
            Err(Unresolved::ConfigurationMissing {
                configuration: "gone".into()
            })
        );
    }

    /// `TestMakeIngressWithHTTPOption`: the annotation sets the Ingress's `httpOption`.
    #[test]
    fn http_protocol_annotation() {
        let route = route(
            r#"
metadata: {name: test-route, annotations: {networking.knative.dev/http-protocol: redirected}}
spec:
  traffic: [{revisionName: v1, percent: 100}]
"#,
        );
        let generated = ingress_for(&route, &[], false);
        assert_eq!(
            generated.ingress.spec.http_option,
            Some(HttpOption::Redirected)
        );
    }

    /// `TestMakeIngressFailToGenerateTagHost`: a tag host that is not a DNS name fails.
    #[test]
    fn an_invalid_tag_host_fails() {
        let long = "t".repeat(60);
        let route = route(&format!(
            "metadata: {{name: test-route}}\nspec:\n  traffic: [{{tag: {long}, revisionName: v1, percent: 100}}]\n"
        ));
        let domains = DomainConfig::single("example.com");
        let error = generate(
            &route,
            &resolve(&route, |_| None).unwrap(),
            &settings(&domains, false),
        )
        .unwrap_err();
        assert!(error.host.starts_with(&format!("{long}-test-route.")));
    }

    /// The generated Ingress is one sluice serves: it passes Knative's ingress validation.
    #[test]
    fn the_ingress_is_valid() {
        let route = route(
            r#"
metadata: {name: test-route}
spec:
  traffic:
  - {revisionName: a, percent: 50}
  - {tag: b, revisionName: b, percent: 50}
"#,
        );
        let mut ingress = ingress_for(&route, &[], true).ingress;
        ingress.set_defaults();
        assert_eq!(ingress.validate(), Ok(()));
    }
}
