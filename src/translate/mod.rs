//! Translation: the world in, Envoy resources out. Pure: no I/O, no clock, no async, and the
//! same world always gives byte-identical resources.
//!
//! The translator is incremental. It keeps each ingress's plan and each host's resources, and a
//! change set from the world re-plans only the changed ingresses, rebuilds only the hosts they
//! touch and the clusters of the services that changed, and emits updates for only the resources
//! whose bytes changed. Each host gets its own small `RouteConfiguration`, selected by a scope
//! (SRDS), so one changed ingress never re-sends the route table of the others.

mod clusters;
mod gateway;
mod listeners;
mod routes;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use rayon::prelude::*;
use serde::Serialize;

use crate::knative::IngressKey;
use crate::options::GatewayOptions;
use crate::world::{ChangeSet, NsName, World};
use crate::xds::{ClusterResources, Group, Resource, ResourceUpdate, TypeUrl};

pub use gateway::{EXT_AUTHZ_CLUSTER, TRACING_CLUSTER};
pub use routes::{ClusterKey, LISTENER_HEADER, ListenerKind};
pub use tls::SecretProblem;

/// Where Envoy's listeners bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateConfig {
    pub listen_address: String,
    pub http_port: u16,
    pub https_port: u16,
    pub internal_http_port: u16,
    pub internal_https_port: u16,
}

impl TranslateConfig {
    /// The name of the listener of `kind` and the port it binds.
    pub fn listener(&self, kind: ListenerKind) -> (&'static str, u16) {
        (listeners::listener_name(kind), listeners::port(self, kind))
    }
}

pub(crate) fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A resource an Envoy must hold, at this version, to serve (part of) an ingress on a
/// listener: the scopes, the route configurations they name, and the TLS secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedResource {
    pub listener: ListenerKind,
    pub type_url: TypeUrl,
    pub name: String,
    pub version: String,
}

/// What translation made of one ingress, for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngressOutcome {
    /// Hosts whose routes come from this ingress.
    pub served_hosts: BTreeSet<String>,
    /// Hosts another ingress won: host → the winner.
    pub conflicts: BTreeMap<String, IngressKey>,
    /// Why some of its hosts are not served over TLS.
    pub tls_problems: BTreeSet<String>,
}

#[derive(Debug)]
struct Plan {
    created: Option<String>,
    hosts: BTreeMap<String, routes::HostRoutes>,
}

/// What one host currently contributes to the snapshot.
#[derive(Debug, Default)]
struct HostResources {
    /// Route configuration name → (the groups whose scopes name it, the resource).
    routes: BTreeMap<String, (Vec<Group>, Arc<Resource>)>,
    /// Scope name → (groups, resource).
    scopes: BTreeMap<String, (Vec<Group>, Arc<Resource>)>,
    clusters: BTreeSet<ClusterKey>,
    owners: BTreeSet<IngressKey>,
    losers: BTreeSet<IngressKey>,
    /// The secret the host's ingress names for it, valid or not.
    secret: Option<NsName>,
    /// The TLS listeners that serve the host, with the SDS name of its secret.
    chains: Vec<(ListenerKind, String)>,
}

/// A host's new resources and how they differ from what it had: computed in parallel, then
/// committed in order.
struct HostChange {
    host: String,
    next: HostResources,
    updates: Vec<ResourceUpdate>,
    released: Vec<ClusterKey>,
    retained: Vec<ClusterKey>,
}

#[derive(Debug)]
struct BackendResources {
    cluster: Arc<Resource>,
    endpoints: Option<Arc<Resource>>,
}

pub struct Translator {
    config: TranslateConfig,
    options: GatewayOptions,
    listeners_emitted: bool,
    http_listeners: BTreeMap<ListenerKind, Arc<Resource>>,
    /// The clusters of the services the options name (authorization, tracing).
    gateway_clusters: BTreeMap<&'static str, Arc<Resource>>,
    /// The secrets the options name, at their last valid version: Knative's CA (upstream
    /// TLS) and the internal listener's certificate.
    upstream_ca: Option<(NsName, Arc<Resource>)>,
    cluster_cert: Option<(NsName, Arc<Resource>)>,
    /// Why a secret the options name cannot be used (now), by option.
    gateway_problems: BTreeMap<&'static str, SecretProblem>,
    /// Every secret a host names: its check, and its SDS resource when it passes.
    secrets: BTreeMap<NsName, Result<Arc<Resource>, SecretProblem>>,
    secret_hosts: BTreeMap<NsName, BTreeSet<String>>,
    /// Per TLS listener: SDS name of a secret → the hosts it serves (one SNI chain each).
    chains: BTreeMap<ListenerKind, BTreeMap<String, BTreeSet<String>>>,
    https_listeners: BTreeMap<ListenerKind, Arc<Resource>>,
    plans: BTreeMap<IngressKey, Plan>,
    claims: BTreeMap<String, BTreeSet<IngressKey>>,
    hosts: BTreeMap<String, HostResources>,
    cluster_refs: BTreeMap<ClusterKey, usize>,
    clusters_by_service: BTreeMap<NsName, BTreeSet<ClusterKey>>,
    backends: BTreeMap<ClusterKey, BackendResources>,
}

impl Translator {
    pub fn new(config: TranslateConfig) -> Self {
        Translator {
            config,
            options: GatewayOptions::default(),
            listeners_emitted: false,
            http_listeners: BTreeMap::new(),
            gateway_clusters: BTreeMap::new(),
            upstream_ca: None,
            cluster_cert: None,
            gateway_problems: BTreeMap::new(),
            secrets: BTreeMap::new(),
            secret_hosts: BTreeMap::new(),
            chains: BTreeMap::new(),
            https_listeners: BTreeMap::new(),
            plans: BTreeMap::new(),
            claims: BTreeMap::new(),
            hosts: BTreeMap::new(),
            cluster_refs: BTreeMap::new(),
            clusters_by_service: BTreeMap::new(),
            backends: BTreeMap::new(),
        }
    }

    /// The change set that translates a whole world from scratch.
    pub fn everything(world: &World) -> ChangeSet {
        ChangeSet {
            ingresses: world.ingresses.keys().cloned().collect(),
            services: world.services.keys().cloned().collect(),
            endpoints: world.endpoints.keys().cloned().collect(),
            secrets: world.secrets.keys().cloned().collect(),
        }
    }

