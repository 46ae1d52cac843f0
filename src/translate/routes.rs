//! From a Knative ingress to the routes of each of its hosts, and from a host's routes to an
//! Envoy `RouteConfiguration` and the scopes that select it.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RedirectAction, Route, RouteAction, RouteConfiguration, RouteMatch,
    ScopedRouteConfiguration, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    redirect_action::{RedirectResponseCode, SchemeRewriteSpecifier},
    route::Action,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
    scoped_route_configuration::{Key, key::Fragment, key::fragment::Type as FragmentType},
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use serde::Serialize;

use crate::knative::{HttpIngressPath, HttpOption, Ingress, ServicePort, Visibility};
use crate::world::NsName;

/// The request header the listeners set (overwriting any client value) to say which listener a
/// request came through; it is the second fragment of every scope key.
pub const LISTENER_HEADER: &str = "x-sluice-listener";

/// A backend port as an ingress names it: one Envoy cluster each. Plans, routes and reference
/// counts all hold it, so it is shared, with its cluster name worked out once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterKey(Arc<ClusterId>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ClusterId {
    service: NsName,
    port: ServicePort,
    name: String,
}

impl ClusterKey {
    pub fn new(namespace: &str, service: &str, port: &ServicePort) -> ClusterKey {
        ClusterKey(Arc::new(ClusterId {
            name: format!("{namespace}/{service}:{port}"),
            service: NsName::new(namespace, service),
            port: port.clone(),
        }))
    }

    /// The key of the cluster sluice names `name`, if it is such a name.
    pub fn parse(name: &str) -> Option<ClusterKey> {
        let (namespace, rest) = name.split_once('/')?;
        let (service, port) = rest.rsplit_once(':')?;
        if namespace.is_empty() || service.is_empty() || port.is_empty() {
            return None;
        }
        let port = port
            .parse()
            .map_or_else(|_| ServicePort::Name(port.to_owned()), ServicePort::Number);
        Some(ClusterKey::new(namespace, service, &port))
    }

    /// The Envoy cluster name, `<namespace>/<service>:<port>`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn service(&self) -> &NsName {
        &self.0.service
    }

    pub fn port(&self) -> &ServicePort {
        &self.0.port
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    pub cluster: ClusterKey,
    pub percent: u32,
    pub set_headers: BTreeMap<String, String>,
}

/// One Knative path, ready to become one Envoy route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    pub prefix: String,
    pub headers: BTreeMap<String, String>,
    pub rewrite_host: Option<String>,
    pub set_headers: BTreeMap<String, String>,
    /// Only the splits that receive traffic: a 0% split is left out entirely.
    pub splits: Vec<SplitPlan>,
}

/// One route of a host, and whether the external listeners serve it too (it comes from an
/// ExternalIP rule); the internal listeners serve every route. A path's plan is shared by its
/// probe twin and by every host of its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub external: bool,
    pub plan: Arc<RoutePlan>,
    /// For a probe twin, the ingress hash it answers with.
    pub probe: Option<Arc<str>>,
}

/// The routes one host gets from one ingress, in match order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRoutes {
    pub routes: Vec<HostRoute>,
    /// `httpOption: Redirected`: plain HTTP on the external listener answers 301 to https.
    pub redirect_http: bool,
    /// The secret (`spec.tls`) that serves this host over TLS, first entry naming it wins.
    pub tls_secret: Option<NsName>,
}

impl HostRoutes {
    /// What the internal listeners serve: every route.
    pub fn internal(&self) -> impl Iterator<Item = &HostRoute> {
        self.routes.iter()
    }

    /// What the external listeners serve: the routes of ExternalIP rules.
    pub fn external(&self) -> impl Iterator<Item = &HostRoute> {
        self.routes.iter().filter(|route| route.external)
    }
}

