//! Knative Routes without Knative Serving: the stage between a source and the world that turns
//! each `serving.knative.dev` Route into the networking Ingress Serving's route reconciler would
//! make ([`ingress`]), so that the world, the translator and status see only Ingresses.
//!
//! The stage is pure and incremental: it takes a source batch and returns the batch the world
//! applies, with Routes, Configurations and Knative's `config-domain` and `config-features`
//! ConfigMaps replaced by the upserts and deletes of the Ingresses they make. A changed Route
//! re-makes its own Ingress; a changed Configuration, the Ingresses of the Routes naming it; a
//! changed ConfigMap, every Route's. An Ingress is passed on only when it changed.
//!
//! A Route whose new version is invalid, or whose traffic names a Configuration that is missing
//! or not ready, keeps its last good Ingress. An Ingress the source itself holds under a
//! Route's Ingress's name (Knative Serving's, where it runs) wins: the stage never replaces it.

pub mod domains;
pub mod edit;
pub mod ingress;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::knative::{
    Configuration, Ingress, IngressKey, IngressKind, Route, RouteValidationError,
};
use crate::world::{Kept, NsName, Object, ObjectKey, SourceEvent};

use domains::DomainConfig;
use ingress::{Resolved, Settings, Unresolved};

/// Knative Serving's own namespace, where its `config-domain` and `config-features` live.
pub const KNATIVE_NAMESPACE: &str = "knative-serving";
pub const DOMAIN_CONFIG_MAP: &str = "config-domain";
pub const FEATURES_CONFIG_MAP: &str = "config-features";
/// The `config-features` key that turns tag-header routing on (`enabled`).
const TAG_HEADER_FEATURE: &str = "tag-header-based-routing";

/// How Routes become Ingresses where nothing in the source says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The domain of every Route without a `config-domain` (`--domain`).
    pub domain: String,
    pub cluster_domain: String,
    /// The class a Route's Ingress gets unless the Route names one: sluice's own.
    pub ingress_class: String,
    /// Tag-header routing, whatever `config-features` says (`--tag-header-routing`).
    pub tag_header_routing: bool,
}

impl RouteConfig {
    pub fn new(ingress_class: &str) -> RouteConfig {
        RouteConfig {
            domain: "example.com".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            ingress_class: ingress_class.to_owned(),
            tag_header_routing: false,
        }
    }
}

/// Why a Route's latest version is not (or not fully) served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteProblem {
    /// It fails Knative's validation, or makes a host name that is not one.
    Invalid { errors: Vec<String> },
    /// A target names a Configuration the source does not hold.
    ConfigurationMissing { configuration: String },
    /// A target names a Configuration without a ready revision.
    RevisionMissing { configuration: String },
}

/// What the stage knows of one Route.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The latest version read, with Knative's defaults applied.
    pub latest: Arc<Route>,
    pub problem: Option<RouteProblem>,
    /// The Ingress of the last version that resolved, and the traffic it serves.
    pub served: Option<Served>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub ingress: Arc<Ingress>,
    /// Each target at its revision, as the Route's status reports it.
    pub traffic: Vec<crate::knative::TrafficTarget>,
    /// The generation of the Route version it was made from.
    pub generation: Option<i64>,
}

/// What a batch did besides the events: problems to log.
#[derive(Debug, Default)]
pub struct StageOutput {
    pub events: Vec<SourceEvent>,
    pub warnings: Vec<String>,
}

/// Every Route, Configuration and Knative setting known, and the Ingresses they made.
#[derive(Debug)]
pub struct Routes {
    config: RouteConfig,
    routes: BTreeMap<NsName, RouteEntry>,
    configurations: BTreeMap<NsName, Arc<Configuration>>,
    /// Configuration → the Routes naming it.
    users: BTreeMap<NsName, BTreeSet<NsName>>,
    domains: DomainConfig,
    /// `config-domain` as last read cleanly, if the source holds one.
    domain_data: Option<BTreeMap<String, String>>,
    /// `config-features`' tag-header routing.
    tag_header_feature: bool,
    /// Ingresses the source itself holds: a Route's Ingress of the same name yields to them.
    source_ingresses: BTreeSet<NsName>,
    /// The Ingress the world holds for each Route, as this stage last passed it on.
    emitted: BTreeMap<NsName, Arc<Ingress>>,
    /// Routes held at their last good version because their file cannot be read: route →
    /// (origin, problem).
    kept: BTreeMap<NsName, (String, String)>,
}