    /// Brings the resources up to date with `world` after `changes`, returning only the
    /// resources that were added, changed or removed.
    pub fn apply(&mut self, world: &World, changes: &ChangeSet) -> Vec<ResourceUpdate> {
        let mut out = Vec::new();
        let mut rebuild_all_backends = false;
        if !self.listeners_emitted {
            self.refresh_gateway_secrets(world, None, &mut out);
            self.emit_gateway(&mut out);
            self.listeners_emitted = true;
        } else {
            let (ca_changed, cert_changed) =
                self.refresh_gateway_secrets(world, Some(&changes.secrets), &mut out);
            if cert_changed {
                self.rebuild_https_listeners(&mut out);
            }
            rebuild_all_backends = ca_changed;
        }
        let planned = par_map(changes.ingresses.iter().collect(), |key| {
            let plan = world
                .ingresses
                .get(key)
                .and_then(|entry| entry.served.as_ref())
                .map(|ingress| Plan {
                    created: ingress.metadata.creation_timestamp.clone(),
                    hosts: routes::plan_ingress(ingress),
                });
            (key, plan)
        });
        let mut touched_hosts = BTreeSet::new();
        for (key, plan) in planned {
            if let Some(old) = self.plans.remove(key) {
                for host in old.hosts.into_keys() {
                    if let Some(claimants) = self.claims.get_mut(&host) {
                        claimants.remove(key);
                        if claimants.is_empty() {
                            self.claims.remove(&host);
                        }
                    }
                    touched_hosts.insert(host);
                }
            }
            let Some(plan) = plan else {
                continue;
            };
            for host in plan.hosts.keys() {
                self.claims
                    .entry(host.clone())
                    .or_default()
                    .insert(key.clone());
                touched_hosts.insert(host.clone());
            }
            self.plans.insert(key.clone(), plan);
        }

        // Secrets checked now, or whose last host leaves now, may end up unused.
        let mut maybe_unused = self.check_secrets(world, changes, &mut touched_hosts, &mut out);
        let mut touched_clusters = BTreeSet::new();
        let mut chains_changed = false;
        for change in par_map(touched_hosts, |host| self.change_host(host)) {
            chains_changed |=
                self.commit_host(change, &mut touched_clusters, &mut maybe_unused, &mut out);
        }
        self.forget_unused_secrets(maybe_unused, &mut out);
        if chains_changed {
            self.rebuild_https_listeners(&mut out);
        }
        for service in changes.services.iter().chain(&changes.endpoints) {
            if let Some(keys) = self.clusters_by_service.get(service) {
                touched_clusters.extend(keys.iter().cloned());
            }
        }
        if rebuild_all_backends {
            touched_clusters.extend(self.cluster_refs.keys().cloned());
        }
        self.rebuild_backends(touched_clusters, world, &mut out);
        out
    }

    fn rebuild_backends(
        &mut self,
        keys: BTreeSet<ClusterKey>,
        world: &World,
        out: &mut Vec<ResourceUpdate>,
    ) {
        let built = par_map(keys, |key| {
            let next = self.build_backend(&key, world);
            (key, next)
        });
        for (key, next) in built {
            self.commit_backend(key, next, out);
        }
    }

    /// The SDS name of Knative's CA while upstream TLS is on and the CA was ever valid.
    fn upstream_ca_name(&self) -> Option<&str> {
        self.upstream_ca
            .as_ref()
            .map(|(_, resource)| resource.name.as_str())
    }

    /// Reads the secrets the options name, all of them (`changed: None`) or those among
    /// `changed`, and sends each valid version by SDS; an invalid one keeps its last valid
    /// version served and is reported. Says whether Knative's CA, and whether the internal
    /// listener's certificate, appeared or went: what the clusters and listeners must follow.
    fn refresh_gateway_secrets(
        &mut self,
        world: &World,
        changed: Option<&BTreeSet<NsName>>,
        out: &mut Vec<ResourceUpdate>,
    ) -> (bool, bool) {
        let wanted_ca = self.options.upstream_ca.clone();
        let wanted_cert = self.options.cluster_cert.clone();
        let mut problems = std::mem::take(&mut self.gateway_problems);
        let ca_changed = refresh_secret(
            &mut self.upstream_ca,
            wanted_ca,
            changed,
            |name| {
                let sds = format!("knative-ca:{name}");
                tls::validate_ca(
                    &name.to_string(),
                    world.secrets.get(name).map(|s| s.as_ref()),
                )
                .map(|ca| {
                    let secret = tls::envoy_validation_secret(&sds, &ca);
                    Resource::new(TypeUrl::Secret, &sds, &secret, Vec::new())
                })
            },
            ("certs-secret-name", &mut problems),
            out,
        );
        let cert_changed = refresh_secret(
            &mut self.cluster_cert,
            wanted_cert,
            changed,
            |name| {
                let sds = format!("cluster-cert:{name}");
                tls::validate(
                    &name.to_string(),
                    world.secrets.get(name).map(|s| s.as_ref()),
                )
                .map(|pair| {
                    let secret = tls::envoy_secret(&sds, &pair);
                    Resource::new(TypeUrl::Secret, &sds, &secret, Vec::new())
                })
            },
            ("cluster-cert-secret", &mut problems),
            out,
        );
        self.gateway_problems = problems;
        (ca_changed, cert_changed)
    }

    /// Why secrets the gateway options name cannot be used now, one line each.
    pub fn gateway_problems(&self) -> Vec<String> {
        self.gateway_problems
            .iter()
            .map(|(option, problem)| {
                format!(
                    "ConfigMap config-sluice: {option}: {problem}; until it is fixed the last \
                     valid version, if any, is used"
                )
            })
            .collect()
    }

    /// Puts new gateway options in force: only the listeners and the clusters of the services
    /// the options name change, and only those whose bytes differ.
    pub fn configure(&mut self, world: &World, options: GatewayOptions) -> Vec<ResourceUpdate> {
        let mut out = Vec::new();
        if options == self.options {
            return out;
        }
        self.options = options;
        if self.listeners_emitted {
            let (ca_changed, _) = self.refresh_gateway_secrets(world, None, &mut out);
            self.emit_gateway(&mut out);
            if ca_changed {
                let all = self.cluster_refs.keys().cloned().collect();
                self.rebuild_backends(all, world, &mut out);
            }
        }
        out
    }