/// Plans every host of a (valid, defaulted) ingress.
pub fn plan_ingress(ingress: &Ingress) -> BTreeMap<String, HostRoutes> {
    let hash: Arc<str> = ingress.hash().into();
    let redirected = ingress.spec.http_option == Some(HttpOption::Redirected);
    let mut hosts: BTreeMap<String, HostRoutes> = BTreeMap::new();
    for rule in &ingress.spec.rules {
        let paths = rule.http.iter().flat_map(|http| http.paths.iter());
        let plans: Vec<Arc<RoutePlan>> = paths.map(|path| Arc::new(plan_path(path))).collect();
        // Knative's InsertProbe puts each path's probe twin before the paths.
        let routes: Vec<(Arc<RoutePlan>, Option<Arc<str>>)> = plans
            .iter()
            .map(|plan| (plan.clone(), Some(hash.clone())))
            .chain(plans.iter().map(|plan| (plan.clone(), None)))
            .collect();
        let external = rule.visibility.unwrap_or_default() == Visibility::ExternalIP;
        for host in &rule.hosts {
            let entry = hosts.entry(host.to_ascii_lowercase()).or_default();
            entry.redirect_http |= external && redirected;
            entry
                .routes
                .extend(routes.iter().map(|(plan, probe)| HostRoute {
                    external,
                    plan: plan.clone(),
                    probe: probe.clone(),
                }));
        }
    }
    for tls in &ingress.spec.tls {
        for host in &tls.hosts {
            if let Some(entry) = hosts.get_mut(&host.to_ascii_lowercase()) {
                entry.tls_secret.get_or_insert_with(|| {
                    NsName::new(tls.secret_namespace.clone(), tls.secret_name.clone())
                });
            }
        }
    }
    for host in hosts.values_mut() {
        order_routes(&mut host.routes);
    }
    hosts
}

fn plan_path(path: &HttpIngressPath) -> RoutePlan {
    RoutePlan {
        prefix: if path.path.is_empty() {
            "/".to_owned()
        } else {
            path.path.clone()
        },
        headers: path
            .headers
            .iter()
            .map(|(name, matcher)| (name.to_ascii_lowercase(), matcher.exact.clone()))
            .collect(),
        rewrite_host: (!path.rewrite_host.is_empty()).then(|| path.rewrite_host.clone()),
        set_headers: path.append_headers.clone(),
        splits: path
            .splits
            .iter()
            .filter(|split| split.percent.unwrap_or(0) > 0)
            .map(|split| SplitPlan {
                cluster: ClusterKey::new(
                    &split.service_namespace,
                    &split.service_name,
                    &split.service_port,
                ),
                percent: split.percent.unwrap_or(0),
                set_headers: split.append_headers.clone(),
            })
            .collect(),
    }
}

/// Longest prefix first; for one prefix, routes with more header matches before the catch-all.
/// The sort is stable, so among equals the first path of the rule wins, as Knative says.
fn order_routes(routes: &mut [HostRoute]) {
    let header_matches =
        |route: &HostRoute| route.plan.headers.len() + usize::from(route.probe.is_some());
    routes.sort_by(|a, b| {
        b.plan
            .prefix
            .len()
            .cmp(&a.plan.prefix.len())
            .then(header_matches(b).cmp(&header_matches(a)))
    });
}

pub(crate) fn set_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            // Envoy reads a header value as a format string (`%REQ(x)%`, ...), and rejects the
            // whole route configuration over a `%` that starts no command; Knative's values are
            // literal.
            value: value.replace('%', "%%"),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn set_headers(headers: &BTreeMap<String, String>) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(name, value)| set_header(name, value))
        .collect()
}

/// Knative's probe: a request with `K-Network-Probe: probe` and `K-Network-Hash: override`
/// reaches the same backends and comes back with the ingress's hash in `K-Network-Hash`.
const HASH_HEADER: &str = "K-Network-Hash";
const HASH_OVERRIDE: &str = "override";

