//! A Route's host names, as Knative Serving's `domains` package makes them: the domain from
//! `config-domain` (label selectors, most specific wins), the template
//! `{{.Name}}.{{.Namespace}}.{{.Domain}}`, tag hosts named `{{.Tag}}-{{.Name}}`, and the
//! cluster-local names `name.ns`, `name.ns.svc` and `name.ns.svc.<cluster domain>`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::knative::{Route, dns1123_label};

/// Knative's `config-domain` ConfigMap: each key a domain, each value the labels a Route must
/// carry to get it (empty: every Route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// `(domain, selector)`, in key order.
    domains: Vec<(String, BTreeMap<String, String>)>,
}

#[derive(Deserialize, Default)]
struct DomainValue {
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

/// The key Knative's ConfigMaps use for documentation; it is not a setting.
const EXAMPLE_KEY: &str = "_example";

impl DomainConfig {
    /// Every Route under `domain`: what `--domain` says when there is no `config-domain`.
    pub fn single(domain: &str) -> DomainConfig {
        DomainConfig {
            domains: vec![(domain.to_owned(), BTreeMap::new())],
        }
    }

    /// Reads `config-domain`'s data. Without an entry for every Route (no selector),
    /// `default_domain` is that entry, as Knative adds its own default.
    pub fn from_data(
        data: &BTreeMap<String, String>,
        default_domain: &str,
    ) -> Result<DomainConfig, String> {
        let mut domains = Vec::new();
        for (domain, value) in data {
            if domain == EXAMPLE_KEY {
                continue;
            }
            let parsed: DomainValue = if value.trim().is_empty() {
                DomainValue::default()
            } else {
                serde_saphyr::from_str(value).map_err(|error| {
                    format!(
                        "the value of {domain:?} is not a selector (`selector: {{label: value}}`): {}",
                        error.without_snippet()
                    )
                })?
            };
            domains.push((domain.clone(), parsed.selector));
        }
        if !domains.iter().any(|(_, selector)| selector.is_empty()) {
            domains.push((default_domain.to_owned(), BTreeMap::new()));
        }
        Ok(DomainConfig { domains })
    }

    /// The domain of a Route with these labels: the cluster's own for a cluster-local Route,
    /// else the entry whose selector matches with the most labels (then the first by name).
    pub fn lookup(&self, route: &Route, cluster_domain: &str) -> String {
        if route.is_cluster_local() {
            return format!("svc.{cluster_domain}");
        }
        let labels = &route.metadata.labels;
        let mut best: Option<(&str, usize)> = None;
        for (domain, selector) in &self.domains {
            let matches = selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value));
            if !matches {
                continue;
            }
            let better = match best {
                None => true,
                Some((best_domain, specificity)) => {
                    selector.len() > specificity
                        || (selector.len() == specificity && domain.as_str() < best_domain)
                }
            };
            if better {
                best = Some((domain, selector.len()));
            }
        }
        best.map_or_else(|| format!("svc.{cluster_domain}"), |(d, _)| d.to_owned())
    }
}

/// Where one traffic name (the Route's own, `""`, or a tag) is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// The public host; `None` when the Route is cluster-local.
    pub external: Option<String>,
    /// The cluster-local host, `<host>.<ns>.svc.<cluster domain>`.
    pub cluster_local: String,
}

impl Hosts {
    /// `cluster_local` and its shorter forms, sorted, as Knative's `ExpandedHosts` lists them.
    pub fn cluster_local_expanded(&self, cluster_domain: &str) -> Vec<String> {
        let mut hosts = vec![self.cluster_local.clone()];
        if let Some(service) = self
            .cluster_local
            .strip_suffix(&format!(".svc.{cluster_domain}"))
        {
            hosts.push(service.to_owned());
            hosts.push(format!("{service}.svc"));
        }
        hosts.sort();
        hosts
    }

    /// The URL Knative's status gives this name: the public host when there is one.
    pub fn url(&self) -> String {
        format!(
            "http://{}",
            self.external.as_deref().unwrap_or(&self.cluster_local)
        )
    }
}

/// A generated host name that is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "domain name error: invalid domain name {host:?}: each dot-separated part must be a DNS-1123 \
     label (at most 63 lower case alphanumeric characters or '-'), and there must be at least two"
)]
pub struct BadHost {
    pub host: String,
}