    /// The gateway options in force.
    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    /// Brings every listener and the options' clusters up to date.
    fn emit_gateway(&mut self, out: &mut Vec<ResourceUpdate>) {
        // Clusters first: a listener's filters may name them.
        let wanted: Vec<(
            &'static str,
            Option<envoy_types::pb::envoy::config::cluster::v3::Cluster>,
        )> = vec![
            (
                gateway::EXT_AUTHZ_CLUSTER,
                self.options
                    .ext_authz
                    .as_ref()
                    .map(gateway::ext_authz_cluster),
            ),
            (
                gateway::TRACING_CLUSTER,
                self.options.tracing.as_ref().map(gateway::tracing_cluster),
            ),
        ];
        for (name, cluster) in wanted {
            let next = cluster.map(|c| Resource::new(TypeUrl::Cluster, name, &c, Vec::new()));
            let previous = match &next {
                Some(next) => self.gateway_clusters.insert(name, next.clone()),
                None => self.gateway_clusters.remove(name),
            };
            diff_one(TypeUrl::Cluster, name, previous, next, out);
        }
        for kind in [ListenerKind::External, ListenerKind::Internal] {
            let listener = listeners::http_listener(&self.config, &self.options, kind);
            let next = Resource::new(TypeUrl::Listener, &listener.name, &listener, Vec::new());
            let previous = self.http_listeners.insert(kind, next.clone());
            if previous.map(|r| r.digest) != Some(next.digest) {
                out.push(ResourceUpdate {
                    type_url: TypeUrl::Listener,
                    groups: Some(groups_of(kind)),
                    name: listener.name.clone(),
                    resource: Some(next),
                });
            }
        }
        self.rebuild_https_listeners(out);
    }

    /// Checks the secrets that changed and the ones newly named by a host about to be rebuilt,
    /// sending each valid one by SDS, and returns their names. A secret whose validity flips
    /// rebuilds the hosts it serves; a rotated one only changes its SDS resource.
    fn check_secrets(
        &mut self,
        world: &World,
        changes: &ChangeSet,
        touched_hosts: &mut BTreeSet<String>,
        out: &mut Vec<ResourceUpdate>,
    ) -> BTreeSet<NsName> {
        let mut names: BTreeSet<NsName> = changes
            .secrets
            .iter()
            .filter(|name| self.secrets.contains_key(*name))
            .cloned()
            .collect();
        for key in &changes.ingresses {
            let hosts = self
                .plans
                .get(key)
                .into_iter()
                .flat_map(|p| p.hosts.values());
            for secret in hosts.filter_map(|routes| routes.tls_secret.as_ref()) {
                if !self.secrets.contains_key(secret) {
                    names.insert(secret.clone());
                }
            }
        }
        for name in &names {
            let sds_name = name.to_string();
            let checked = tls::validate(&sds_name, world.secrets.get(name).map(|s| s.as_ref()))
                .map(|pair| {
                    let secret = tls::envoy_secret(&sds_name, &pair);
                    Resource::new(TypeUrl::Secret, &sds_name, &secret, Vec::new())
                });
            let previous = self.secrets.insert(name.clone(), checked.clone());
            let was_valid = previous.as_ref().map(Result::is_ok);
            if was_valid.is_some() && was_valid != Some(checked.is_ok()) {
                touched_hosts.extend(self.secret_hosts.get(name).into_iter().flatten().cloned());
            }
            let old = previous.and_then(Result::ok);
            diff_one(TypeUrl::Secret, &sds_name, old, checked.ok(), out);
        }
        names
    }

    /// Drops the secrets among `candidates` that no host names any more.
    fn forget_unused_secrets(
        &mut self,
        candidates: BTreeSet<NsName>,
        out: &mut Vec<ResourceUpdate>,
    ) {
        for name in candidates {
            if self.secret_hosts.contains_key(&name) {
                continue;
            }
            if let Some(Ok(resource)) = self.secrets.remove(&name) {
                diff_one(
                    TypeUrl::Secret,
                    &name.to_string(),
                    Some(resource),
                    None,
                    out,
                );
            }
        }
    }

    fn rebuild_https_listeners(&mut self, out: &mut Vec<ResourceUpdate>) {
        let no_chains = BTreeMap::new();
        for kind in [ListenerKind::ExternalTls, ListenerKind::InternalTls] {
            // The internal listener serves every cluster-local host with the options'
            // certificate, when there is one.
            let default_certificate = self
                .cluster_cert
                .as_ref()
                .filter(|_| kind == ListenerKind::InternalTls)
                .map(|(_, resource)| resource.name.as_str());
            let chains = self.chains.get(&kind);
            let next = (chains.is_some() || default_certificate.is_some()).then(|| {
                let listener = listeners::https_listener(
                    &self.config,
                    &self.options,
                    kind,
                    chains.unwrap_or(&no_chains),
                    default_certificate,
                );
                Resource::new(TypeUrl::Listener, &listener.name, &listener, Vec::new())
            });
            let previous = match &next {
                Some(next) => self.https_listeners.insert(kind, next.clone()),
                None => self.https_listeners.remove(&kind),
            };
            if previous.as_ref().map(|r| r.digest) != next.as_ref().map(|r| r.digest) {
                out.push(ResourceUpdate {
                    type_url: TypeUrl::Listener,
                    groups: Some(groups_of(kind)),
                    name: listeners::listener_name(kind).to_owned(),
                    resource: next,
                });
            }
        }
    }

    /// The ingress whose routes a host serves: the oldest claimant, then by key. Claimants with
    /// exactly the same routes share the host; the others lose it.
    fn decide_host(&self, host: &str) -> Option<(IngressKey, BTreeSet<IngressKey>)> {
        let claimants = self.claims.get(host)?;
        let mut ordered: Vec<&IngressKey> = claimants.iter().collect();
        ordered.sort_by_key(|key| {
            (
                self.plans[*key].created.is_none(),
                &self.plans[*key].created,
            )
        });
        let winner = ordered[0].clone();
        let routes = &self.plans[&winner].hosts[host];
        let losers = ordered[1..]
            .iter()
            .filter(|key| self.plans[**key].hosts[host] != *routes)
            .map(|key| (*key).clone())
            .collect();
        Some((winner, losers))
    }