fn exact_match(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The Envoy route for a path, or for its probe twin, which (as Knative's `InsertProbe` makes
/// it) also matches `K-Network-Hash: override` and sets the hash, on the request (as Knative
/// does, for the backend to echo) and on the response.
fn envoy_route(route: &HostRoute) -> Route {
    let plan = &route.plan;
    let cluster_specifier = match plan.splits.as_slice() {
        [only] if only.set_headers.is_empty() => {
            ClusterSpecifier::Cluster(only.cluster.name().to_owned())
        }
        splits => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: splits
                .iter()
                .map(|split| ClusterWeight {
                    name: split.cluster.name().to_owned(),
                    weight: Some(UInt32Value {
                        value: split.percent,
                    }),
                    request_headers_to_add: set_headers(&split.set_headers),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(plan.prefix.clone())),
            headers: plan
                .headers
                .iter()
                .map(|(name, value)| exact_match(name, value))
                .chain(
                    route
                        .probe
                        .as_ref()
                        .map(|_| exact_match(&HASH_HEADER.to_ascii_lowercase(), HASH_OVERRIDE)),
                )
                .collect(),
            ..Default::default()
        }),
        request_headers_to_add: match &route.probe {
            Some(hash) => plan
                .set_headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case(HASH_HEADER))
                .map(|(name, value)| set_header(name, value))
                .chain([set_header(HASH_HEADER, hash)])
                .collect(),
            None => set_headers(&plan.set_headers),
        },
        response_headers_to_add: route
            .probe
            .iter()
            .map(|hash| set_header(HASH_HEADER, hash))
            .collect(),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            host_rewrite_specifier: plan
                .rewrite_host
                .clone()
                .map(HostRewriteSpecifier::HostRewriteLiteral),
            // Knative wants no deadline: Envoy's 15 s default would cut slow revisions off.
            timeout: Some(Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The route configuration for one host. Its single virtual host also lists the domains, so a
/// route configuration read on its own says which host it is for.
pub fn route_configuration<'a>(
    name: &str,
    host: &str,
    routes: impl Iterator<Item = &'a HostRoute>,
) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: host.to_owned(),
            domains: vec![host.to_owned(), format!("{host}:*")],
            routes: routes.map(envoy_route).collect(),
            ..Default::default()
        }],
        request_headers_to_remove: vec![LISTENER_HEADER.to_owned()],
        ..Default::default()
    }
}

/// The route configuration that sends plain HTTP for a host to https with a 301.
pub fn redirect_configuration(name: &str, host: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: host.to_owned(),
            domains: vec![host.to_owned(), format!("{host}:*")],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(Action::Redirect(RedirectAction {
                    scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
                    response_code: RedirectResponseCode::MovedPermanently as i32,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        request_headers_to_remove: vec![LISTENER_HEADER.to_owned()],
        ..Default::default()
    }
}

/// Which listener a scope serves; it is the value of [`LISTENER_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ListenerKind {
    External,
    Internal,
    ExternalTls,
    InternalTls,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 4] = [
        ListenerKind::External,
        ListenerKind::Internal,
        ListenerKind::ExternalTls,
        ListenerKind::InternalTls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::External => "external",
            ListenerKind::Internal => "internal",
            ListenerKind::ExternalTls => "external-tls",
            ListenerKind::InternalTls => "internal-tls",
        }
    }

    pub fn parse(name: &str) -> Option<ListenerKind> {
        ListenerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Whether the external proxies serve it (else the internal ones do).
    pub fn is_external(self) -> bool {
        matches!(self, ListenerKind::External | ListenerKind::ExternalTls)
    }
}

pub fn scope_name(kind: ListenerKind, host: &str) -> String {
    format!("{}/{host}", kind.as_str())
}