/// The hosts of traffic name `tag` (`""`: the Route itself) of a Route.
pub fn hosts(
    route: &Route,
    tag: &str,
    domains: &DomainConfig,
    cluster_domain: &str,
) -> Result<Hosts, BadHost> {
    let name = &route.metadata.name;
    let host = if tag.is_empty() {
        name.clone()
    } else {
        format!("{tag}-{name}")
    };
    let namespace = &route.metadata.namespace;
    let local_domain = format!("svc.{cluster_domain}");
    let domain = domains.lookup(route, cluster_domain);
    let cluster_local = checked(format!("{host}.{namespace}.{local_domain}"))?;
    let external = if domain == local_domain {
        None
    } else {
        Some(checked(format!("{host}.{namespace}.{domain}"))?)
    };
    Ok(Hosts {
        external,
        cluster_local,
    })
}

/// Kubernetes' `IsFullyQualifiedDomainName`.
fn checked(host: String) -> Result<String, BadHost> {
    let labels: Vec<&str> = host.split('.').collect();
    if host.len() <= 253 && labels.len() >= 2 && labels.iter().all(|label| dns1123_label(label)) {
        Ok(host)
    } else {
        Err(BadHost { host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(labels: &[(&str, &str)]) -> Route {
        let mut route: Route = serde_saphyr::from_str("metadata: {name: hello, namespace: ns}")
            .expect("a route parses");
        route.metadata.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        route
    }

    fn config(entries: &[(&str, &str)]) -> DomainConfig {
        let data = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DomainConfig::from_data(&data, "example.com").expect("config-domain parses")
    }

    /// knative/serving's `TestSelectorMatches` and `TestLookupDomainForLabels`: the most
    /// specific selector wins, ties go to the first domain by name.
    #[test]
    fn the_most_specific_selector_wins() {
        let config = config(&[
            ("default.com", ""),
            ("prod.com", "selector:\n  app: prod\n"),
            ("prod-team.com", "selector:\n  app: prod\n  team: x\n"),
            ("aaa.com", "selector:\n  app: prod\n"),
            ("_example", "ignored: true"),
        ]);
        assert_eq!(config.lookup(&route(&[]), "cluster.local"), "default.com");
        assert_eq!(
            config.lookup(&route(&[("app", "prod")]), "cluster.local"),
            "aaa.com"
        );
        assert_eq!(
            config.lookup(&route(&[("app", "prod"), ("team", "x")]), "cluster.local"),
            "prod-team.com"
        );
        assert_eq!(
            config.lookup(
                &route(&[
                    ("app", "prod"),
                    ("networking.knative.dev/visibility", "cluster-local")
                ]),
                "cluster.local"
            ),
            "svc.cluster.local"
        );
    }

    #[test]
    fn without_a_default_entry_the_flag_is_the_default() {
        let config = config(&[("prod.com", "selector: {app: prod}")]);
        assert_eq!(config.lookup(&route(&[]), "cluster.local"), "example.com");
        assert!(
            DomainConfig::from_data(
                &[("x.com".to_string(), "selector: [".to_string())].into(),
                "example.com"
            )
            .is_err()
        );
    }

    #[test]
    fn hosts_follow_the_templates() {
        let domains = DomainConfig::single("example.com");
        let hosts = hosts(&route(&[]), "", &domains, "cluster.local").unwrap();
        assert_eq!(hosts.external.as_deref(), Some("hello.ns.example.com"));
        assert_eq!(
            hosts.cluster_local_expanded("cluster.local"),
            ["hello.ns", "hello.ns.svc", "hello.ns.svc.cluster.local"]
        );
        assert_eq!(hosts.url(), "http://hello.ns.example.com");
        let tagged = super::hosts(&route(&[]), "blue", &domains, "cluster.local").unwrap();
        assert_eq!(
            tagged.external.as_deref(),
            Some("blue-hello.ns.example.com")
        );
        let local = super::hosts(
            &route(&[("networking.knative.dev/visibility", "cluster-local")]),
            "",
            &domains,
            "cluster.local",
        )
        .unwrap();
        assert_eq!(local.external, None);
        assert_eq!(local.url(), "http://hello.ns.svc.cluster.local");
        let long = "t".repeat(60);
        assert!(super::hosts(&route(&[]), &long, &domains, "cluster.local").is_err());
    }
}