    /// The resources a host should have now. Pure and read-only, so hosts build in parallel.
    fn build_host(&self, host: &str) -> HostResources {
        let mut next = HostResources::default();
        if let Some((winner, losers)) = self.decide_host(host) {
            let planned = &self.plans[&winner].hosts[host];
            next.owners = self.claims[host]
                .iter()
                .filter(|key| !losers.contains(*key))
                .cloned()
                .collect();
            next.losers = losers;
            for route in planned.internal() {
                next.clusters
                    .extend(route.plan.splits.iter().map(|split| split.cluster.clone()));
            }
            let mut add_route = |name: String, plans: Vec<&routes::HostRoute>| {
                let references: BTreeSet<&str> = plans
                    .iter()
                    .flat_map(|r| r.plan.splits.iter().map(|s| s.cluster.name()))
                    .collect();
                let references = references.into_iter().map(str::to_owned).collect();
                let config = routes::route_configuration(&name, host, plans.into_iter());
                let resource =
                    Resource::new(TypeUrl::RouteConfiguration, &name, &config, references);
                next.routes.insert(name.clone(), (Vec::new(), resource));
                name
            };
            let internal_route = (!planned.routes.is_empty())
                .then(|| add_route(host.to_owned(), planned.internal().collect()));
            let external_count = planned.external().count();
            let external_route = if external_count == 0 {
                None
            } else if external_count == planned.routes.len() {
                internal_route.clone()
            } else {
                Some(add_route(
                    routes::scope_name(ListenerKind::External, host),
                    planned.external().collect(),
                ))
            };
            let plain_external_route = if planned.redirect_http && external_route.is_some() {
                let name = format!("redirect/{host}");
                let config = routes::redirect_configuration(&name, host);
                let resource = Resource::new(TypeUrl::RouteConfiguration, &name, &config, vec![]);
                next.routes.insert(name.clone(), (Vec::new(), resource));
                Some(name)
            } else {
                external_route.clone()
            };
            next.secret = planned.tls_secret.clone();
            let valid_secret = planned
                .tls_secret
                .as_ref()
                .filter(|secret| matches!(self.secrets.get(*secret), Some(Ok(_))))
                .map(ToString::to_string);
            let mut scopes = vec![
                (ListenerKind::External, plain_external_route),
                (ListenerKind::Internal, internal_route.clone()),
            ];
            if let Some(secret) = &valid_secret {
                for (kind, route) in [
                    (ListenerKind::ExternalTls, &external_route),
                    (ListenerKind::InternalTls, &internal_route),
                ] {
                    if route.is_some() {
                        next.chains.push((kind, secret.clone()));
                        scopes.push((kind, route.clone()));
                    }
                }
            }
            for (kind, route) in scopes {
                if let Some(route) = route {
                    if let Some((groups, _)) = next.routes.get_mut(&route) {
                        groups.extend(groups_of(kind));
                        groups.sort();
                        groups.dedup();
                    }
                    let scope = routes::scoped_route(kind, host, &route);
                    let resource = Resource::new(
                        TypeUrl::ScopedRouteConfiguration,
                        &scope.name,
                        &scope,
                        vec![route],
                    );
                    next.scopes
                        .insert(scope.name.clone(), (groups_of(kind), resource));
                }
            }
        }
        next
    }

    /// What rebuilding a host changes. Read-only, so hosts are worked out in parallel.
    fn change_host(&self, host: String) -> HostChange {
        let next = self.build_host(&host);
        let empty = HostResources::default();
        let previous = self.hosts.get(&host).unwrap_or(&empty);
        let mut updates = Vec::new();
        diff_grouped(
            TypeUrl::RouteConfiguration,
            &previous.routes,
            &next.routes,
            &mut updates,
        );
        diff_grouped(
            TypeUrl::ScopedRouteConfiguration,
            &previous.scopes,
            &next.scopes,
            &mut updates,
        );
        HostChange {
            released: previous
                .clusters
                .difference(&next.clusters)
                .cloned()
                .collect(),
            retained: next
                .clusters
                .difference(&previous.clusters)
                .cloned()
                .collect(),
            host,
            next,
            updates,
        }
    }

    /// Moves a host's change into the indexes; says whether the host's TLS chains changed, so
    /// that the HTTPS listeners are rebuilt only then.
    fn commit_host(
        &mut self,
        change: HostChange,
        touched_clusters: &mut BTreeSet<ClusterKey>,
        maybe_unused_secrets: &mut BTreeSet<NsName>,
        out: &mut Vec<ResourceUpdate>,
    ) -> bool {
        out.extend(change.updates);
        let previous = self.hosts.get(&change.host);
        let (old_secret, old_chains) = previous
            .map(|p| (p.secret.clone(), p.chains.clone()))
            .unwrap_or_default();
        if old_secret != change.next.secret {
            if let Some(old) = old_secret
                && let Some(hosts) = self.secret_hosts.get_mut(&old)
            {
                hosts.remove(&change.host);
                if hosts.is_empty() {
                    self.secret_hosts.remove(&old);
                    maybe_unused_secrets.insert(old);
                }
            }
            if let Some(new) = &change.next.secret {
                self.secret_hosts
                    .entry(new.clone())
                    .or_default()
                    .insert(change.host.clone());
            }
        }
        let chains_changed = old_chains != change.next.chains;
        if chains_changed {
            for (kind, secret) in old_chains {
                let Some(chains) = self.chains.get_mut(&kind) else {
                    continue;
                };
                if let Some(hosts) = chains.get_mut(&secret) {
                    hosts.remove(&change.host);
                    if hosts.is_empty() {
                        chains.remove(&secret);
                    }
                }
                if chains.is_empty() {
                    self.chains.remove(&kind);
                }
            }
            for (kind, secret) in &change.next.chains {
                self.chains
                    .entry(*kind)
                    .or_default()
                    .entry(secret.clone())
                    .or_default()
                    .insert(change.host.clone());
            }
        }
        for key in &change.released {
            self.release_cluster(key, touched_clusters);
        }
        for key in &change.retained {
            self.retain_cluster(key, touched_clusters);
        }
        if change.next.routes.is_empty() && change.next.losers.is_empty() {
            self.hosts.remove(&change.host);
        } else {
            self.hosts.insert(change.host, change.next);
        }
        chains_changed
    }

    fn retain_cluster(&mut self, key: &ClusterKey, touched: &mut BTreeSet<ClusterKey>) {
        let count = self.cluster_refs.entry(key.clone()).or_default();
        *count += 1;
        if *count == 1 {
            self.clusters_by_service
                .entry(key.service().clone())
                .or_default()
                .insert(key.clone());
            touched.insert(key.clone());
        }
    }