pub fn scoped_route(kind: ListenerKind, host: &str, route_name: &str) -> ScopedRouteConfiguration {
    let fragment = |value: &str| Fragment {
        r#type: Some(FragmentType::StringKey(value.to_owned())),
    };
    ScopedRouteConfiguration {
        name: scope_name(kind, host),
        route_configuration_name: route_name.to_owned(),
        key: Some(Key {
            fragments: vec![fragment(host), fragment(kind.as_str())],
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(yaml: &str) -> Ingress {
        let mut ingress: Ingress = serde_saphyr::from_str(yaml).unwrap();
        ingress.set_defaults();
        ingress
    }

    #[test]
    fn longest_prefix_first_and_header_routes_before_catch_all() {
        let plan = plan_ingress(&ingress(
            r#"
metadata: {name: x, namespace: ns}
spec:
  rules:
  - hosts: [x.example.com]
    http:
      paths:
      - splits: [{serviceName: root, servicePort: 80}]
      - path: /api
        splits: [{serviceName: api, servicePort: 80}]
      - path: /api
        headers: {Knative-Serving-Tag: {exact: canary}}
        splits: [{serviceName: canary, servicePort: 80}]
"#,
        ));
        let routes: Vec<&HostRoute> = plan["x.example.com"].external().collect();
        let order: Vec<_> = routes
            .iter()
            .map(|r| {
                let probe = r.probe.is_some();
                (r.plan.splits[0].cluster.service().name.as_str(), probe)
            })
            .collect();
        assert_eq!(
            order,
            [
                ("canary", true),
                ("api", true),
                ("canary", false),
                ("api", false),
                ("root", true),
                ("root", false)
            ]
        );
        assert_eq!(
            routes[2].plan.headers,
            BTreeMap::from([("knative-serving-tag".into(), "canary".into())])
        );
        let probe = envoy_route(routes[0]);
        let hash = routes[0].probe.as_deref().expect("a probe twin");
        let matched: Vec<_> = probe
            .r#match
            .unwrap()
            .headers
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(matched, ["knative-serving-tag", "k-network-hash"]);
        let set = |headers: &[HeaderValueOption]| {
            headers
                .iter()
                .map(|h| h.header.clone().unwrap())
                .map(|h| (h.key, h.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            set(&probe.response_headers_to_add),
            [("K-Network-Hash".to_owned(), hash.to_owned())]
        );
        assert!(
            set(&probe.request_headers_to_add).contains(&("K-Network-Hash".into(), hash.into()))
        );
    }

    #[test]
    fn header_values_are_literal_for_envoy() {
        let header = set_header("x-discount", "50% off %REQ(cookie)%")
            .header
            .unwrap();
        assert_eq!(header.value, "50%% off %%REQ(cookie)%%");
    }

    #[test]
    fn cluster_local_rules_are_internal_only_and_zero_percent_splits_vanish() {
        let plan = plan_ingress(&ingress(
            r#"
metadata: {name: x, namespace: ns}
spec:
  rules:
  - hosts: [x.ns.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - splits:
        - {serviceName: a, servicePort: 80, percent: 100}
        - {serviceName: b, servicePort: 80, percent: 0}
"#,
        ));
        let host = &plan["x.ns.svc.cluster.local"];
        assert_eq!(host.external().count(), 0);
        let internal: Vec<&HostRoute> = host.internal().collect();
        assert_eq!(internal.len(), 2, "the route and its probe twin");
        assert_eq!(internal[1].plan.splits.len(), 1);
        assert_eq!(internal[1].plan.splits[0].cluster.name(), "ns/a:80");
    }

    #[test]
    fn route_sets_headers_and_disables_the_timeout() {
        let plan = RoutePlan {
            prefix: "/".into(),
            headers: BTreeMap::new(),
            rewrite_host: Some("backend.internal".into()),
            set_headers: BTreeMap::from([("x-path".into(), "p".into())]),
            splits: vec![
                SplitPlan {
                    cluster: ClusterKey::new("ns", "a", &ServicePort::Number(80)),
                    percent: 90,
                    set_headers: BTreeMap::from([("x-split".into(), "a".into())]),
                },
                SplitPlan {
                    cluster: ClusterKey::new("ns", "b", &ServicePort::Name("http".into())),
                    percent: 10,
                    set_headers: BTreeMap::new(),
                },
            ],
        };
        let route = envoy_route(&HostRoute {
            external: true,
            plan: Arc::new(plan),
            probe: None,
        });
        assert!(route.response_headers_to_add.is_empty());
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        assert_eq!(route.request_headers_to_add[0].append_action, overwrite);
        let Some(Action::Route(action)) = route.action else {
            panic!("a route action")
        };
        assert_eq!(action.timeout, Some(Duration::default()));
        assert_eq!(
            action.host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral(
                "backend.internal".into()
            ))
        );
        let Some(ClusterSpecifier::WeightedClusters(weighted)) = action.cluster_specifier else {
            panic!("weighted clusters")
        };
        let names: Vec<_> = weighted.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ns/a:80", "ns/b:http"]);
        assert_eq!(
            weighted.clusters[0].request_headers_to_add[0].append_action,
            overwrite
        );
    }
}