impl Routes {
    pub fn new(config: RouteConfig) -> Routes {
        Routes {
            domains: DomainConfig::single(&config.domain),
            config,
            routes: BTreeMap::new(),
            configurations: BTreeMap::new(),
            users: BTreeMap::new(),
            domain_data: None,
            tag_header_feature: false,
            source_ingresses: BTreeSet::new(),
            emitted: BTreeMap::new(),
            kept: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// Replaces the defaults; every Route is made again by the next batch.
    pub fn configure(&mut self, config: RouteConfig) -> StageOutput {
        self.config = config;
        let mut warnings = Vec::new();
        self.domains = self.read_domains(&mut warnings);
        let mut output = self.remake(self.routes.keys().cloned().collect());
        output.warnings.extend(warnings);
        output
    }

    /// Every Route known, by namespace and name.
    pub fn entries(&self) -> &BTreeMap<NsName, RouteEntry> {
        &self.routes
    }

    /// The Route whose Ingress the world holds under `key`, if a Route made it.
    pub fn owner_of(&self, key: &IngressKey) -> Option<&RouteEntry> {
        if key.kind != IngressKind::Ingress {
            return None;
        }
        let name = NsName::new(key.namespace.clone(), key.name.clone());
        self.emitted.get(&name)?;
        self.routes.get(&name)
    }

    /// Whether the Route's Ingress is one the source holds (another controller's), not this
    /// stage's.
    pub fn yields(&self, route: &NsName) -> bool {
        self.source_ingresses.contains(route)
    }

    /// The problem of the file a Route is kept from, if it cannot be read now.
    pub fn kept_problem(&self, route: &NsName) -> Option<&str> {
        self.kept.get(route).map(|(_, problem)| problem.as_str())
    }

    /// The settings every Route's Ingress is made with now.
    pub fn settings(&self) -> Settings<'_> {
        Settings {
            domains: &self.domains,
            cluster_domain: &self.config.cluster_domain,
            ingress_class: &self.config.ingress_class,
            tag_header_routing: self.config.tag_header_routing || self.tag_header_feature,
        }
    }

    /// Takes a source batch; returns the batch for the world.
    pub fn apply(&mut self, events: Vec<SourceEvent>) -> StageOutput {
        let mut passed = Vec::with_capacity(events.len());
        let mut dirty = BTreeSet::new();
        let mut settings_changed = false;
        let mut warnings = Vec::new();
        for event in events {
            match event {
                SourceEvent::Upsert(Object::Route(mut route)) => {
                    route.set_defaults();
                    let key = route_key(&route);
                    if let Some(entry) = self.routes.get_mut(&key)
                        && entry.latest.same_request(&route)
                    {
                        if entry.latest.status != route.status {
                            entry.latest = Arc::new(*route);
                        }
                        continue;
                    }
                    self.index(&key, Some(&route));
                    let served = self.routes.remove(&key).and_then(|entry| entry.served);
                    self.routes.insert(
                        key.clone(),
                        RouteEntry {
                            latest: Arc::new(*route),
                            problem: None,
                            served,
                        },
                    );
                    dirty.insert(key);
                }
                SourceEvent::Delete(ObjectKey::Route(key)) => {
                    self.index(&key, None);
                    self.routes.remove(&key);
                    self.kept.remove(&key);
                    dirty.remove(&key);
                    if self.emitted.remove(&key).is_some() {
                        passed.push(SourceEvent::Delete(ingress_key(&key)));
                    }
                }
                SourceEvent::Upsert(Object::Configuration(configuration)) => {
                    let key = NsName::new(
                        configuration.metadata.namespace.clone(),
                        configuration.metadata.name.clone(),
                    );
                    let before = self
                        .configurations
                        .insert(key.clone(), Arc::new(*configuration));
                    let after = &self.configurations[&key];
                    if before.is_none_or(|before| {
                        before.status.latest_ready_revision_name
                            != after.status.latest_ready_revision_name
                    }) {
                        dirty.extend(self.users.get(&key).into_iter().flatten().cloned());
                    }
                }
                SourceEvent::Delete(ObjectKey::Configuration(key)) => {
                    if self.configurations.remove(&key).is_some() {
                        dirty.extend(self.users.get(&key).into_iter().flatten().cloned());
                    }
                }
                SourceEvent::Upsert(Object::ConfigMap(map)) => {
                    let key = NsName::new(
                        map.metadata.namespace.clone().unwrap_or_default(),
                        map.metadata.name.clone().unwrap_or_default(),
                    );
                    settings_changed |=
                        self.set_knative_config(&key, Some(map.data.unwrap_or_default()));
                }
                SourceEvent::Delete(ObjectKey::ConfigMap(key)) => {
                    settings_changed |= self.set_knative_config(&key, None);
                }
                SourceEvent::Upsert(Object::Ingress(IngressKind::Ingress, ingress)) => {
                    let key = NsName::new(
                        ingress.metadata.namespace.clone(),
                        ingress.metadata.name.clone(),
                    );
                    self.emitted.remove(&key);
                    self.source_ingresses.insert(key);
                    passed.push(SourceEvent::Upsert(Object::Ingress(
                        IngressKind::Ingress,
                        ingress,
                    )));
                }
                SourceEvent::Delete(ObjectKey::Ingress(key)) => {
                    let name = NsName::new(key.namespace.clone(), key.name.clone());
                    if key.kind == IngressKind::Ingress
                        && self.source_ingresses.remove(&name)
                        && self.routes.contains_key(&name)
                    {
                        dirty.insert(name);
                    }
                    passed.push(SourceEvent::Delete(ObjectKey::Ingress(key)));
                }
                other => passed.push(other),
            }
        }
        if settings_changed {
            self.domains = self.read_domains(&mut warnings);
            dirty.extend(self.routes.keys().cloned());
        }
        let mut output = self.remake(dirty);
        passed.append(&mut output.events);
        warnings.append(&mut output.warnings);
        StageOutput {
            events: passed,
            warnings,
        }
    }

    /// Records what the source could not read, as the world does for Ingresses.
    pub fn note_source_health(&mut self, kept: &[Kept], healthy: &[String]) {
        self.kept.retain(|_, (origin, _)| !healthy.contains(origin));
        for kept in kept {
            if let ObjectKey::Route(key) = &kept.key {
                self.kept
                    .insert(key.clone(), (kept.origin.clone(), kept.problem.clone()));
            }
        }
    }

    /// Keeps the Configuration → Routes index current for a Route's new version.
    fn index(&mut self, route: &NsName, latest: Option<&Route>) {
        if let Some(old) = self.routes.get(route) {
            for configuration in named_configurations(&old.latest) {
                let key = NsName::new(route.namespace.clone(), configuration);
                if let Some(users) = self.users.get_mut(&key) {
                    users.remove(route);
                    if users.is_empty() {
                        self.users.remove(&key);
                    }
                }
            }
        }
        for configuration in latest.into_iter().flat_map(named_configurations) {
            self.users
                .entry(NsName::new(route.namespace.clone(), configuration))
                .or_default()
                .insert(route.clone());
        }
    }

    /// Takes `config-domain` or `config-features` (`None`: deleted); says whether it is one.
    fn set_knative_config(&mut self, key: &NsName, data: Option<BTreeMap<String, String>>) -> bool {
        if key.namespace != KNATIVE_NAMESPACE {
            return false;
        }
        match key.name.as_str() {
            DOMAIN_CONFIG_MAP => {
                self.domain_data = data;
                true
            }
            FEATURES_CONFIG_MAP => {
                let enabled = data
                    .as_ref()
                    .and_then(|data| data.get(TAG_HEADER_FEATURE))
                    .is_some_and(|value| value.trim().eq_ignore_ascii_case("enabled"));
                std::mem::replace(&mut self.tag_header_feature, enabled) != enabled
            }
            _ => false,
        }
    }

    /// The domains from `config-domain`, else `--domain`; a `config-domain` that cannot be read
    /// leaves the domains as they were.
    fn read_domains(&self, warnings: &mut Vec<String>) -> DomainConfig {
        let Some(data) = &self.domain_data else {
            return DomainConfig::single(&self.config.domain);
        };
        match DomainConfig::from_data(data, &self.config.domain) {
            Ok(domains) => domains,
            Err(problem) => {
                warnings.push(format!(
                    "ConfigMap {KNATIVE_NAMESPACE}/{DOMAIN_CONFIG_MAP}: {problem}; fix it. Until \
                     then Routes keep the domains they had"
                ));
                self.domains.clone()
            }
        }
    }

    /// Makes the Ingresses of these Routes again; returns those that changed.
    fn remake(&mut self, dirty: BTreeSet<NsName>) -> StageOutput {
        let mut output = StageOutput::default();
        for key in dirty {
            let Some(entry) = self.routes.get(&key) else {
                continue;
            };
            let latest = entry.latest.clone();
            let outcome = self.make(&latest);
            let entry = self.routes.get_mut(&key).expect("the entry was just read");
            match outcome {
                Ok(served) => {
                    entry.problem = None;
                    entry.served = Some(served);
                }
                Err(problem) => entry.problem = Some(problem),
            }
            let Some(served) = &entry.served else {
                continue;
            };
            if self.source_ingresses.contains(&key) {
                continue;
            }
            if self.emitted.get(&key) != Some(&served.ingress) {
                self.emitted.insert(key.clone(), served.ingress.clone());
                output.events.push(SourceEvent::Upsert(Object::Ingress(
                    IngressKind::Ingress,
                    Box::new((*served.ingress).clone()),
                )));
            }
        }
        output
    }

    /// Validates, resolves and makes one Route's Ingress.
    fn make(&self, route: &Route) -> Result<Served, RouteProblem> {
        route.validate().map_err(|errors| RouteProblem::Invalid {
            errors: errors.iter().map(RouteValidationError::to_string).collect(),
        })?;
        let namespace = &route.metadata.namespace;
        let resolved: Vec<Resolved> = ingress::resolve(route, |name| {
            self.configurations
                .get(&NsName::new(namespace.clone(), name.to_owned()))
                .map(|c| c.status.latest_ready_revision_name.as_str())
        })
        .map_err(|unresolved| match unresolved {
            Unresolved::ConfigurationMissing { configuration } => {
                RouteProblem::ConfigurationMissing { configuration }
            }
            Unresolved::NotReady { configuration } => {
                RouteProblem::RevisionMissing { configuration }
            }
        })?;
        let generated = ingress::generate(route, &resolved, &self.settings()).map_err(|bad| {
            RouteProblem::Invalid {
                errors: vec![bad.to_string()],
            }
        })?;
        Ok(Served {
            ingress: Arc::new(generated.ingress),
            traffic: generated.traffic,
            generation: route.metadata.generation,
        })
    }
}

fn route_key(route: &Route) -> NsName {
    NsName::new(
        route.metadata.namespace.clone(),
        route.metadata.name.clone(),
    )
}

fn ingress_key(route: &NsName) -> ObjectKey {
    ObjectKey::Ingress(IngressKey {
        kind: IngressKind::Ingress,
        namespace: route.namespace.clone(),
        name: route.name.clone(),
    })
}

fn named_configurations(route: &Route) -> BTreeSet<String> {
    route
        .spec
        .traffic
        .iter()
        .filter(|target| !target.configuration_name.is_empty())
        .map(|target| target.configuration_name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASS: &str = "sluice.ingress.networking.knative.dev";

    fn route(name: &str, traffic: &str) -> SourceEvent {
        let yaml =
            format!("metadata: {{name: {name}, namespace: ns}}\nspec:\n  traffic: {traffic}\n");
        SourceEvent::Upsert(Object::Route(Box::new(
            serde_saphyr::from_str(&yaml).expect("a route parses"),
        )))
    }

    fn configuration(name: &str, ready: &str) -> SourceEvent {
        let yaml = format!(
            "metadata: {{name: {name}, namespace: ns}}\nstatus: {{latestReadyRevisionName: '{ready}'}}\n"
        );
        SourceEvent::Upsert(Object::Configuration(Box::new(
            serde_saphyr::from_str(&yaml).expect("a configuration parses"),
        )))
    }

    fn upserted(output: &StageOutput) -> Vec<String> {
        output
            .events
            .iter()
            .filter_map(|event| match event {
                SourceEvent::Upsert(Object::Ingress(_, ingress)) => {
                    Some(ingress.metadata.name.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn splits(routes: &Routes, name: &str) -> Vec<(String, Option<u32>)> {
        let served = routes.routes[&NsName::new("ns", name)]
            .served
            .as_ref()
            .unwrap();
        served.ingress.spec.rules[0].http.as_ref().unwrap().paths[0]
            .splits
            .iter()
            .map(|split| (split.service_name.clone(), split.percent))
            .collect()
    }

    #[test]
    fn a_route_becomes_an_ingress_and_only_changes_pass_on() {
        let mut routes = Routes::new(RouteConfig::new(CLASS));
        let output = routes.apply(vec![route("a", "[{revisionName: a-1, percent: 100}]")]);
        assert_eq!(upserted(&output), ["a"]);
        let output = routes.apply(vec![route("a", "[{revisionName: a-1, percent: 100}]")]);
        assert!(output.events.is_empty());
        let output = routes.apply(vec![SourceEvent::Delete(ObjectKey::Route(NsName::new(
            "ns", "a",
        )))]);
        assert!(matches!(
            output.events.as_slice(),
            [SourceEvent::Delete(ObjectKey::Ingress(key))] if key.name == "a"
        ));
    }

    #[test]
    fn an_invalid_version_keeps_the_last_good_ingress() {
        let mut routes = Routes::new(RouteConfig::new(CLASS));
        routes.apply(vec![route(
            "a",
            "[{revisionName: a-1, percent: 90}, {revisionName: a-2, percent: 10}]",
        )]);
        let output = routes.apply(vec![route(
            "a",
            "[{revisionName: a-1, percent: 90}, {revisionName: a-2, percent: 20}]",
        )]);
        assert!(output.events.is_empty());
        let entry = &routes.routes[&NsName::new("ns", "a")];
        assert!(
            matches!(&entry.problem, Some(RouteProblem::Invalid { errors }) if errors[0].contains("sum to 110"))
        );
        assert_eq!(
            splits(&routes, "a"),
            [("a-1".into(), Some(90)), ("a-2".into(), Some(10))]
        );
    }

    #[test]
    fn configuration_targets_follow_their_configuration() {
        let mut routes = Routes::new(RouteConfig::new(CLASS));
        let output = routes.apply(vec![route("a", "[{configurationName: c, percent: 100}]")]);
        assert!(upserted(&output).is_empty());
        assert_eq!(
            routes.routes[&NsName::new("ns", "a")].problem,
            Some(RouteProblem::ConfigurationMissing {
                configuration: "c".into()
            })
        );
        let output = routes.apply(vec![configuration("c", "c-1")]);
        assert_eq!(upserted(&output), ["a"]);
        assert_eq!(splits(&routes, "a"), [("c-1".into(), Some(100))]);
        let output = routes.apply(vec![configuration("c", "c-2")]);
        assert_eq!(upserted(&output), ["a"]);
        assert_eq!(splits(&routes, "a"), [("c-2".into(), Some(100))]);
        let output = routes.apply(vec![SourceEvent::Delete(ObjectKey::Configuration(
            NsName::new("ns", "c"),
        ))]);
        assert!(output.events.is_empty(), "the last good Ingress stays");
        assert_eq!(splits(&routes, "a"), [("c-2".into(), Some(100))]);
    }

    #[test]
    fn an_ingress_the_source_holds_wins() {
        let mut routes = Routes::new(RouteConfig::new(CLASS));
        routes.apply(vec![route("a", "[{revisionName: a-1, percent: 100}]")]);
        let foreign: Ingress =
            serde_saphyr::from_str("metadata: {name: a, namespace: ns}").unwrap();
        let output = routes.apply(vec![
            SourceEvent::Upsert(Object::Ingress(IngressKind::Ingress, Box::new(foreign))),
            route("a", "[{revisionName: a-2, percent: 100}]"),
        ]);
        assert_eq!(output.events.len(), 1, "only the source's Ingress passes");
        assert!(routes.yields(&NsName::new("ns", "a")));
        let key = IngressKey {
            kind: IngressKind::Ingress,
            namespace: "ns".into(),
            name: "a".into(),
        };
        assert!(routes.owner_of(&key).is_none());
        let output = routes.apply(vec![SourceEvent::Delete(ObjectKey::Ingress(key.clone()))]);
        assert_eq!(upserted(&output), ["a"], "the Route's Ingress comes back");
        assert!(routes.owner_of(&key).is_some());
    }

    #[test]
    fn config_maps_set_the_domain_and_tag_header_routing() {
        let mut routes = Routes::new(RouteConfig::new(CLASS));
        routes.apply(vec![route("a", "[{revisionName: a-1, percent: 100}]")]);
        let map = |name: &str, data: &str| {
            SourceEvent::Upsert(Object::ConfigMap(Box::new(
                serde_saphyr::from_str(&format!(
                    "metadata: {{name: {name}, namespace: knative-serving}}\ndata: {data}\n"
                ))
                .unwrap(),
            )))
        };
        let output = routes.apply(vec![map("config-domain", "{corp.example: ''}")]);
        assert_eq!(upserted(&output), ["a"]);
        let served = routes.routes[&NsName::new("ns", "a")]
            .served
            .clone()
            .unwrap();
        assert_eq!(served.ingress.spec.rules[1].hosts, ["a.ns.corp.example"]);
        let output = routes.apply(vec![map(
            "config-features",
            "{tag-header-based-routing: Enabled}",
        )]);
        assert_eq!(upserted(&output), ["a"]);
        let output = routes.configure(RouteConfig {
            tag_header_routing: true,
            ..RouteConfig::new(CLASS)
        });
        assert!(
            output.events.is_empty(),
            "the flag changes nothing while the feature is on"
        );
        let output = routes.apply(vec![map("config-features", "{}")]);
        assert!(
            output.events.is_empty(),
            "the flag keeps it on: {:?}",
            output.events
        );
        let output = routes.apply(vec![map("config-domain", "{bad.example: 'selector: ['}")]);
        assert!(output.events.is_empty());
        assert_eq!(output.warnings.len(), 1, "{:?}", output.warnings);
    }
}