    fn release_cluster(&mut self, key: &ClusterKey, touched: &mut BTreeSet<ClusterKey>) {
        let Some(count) = self.cluster_refs.get_mut(key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.cluster_refs.remove(key);
            let service = key.service();
            if let Some(keys) = self.clusters_by_service.get_mut(service) {
                keys.remove(key);
                if keys.is_empty() {
                    self.clusters_by_service.remove(service);
                }
            }
            touched.insert(key.clone());
        }
    }

    fn build_backend(&self, key: &ClusterKey, world: &World) -> Option<BackendResources> {
        self.cluster_refs
            .contains_key(key)
            .then(|| encode_backend(key, world, self.upstream_ca_name()))
    }

    /// The cluster, and its endpoints, that sluice serves under cluster name `name`, or would
    /// serve were a route to name it: what a reconnecting Envoy is sent to keep a cluster that
    /// routes it still holds name, though no route in `world` does any more.
    pub fn cluster_named(&self, world: &World, name: &str) -> Option<ClusterResources> {
        let key = ClusterKey::parse(name)?;
        let built;
        let backend = match self.backends.get(&key) {
            Some(backend) => backend,
            None => {
                built = encode_backend(&key, world, self.upstream_ca_name());
                &built
            }
        };
        Some(ClusterResources {
            cluster: backend.cluster.clone(),
            endpoints: backend.endpoints.clone(),
        })
    }

    fn commit_backend(
        &mut self,
        key: ClusterKey,
        next: Option<BackendResources>,
        out: &mut Vec<ResourceUpdate>,
    ) {
        let name = key.name().to_owned();
        let parts = |b: Option<&BackendResources>| match b {
            Some(b) => (Some(b.cluster.clone()), b.endpoints.clone()),
            None => (None, None),
        };
        let (old_cluster, old_endpoints) = parts(self.backends.remove(&key).as_ref());
        let (new_cluster, new_endpoints) = parts(next.as_ref());
        diff_one(TypeUrl::Cluster, &name, old_cluster, new_cluster, out);
        diff_one(
            TypeUrl::ClusterLoadAssignment,
            &name,
            old_endpoints,
            new_endpoints,
            out,
        );
        if let Some(next) = next {
            self.backends.insert(key, next);
        }
    }

    /// What translation made of an ingress: the hosts it serves and the ones it lost.
    pub fn outcome(&self, key: &IngressKey) -> IngressOutcome {
        let mut outcome = IngressOutcome::default();
        let Some(plan) = self.plans.get(key) else {
            return outcome;
        };
        for host in plan.hosts.keys() {
            let Some(resources) = self.hosts.get(host) else {
                continue;
            };
            if resources.owners.contains(key) {
                outcome.served_hosts.insert(host.clone());
                if let Some(Err(problem)) =
                    resources.secret.as_ref().and_then(|s| self.secrets.get(s))
                {
                    outcome.tls_problems.insert(problem.to_string());
                }
            } else if let Some(winner) = resources.owners.iter().next() {
                outcome.conflicts.insert(host.clone(), winner.clone());
            }
        }
        outcome
    }

    /// What an Envoy must have ACKed to serve an ingress as it is now, per listener kind.
    pub fn served_resources(&self, key: &IngressKey) -> Vec<ServedResource> {
        let outcome = self.outcome(key);
        let mut served = Vec::new();
        for host in &outcome.served_hosts {
            let resources = &self.hosts[host];
            for (scope_name, (_, scope)) in &resources.scopes {
                let Some(listener) = scope_name
                    .split_once('/')
                    .and_then(|(kind, _)| ListenerKind::parse(kind))
                else {
                    continue;
                };
                let mut add = |type_url, resource: &Resource| {
                    served.push(ServedResource {
                        listener,
                        type_url,
                        name: resource.name.clone(),
                        version: resource.version.clone(),
                    })
                };
                add(TypeUrl::ScopedRouteConfiguration, scope);
                if let Some(route) = scope
                    .references
                    .first()
                    .and_then(|r| resources.routes.get(r))
                    .map(|(_, route)| route)
                {
                    add(TypeUrl::RouteConfiguration, route);
                }
                let tls = resources.chains.iter().any(|(kind, _)| *kind == listener);
                if tls
                    && let Some(Ok(secret)) =
                        resources.secret.as_ref().and_then(|s| self.secrets.get(s))
                {
                    add(TypeUrl::Secret, secret);
                }
            }
        }
        served
    }

    /// The ingresses whose status a change to, or an Envoy's verdict on, this resource may
    /// change: for a host's scopes and route configurations, the ingresses that claim the host
    /// (those that serve it and those that lost it to them); for a TLS secret, those of every
    /// host that names it. Other resources carry no ingress's status.
    pub fn claimants(&self, type_url: TypeUrl, name: &str) -> BTreeSet<IngressKey> {
        match type_url {
            TypeUrl::RouteConfiguration | TypeUrl::ScopedRouteConfiguration => {
                let host = name.rsplit_once('/').map_or(name, |(_, host)| host);
                self.claimants_of_host(host).collect()
            }
            TypeUrl::Secret => name
                .split_once('/')
                .map(|(namespace, secret)| self.naming_secret(&NsName::new(namespace, secret)))
                .unwrap_or_default(),
            TypeUrl::Cluster | TypeUrl::ClusterLoadAssignment | TypeUrl::Listener => {
                BTreeSet::new()
            }
        }
    }

    /// The ingresses that claim a host naming this secret.
    pub fn naming_secret(&self, secret: &NsName) -> BTreeSet<IngressKey> {
        self.secret_hosts
            .get(secret)
            .into_iter()
            .flatten()
            .flat_map(|host| self.claimants_of_host(host))
            .collect()
    }

    fn claimants_of_host<'a>(&'a self, host: &str) -> impl Iterator<Item = IngressKey> + 'a {
        self.hosts
            .get(host)
            .into_iter()
            .flat_map(|h| h.owners.iter().chain(&h.losers))
            .cloned()
    }

    /// The ingresses whose routes make up a resource, to blame them when Envoy rejects it.
    pub fn owners(&self, type_url: TypeUrl, name: &str) -> BTreeSet<IngressKey> {
        match type_url {
            TypeUrl::RouteConfiguration | TypeUrl::ScopedRouteConfiguration => {
                let host = name.rsplit_once('/').map_or(name, |(_, host)| host);
                self.hosts
                    .get(host)
                    .map(|h| h.owners.clone())
                    .unwrap_or_default()
            }
            TypeUrl::Secret => self
                .secret_hosts
                .iter()
                .filter(|(secret, _)| secret.to_string() == name)
                .flat_map(|(_, hosts)| hosts.iter())
                .filter_map(|host| self.hosts.get(host))
                .flat_map(|h| h.owners.iter().cloned())
                .collect(),
            TypeUrl::Cluster | TypeUrl::ClusterLoadAssignment => self
                .hosts
                .values()
                .filter(|h| h.clusters.iter().any(|c| c.name() == name))
                .flat_map(|h| h.owners.iter().cloned())
                .collect(),
            TypeUrl::Listener => BTreeSet::new(),
        }
    }
}

/// The groups of Envoys that hold a listener kind's listener and scopes.
fn groups_of(kind: ListenerKind) -> Vec<Group> {
    if kind.is_external() {
        vec![Group::External, Group::All]
    } else {
        vec![Group::Internal, Group::All]
    }
}

/// Below this many items a batch is built on this thread: fanning out costs more than it saves.
const PARALLEL_THRESHOLD: usize = 64;

/// Maps in parallel for big batches, keeping the input order so output stays deterministic.
fn par_map<T: Send, R: Send>(items: BTreeSet<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    if items.len() < PARALLEL_THRESHOLD {
        return items.into_iter().map(f).collect();
    }
    items
        .into_iter()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(f)
        .collect()
}

fn diff_one(
    type_url: TypeUrl,
    name: &str,
    old: Option<Arc<Resource>>,
    new: Option<Arc<Resource>>,
    out: &mut Vec<ResourceUpdate>,
) {
    let unchanged = match (&old, &new) {
        (Some(old), Some(new)) => old.digest == new.digest,
        (None, None) => true,
        _ => false,
    };
    if !unchanged {
        out.push(ResourceUpdate {
            type_url,
            groups: None,
            name: name.to_owned(),
            resource: new,
        });
    }
}

/// The changes between a host's old and new resources of a type served per group: a resource
/// whose content or groups changed is given again with the groups it is in now.
fn diff_grouped(
    type_url: TypeUrl,
    old: &BTreeMap<String, (Vec<Group>, Arc<Resource>)>,
    new: &BTreeMap<String, (Vec<Group>, Arc<Resource>)>,
    out: &mut Vec<ResourceUpdate>,
) {
    for name in old
        .keys()
        .chain(new.keys().filter(|n| !old.contains_key(*n)))
    {
        let (before, after) = (old.get(name), new.get(name));
        let key = |entry: Option<&(Vec<Group>, Arc<Resource>)>| {
            entry.map(|(groups, r)| (groups.clone(), r.digest))
        };
        if key(before) == key(after) {
            continue;
        }
        out.push(ResourceUpdate {
            type_url,
            groups: Some(after.map(|(groups, _)| groups.clone()).unwrap_or_default()),
            name: name.clone(),
            resource: after.map(|(_, r)| r.clone()),
        });
    }
}

/// Follows one secret an option names: `wanted` is the name now in the options (`None`: the
/// option is off), `changed` the secrets that changed (`None`: read it anyway), `build` checks
/// it and makes its SDS resource. A problem is recorded under the option's key. Says whether
/// a served resource appeared or went.
fn refresh_secret(
    held: &mut Option<(NsName, Arc<Resource>)>,
    wanted: Option<NsName>,
    changed: Option<&BTreeSet<NsName>>,
    build: impl Fn(&NsName) -> Result<Arc<Resource>, SecretProblem>,
    (option, problems): (&'static str, &mut BTreeMap<&'static str, SecretProblem>),
    out: &mut Vec<ResourceUpdate>,
) -> bool {
    let Some(name) = wanted else {
        problems.remove(option);
        let Some((_, old)) = held.take() else {
            return false;
        };
        diff_one(TypeUrl::Secret, &old.name.clone(), Some(old), None, out);
        return true;
    };
    let same_name = held.as_ref().is_some_and(|(current, _)| *current == name);
    let stale = changed.is_none_or(|changed| changed.contains(&name));
    if same_name && !stale && !problems.contains_key(option) {
        return false;
    }
    if !same_name && !stale && problems.contains_key(option) {
        return false;
    }
    match build(&name) {
        Ok(next) => {
            problems.remove(option);
            let previous = held.replace((name, next.clone()));
            let appeared = previous.is_none();
            let previous = previous.map(|(_, resource)| resource);
            if previous.as_ref().is_some_and(|p| p.name != next.name) {
                diff_one(
                    TypeUrl::Secret,
                    &previous.clone().unwrap().name,
                    previous,
                    None,
                    out,
                );
                diff_one(TypeUrl::Secret, &next.name.clone(), None, Some(next), out);
                return true;
            }
            diff_one(
                TypeUrl::Secret,
                &next.name.clone(),
                previous,
                Some(next),
                out,
            );
            appeared
        }
        Err(problem) => {
            problems.insert(option, problem);
            if same_name {
                return false;
            }
            // Another secret is named now: the old one no longer applies.
            let Some((_, old)) = held.take() else {
                return false;
            };
            diff_one(TypeUrl::Secret, &old.name.clone(), Some(old), None, out);
            true
        }
    }
}

fn encode_backend(key: &ClusterKey, world: &World, upstream_ca: Option<&str>) -> BackendResources {
    let name = key.name();
    let backend = clusters::backend(key, world, upstream_ca);
    BackendResources {
        cluster: Resource::new(TypeUrl::Cluster, name, &backend.cluster, Vec::new()),
        endpoints: backend
            .endpoints
            .map(|cla| Resource::new(TypeUrl::ClusterLoadAssignment, name, &cla, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knative::{Ingress, IngressKind, Visibility};
    use crate::world::{Object, ObjectKey, SourceEvent};
    use crate::xds::Snapshot;

    const CLASS: &str = "sluice";

    fn config() -> TranslateConfig {
        TranslateConfig {
            listen_address: "127.0.0.1".into(),
            http_port: 8080,
            https_port: 8443,
            internal_http_port: 8081,
            internal_https_port: 8444,
        }
    }

    fn ingress(name: &str, host: &str, service: &str, created: &str) -> SourceEvent {
        let yaml = format!(
            r#"
metadata:
  name: {name}
  namespace: default
  creationTimestamp: "{created}"
  annotations: {{networking.knative.dev/ingress.class: {CLASS}}}
spec:
  rules:
  - hosts: [{host}]
    http:
      paths:
      - splits: [{{serviceName: {service}, servicePort: 80}}]
  - hosts: [{name}.default.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - path: /internal
        splits: [{{serviceName: {service}, servicePort: 80}}]
"#
        );
        let ingress: Ingress = serde_saphyr::from_str(&yaml).unwrap();
        SourceEvent::Upsert(Object::Ingress(IngressKind::Ingress, Box::new(ingress)))
    }

    /// The ingress with every rule cluster-local.
    fn cluster_local(event: SourceEvent) -> SourceEvent {
        let SourceEvent::Upsert(Object::Ingress(kind, mut ingress)) = event else {
            unreachable!("an ingress event");
        };
        for rule in &mut ingress.spec.rules {
            rule.visibility = Some(Visibility::ClusterLocal);
        }
        SourceEvent::Upsert(Object::Ingress(kind, ingress))
    }

    fn service(name: &str, port_name: &str, ip: &str) -> Vec<SourceEvent> {
        let service = serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": port_name, "port": 80, "targetPort": 8080}]}
        });
        let endpoints = serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": port_name, "port": 8080}]}]
        });
        vec![
            SourceEvent::Upsert(Object::Service(Box::new(
                serde_json::from_value(service).unwrap(),
            ))),
            SourceEvent::Upsert(Object::Endpoints(Box::new(
                serde_json::from_value(endpoints).unwrap(),
            ))),
        ]
    }

    fn key(name: &str) -> IngressKey {
        IngressKey {
            kind: IngressKind::Ingress,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// Every resource of a snapshot, with its bytes, per group and type.
    fn contents(snapshot: &Snapshot) -> Vec<(Group, TypeUrl, String, Vec<u8>)> {
        let mut all = Vec::new();
        for group in Group::ALL {
            for type_url in TypeUrl::ALL {
                for (name, resource) in snapshot.resources(group, type_url) {
                    all.push((group, type_url, name.clone(), resource.body.value.clone()));
                }
            }
        }
        all
    }

    fn from_scratch(world: &World) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.apply(Translator::new(config()).apply(world, &Translator::everything(world)));
        snapshot
    }

    fn start() -> World {
        let mut world = World::new(CLASS);
        let mut events = vec![
            ingress("a", "a.example.com", "svc-a", "2026-01-01T00:00:00Z"),
            ingress("b", "b.example.com", "svc-b", "2026-01-02T00:00:00Z"),
        ];
        events.extend(service("svc-a", "http", "10.0.0.1"));
        events.extend(service("svc-b", "http", "10.0.0.2"));
        world.apply(events);
        world
    }

    #[test]
    fn a_cluster_no_route_names_is_rebuilt_as_it_was_served() {
        let mut world = start();
        let mut translator = Translator::new(config());
        let mut snapshot = Snapshot::default();
        snapshot.apply(translator.apply(&world, &Translator::everything(&world)));
        let served = |snapshot: &Snapshot, type_url| {
            snapshot.resources(Group::All, type_url)["default/svc-b:80"].clone()
        };
        let cluster = served(&snapshot, TypeUrl::Cluster);
        let endpoints = served(&snapshot, TypeUrl::ClusterLoadAssignment);

        let changes = world.apply(vec![ingress(
            "b",
            "b.example.com",
            "svc-a",
            "2026-01-02T00:00:00Z",
        )]);
        snapshot.apply(translator.apply(&world, &changes));
        assert!(
            !snapshot
                .resources(Group::All, TypeUrl::Cluster)
                .contains_key("default/svc-b:80"),
            "no route names svc-b"
        );
        let rebuilt = translator
            .cluster_named(&world, "default/svc-b:80")
            .expect("svc-b's cluster");
        assert_eq!(rebuilt.cluster, cluster);
        assert_eq!(rebuilt.endpoints, Some(endpoints));
        let served = translator
            .cluster_named(&world, "default/svc-a:80")
            .unwrap();
        assert_eq!(
            served.cluster,
            snapshot.resources(Group::All, TypeUrl::Cluster)["default/svc-a:80"]
        );
        assert!(translator.cluster_named(&world, "not a cluster").is_none());
    }

    #[test]
    fn the_same_world_gives_byte_identical_resources() {
        let world = start();
        assert_eq!(
            contents(&from_scratch(&world)),
            contents(&from_scratch(&world))
        );
        assert!(!contents(&from_scratch(&world)).is_empty());
    }

    #[test]
    fn incremental_translation_equals_translation_from_scratch() {
        let mut world = start();
        let mut translator = Translator::new(config());
        let mut snapshot = Snapshot::default();
        snapshot.apply(translator.apply(&world, &Translator::everything(&world)));
        let steps: Vec<Vec<SourceEvent>> = vec![
            vec![ingress(
                "a",
                "a.example.com",
                "svc-b",
                "2026-01-01T00:00:00Z",
            )],
            service("svc-b", "h2c", "10.0.0.3"),
            vec![SourceEvent::Delete(ObjectKey::Ingress(key("b")))],
            vec![ingress(
                "c",
                "a.example.com",
                "svc-a",
                "2025-12-31T00:00:00Z",
            )],
            vec![SourceEvent::Delete(ObjectKey::Ingress(key("c")))],
            service("svc-a", "http", "10.0.0.9"),
            // a.example.com leaves the external listener: its route leaves the external group.
            vec![cluster_local(ingress(
                "a",
                "a.example.com",
                "svc-a",
                "2026-01-01T00:00:00Z",
            ))],
            vec![ingress(
                "a",
                "a.example.com",
                "svc-a",
                "2026-01-01T00:00:00Z",
            )],
        ];
        for (step, events) in steps.into_iter().enumerate() {
            let changes = world.apply(events);
            snapshot.apply(translator.apply(&world, &changes));
            assert_eq!(
                contents(&snapshot),
                contents(&from_scratch(&world)),
                "after step {step}"
            );
        }
    }

    fn tls_secret(name: &str, certificate: &str, key: &str) -> SourceEvent {
        let mut secret = tls::tests::secret(certificate, key);
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some("default".into());
        SourceEvent::Upsert(Object::Secret(Box::new(secret)))
    }

    fn tls_ingress(name: &str, host: &str, secret: &str, http_option: &str) -> SourceEvent {
        let yaml = format!(
            r#"
metadata:
  name: {name}
  namespace: default
  annotations: {{networking.knative.dev/ingress.class: {CLASS}}}
spec:
  httpOption: {http_option}
  tls: [{{hosts: [{host}], secretName: {secret}}}]
  rules:
  - hosts: [{host}]
    http:
      paths:
      - splits: [{{serviceName: svc-a, servicePort: 80}}]
"#
        );
        let ingress: Ingress = serde_saphyr::from_str(&yaml).unwrap();
        SourceEvent::Upsert(Object::Ingress(IngressKind::Ingress, Box::new(ingress)))
    }

    #[test]
    fn incremental_tls_translation_equals_translation_from_scratch() {
        let mut world = start();
        let mut translator = Translator::new(config());
        let mut snapshot = Snapshot::default();
        snapshot.apply(translator.apply(&world, &Translator::everything(&world)));
        let (certificate, key) = tls::tests::self_signed(&["s.example.com"]);
        let (rotated, rotated_key) = tls::tests::self_signed(&["s.example.com"]);
        let steps: Vec<(&str, Vec<SourceEvent>)> = vec![
            (
                "TLS ingress before its secret",
                vec![tls_ingress("s", "s.example.com", "cert", "Enabled")],
            ),
            (
                "the secret appears",
                vec![tls_secret("cert", &certificate, &key)],
            ),
            ("rotation", vec![tls_secret("cert", &rotated, &rotated_key)]),
            (
                "a key that does not match",
                vec![tls_secret("cert", &rotated, &key)],
            ),
            ("fixed", vec![tls_secret("cert", &certificate, &key)]),
            (
                "a losing claimant names a secret no served host uses",
                vec![
                    tls_secret("other", &rotated, &rotated_key),
                    tls_ingress("z-loser", "s.example.com", "other", "Redirected"),
                ],
            ),
            (
                "redirected",
                vec![tls_ingress("s", "s.example.com", "cert", "Redirected")],
            ),
            (
                "redirected, with a key that does not match: the external listener no longer \
                 names the host's route, whose content stays",
                vec![tls_secret("cert", &rotated, &key)],
            ),
            ("fixed again", vec![tls_secret("cert", &certificate, &key)]),
            (
                "TLS dropped",
                vec![ingress(
                    "s",
                    "s.example.com",
                    "svc-a",
                    "2026-01-05T00:00:00Z",
                )],
            ),
        ];
        for (step, events) in steps {
            let changes = world.apply(events);
            snapshot.apply(translator.apply(&world, &changes));
            assert_eq!(
                contents(&snapshot),
                contents(&from_scratch(&world)),
                "after: {step}"
            );
        }
        let listeners = snapshot.resources(Group::All, TypeUrl::Listener);
        assert!(
            !listeners.contains_key("external-https"),
            "no TLS, no HTTPS listener"
        );
        assert!(snapshot.resources(Group::All, TypeUrl::Secret).is_empty());
    }

    #[test]
    fn rotating_a_secret_changes_only_its_sds_resource() {
        let mut world = start();
        let (certificate, key) = tls::tests::self_signed(&["s.example.com"]);
        world.apply([
            tls_ingress("s", "s.example.com", "cert", "Enabled"),
            tls_secret("cert", &certificate, &key),
        ]);
        let mut translator = Translator::new(config());
        translator.apply(&world, &Translator::everything(&world));
        let (rotated, rotated_key) = tls::tests::self_signed(&["s.example.com"]);
        let changes = world.apply([tls_secret("cert", &rotated, &rotated_key)]);
        let updates = translator.apply(&world, &changes);
        let touched: Vec<_> = updates
            .iter()
            .map(|u| (u.type_url, u.name.as_str()))
            .collect();
        assert_eq!(touched, [(TypeUrl::Secret, "default/cert")]);
    }

    #[test]
    fn new_gateway_options_change_only_listeners_and_their_clusters() {
        let world = start();
        let mut translator = Translator::new(config());
        let mut snapshot = Snapshot::default();
        snapshot.apply(translator.apply(&world, &Translator::everything(&world)));
        let options = GatewayOptions {
            trusted_hops: 2,
            ext_authz: crate::options::parse(
                &[("extauthz-host".to_owned(), "auth.example:9000".to_owned())].into(),
                "gloo-system",
            )
            .unwrap()
            .ext_authz,
            ..GatewayOptions::default()
        };
        let updates = translator.configure(&world, options.clone());
        let touched: Vec<_> = updates
            .iter()
            .map(|u| (u.type_url, u.name.as_str()))
            .collect();
        assert_eq!(
            touched,
            [
                (TypeUrl::Cluster, EXT_AUTHZ_CLUSTER),
                (TypeUrl::Listener, "external-http"),
                (TypeUrl::Listener, "internal-http"),
            ]
        );
        snapshot.apply(updates);
        assert!(translator.configure(&world, options.clone()).is_empty());
        let mut fresh = Translator::new(config());
        fresh.configure(&world, options);
        let mut from_scratch = Snapshot::default();
        from_scratch.apply(fresh.apply(&world, &Translator::everything(&world)));
        assert_eq!(contents(&snapshot), contents(&from_scratch));
    }

    #[test]
    fn the_oldest_ingress_wins_a_contested_host() {
        let mut world = start();
        world.apply([ingress(
            "late",
            "a.example.com",
            "svc-b",
            "2026-03-01T00:00:00Z",
        )]);
        let mut translator = Translator::new(config());
        translator.apply(&world, &Translator::everything(&world));
        let loser = translator.outcome(&key("late"));
        assert_eq!(loser.conflicts.get("a.example.com"), Some(&key("a")));
        assert!(
            loser
                .served_hosts
                .contains("late.default.svc.cluster.local")
        );
        let winner = translator.outcome(&key("a"));
        assert!(winner.served_hosts.contains("a.example.com"));
        assert!(winner.conflicts.is_empty());
        // A verdict on the host's routes concerns both: the one that serves it and the one
        // that lost it.
        assert_eq!(
            translator.claimants(TypeUrl::RouteConfiguration, "a.example.com"),
            BTreeSet::from([key("a"), key("late")])
        );
        assert_eq!(
            translator.claimants(TypeUrl::ScopedRouteConfiguration, "external/a.example.com"),
            BTreeSet::from([key("a"), key("late")])
        );
        assert!(
            translator
                .claimants(TypeUrl::Cluster, "default/svc-b:80")
                .is_empty()
        );
    }
}
