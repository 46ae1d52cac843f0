//! Knative-shaped status for every ingress: `NetworkConfigured` once it is translated into the
//! served snapshot, `LoadBalancerReady` once every connected Envoy that serves its visibility
//! has ACKed the routes that carry it, `Ready` when both hold. Envoy's rejections land here too.
//!
//! The verdicts are pure; [`writer`] writes them to the API server in Kubernetes mode (and
//! [`route_writer`] the status of the Routes whose Ingress sluice makes), and
//! [`replicas`] carries what other replicas' Envoys ACKed to the replica that writes.

pub mod replicas;
pub mod route_writer;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::knative::{self, IngressKey, Visibility};
use crate::translate::{ListenerKind, Translator};
use crate::world::{IngressEntry, IngressProblem};
use crate::xds::{Group, Proxy};

use replicas::{Convergence, ReplicaReport, ReportUpdate};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`, as Kubernetes spells them.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub domain_internal: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_load_balancer: Vec<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_load_balancer: Vec<LoadBalancer>,
}

/// One ingress as `sluice get ingress` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressView {
    pub namespace: String,
    pub name: String,
    pub kind: String,
    pub owned: bool,
    /// The hosts of each rule and who may reach them.
    #[serde(default)]
    pub rules: Vec<RuleView>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// The object that controls it, as `Kind/name`: a Route's Ingress names its Route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub status: IngressStatus,
}

/// One rule of an ingress: its hosts and its visibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub hosts: Vec<String>,
    pub visibility: Visibility,
}

impl IngressView {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }
}

/// The in-cluster names of the two proxies' Services, published in every served ingress's
/// status: Knative Serving points each Route's placeholder Service at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancers {
    pub public: String,
    pub private: String,
}

impl LoadBalancers {
    /// `<proxy>.<namespace>.svc.<cluster domain>` for each proxy.
    pub fn new(namespace: &str, external: &str, internal: &str, cluster_domain: &str) -> Self {
        LoadBalancers {
            public: format!("{external}.{namespace}.svc.{cluster_domain}"),
            private: format!("{internal}.{namespace}.svc.{cluster_domain}"),
        }
    }
}

impl Default for LoadBalancers {
    /// The names Gloo's Knative integration published.
    fn default() -> Self {
        LoadBalancers::new(
            "gloo-system",
            "knative-external-proxy",
            "knative-internal-proxy",
            "cluster.local",
        )
    }
}

/// The Envoys whose ACKs decide `LoadBalancerReady`: this replica's own streams, and what the
/// other replicas reported about theirs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envoys<'a> {
    pub local: &'a [Arc<Proxy>],
    pub remote: &'a [ReplicaReport],
}

enum Verdict {
    True,
    False(String, String),
    Unknown(String, String),
}

fn condition(kind: &str, verdict: &Verdict) -> Condition {
    let (status, reason, message) = match verdict {
        Verdict::True => ("True", "", ""),
        Verdict::False(reason, message) => ("False", reason.as_str(), message.as_str()),
        Verdict::Unknown(reason, message) => ("Unknown", reason.as_str(), message.as_str()),
    };
    Condition {
        kind: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

fn serves(group: Group, listener: ListenerKind) -> bool {
    if listener.is_external() {
        group.serves_external()
    } else {
        group.serves_internal()
    }
}

/// How this replica's own Envoys stand on an ingress.
struct LocalVerdict {
    relevant: usize,
    converged: usize,
    rejected: Option<String>,
}

fn local_verdict(
    key: &IngressKey,
    needed: &[crate::translate::ServedResource],
    translator: &Translator,
    proxies: &[Arc<Proxy>],
) -> LocalVerdict {
    let mut verdict = LocalVerdict {
        relevant: 0,
        converged: 0,
        rejected: None,
    };
    for proxy in proxies {
        let group = proxy.group();
        let wanted: Vec<_> = needed
            .iter()
            .filter(|r| serves(group, r.listener))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        verdict.relevant += 1;
        let state = proxy.state.lock().unwrap_or_else(|p| p.into_inner());
        for (type_url, status) in state.status() {
            let Some(nack) = &status.last_nack else {
                continue;
            };
            let blamed = nack.resources.iter().any(|name| {
                wanted.iter().any(|r| &r.name == name)
                    || translator.owners(type_url, name).contains(key)
            });
            let still_rejected = wanted
                .iter()
                .any(|r| !state.acked_at(r.type_url, &r.name, &r.version));
            if blamed && still_rejected {
                verdict.rejected = Some(format!(
                    "Envoy {} rejected {} {}: {}",
                    proxy.node_id,
                    type_url.short(),
                    nack.resources.join(","),
                    nack.message
                ));
                return verdict;
            }
        }
        let acked = wanted
            .iter()
            .all(|r| state.acked_at(r.type_url, &r.name, &r.version));
        if acked {
            verdict.converged += 1;
        }
    }
    verdict
}

/// Whether the connected Envoys, this replica's and the others', serve the ingress as it is
/// now: every Envoy that serves one of its listener kinds has ACKed its routes, and none
/// rejected them.
fn load_balancer(key: &IngressKey, translator: &Translator, envoys: Envoys) -> Verdict {
    let needed = translator.served_resources(key);
    let local = local_verdict(key, &needed, translator, envoys.local);
    if let Some(message) = local.rejected {
        return Verdict::False("EnvoyRejected".to_owned(), message);
    }
    let (mut relevant, mut converged) = (local.relevant, local.converged);
    if !envoys.remote.is_empty() {
        let current = replicas::fingerprint(&needed);
        for report in envoys.remote {
            let serving: usize = report
                .envoys
                .iter()
                .filter(|(group, _)| needed.iter().any(|r| serves(**group, r.listener)))
                .map(|(_, count)| count)
                .sum();
            if serving == 0 {
                continue;
            }
            relevant += serving;
            match report.ingresses.get(key) {
                Some(Convergence::Acked(fingerprint)) if *fingerprint == current => {
                    converged += serving;
                }
                Some(Convergence::Rejected {
                    fingerprint,
                    message,
                }) if *fingerprint == current => {
                    return Verdict::False(
                        "EnvoyRejected".to_owned(),
                        format!("{message} (replica {})", report.replica),
                    );
                }
                _ => {}
            }
        }
    }
    if relevant == 0 {
        return Verdict::False(
            "NoProxy".to_owned(),
            "no Envoy that serves this ingress's visibility is connected".to_owned(),
        );
    }
    if converged < relevant {
        return Verdict::Unknown(
            "Uninitialized".to_owned(),
            format!("{converged} of {relevant} Envoys have ACKed the current routes and secrets"),
        );
    }
    Verdict::True
}
/// What this replica's own Envoys say about the ingresses in `scope` (every one for
/// [`Dirty::all`]), for the report the replica that writes status reads.
pub fn local_report(
    ingresses: &BTreeMap<IngressKey, IngressEntry>,
    translator: &Translator,
    proxies: &[Arc<Proxy>],
    scope: &Dirty,
) -> ReportUpdate {
    let mut update = ReportUpdate {
        complete: scope.is_all(),
        ..ReportUpdate::default()
    };
    for proxy in proxies {
        *update.envoys.entry(proxy.group()).or_default() += 1;
    }
    for key in scope.keys(ingresses) {
        let convergence = ingresses
            .get(key)
            .filter(|_| !proxies.is_empty())
            .and_then(|entry| convergence(key, entry, translator, proxies));
        update.entries.push((key.clone(), convergence));
    }
    update
}

fn convergence(
    key: &IngressKey,
    entry: &IngressEntry,
    translator: &Translator,
    proxies: &[Arc<Proxy>],
) -> Option<Convergence> {
    entry.served.as_ref()?;
    let needed = translator.served_resources(key);
    if needed.is_empty() {
        return None;
    }
    let verdict = local_verdict(key, &needed, translator, proxies);
    let fingerprint = replicas::fingerprint(&needed);
    match verdict.rejected {
        Some(message) => Some(Convergence::Rejected {
            fingerprint,
            message,
        }),
        None if verdict.relevant > 0 && verdict.converged == verdict.relevant => {
            Some(Convergence::Acked(fingerprint))
        }
        None => None,
    }
}

/// Which ingresses' status may have changed since it was last looked at: so that a change, an
/// Envoy's ACK or another replica's report costs the ingresses it concerns, not the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    all: bool,
    keys: BTreeSet<IngressKey>,
}

impl Dirty {
    /// Every ingress.
    pub fn all() -> Dirty {
        Dirty {
            all: true,
            keys: BTreeSet::new(),
        }
    }

    pub fn is_all(&self) -> bool {
        self.all
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }

    pub fn mark_all(&mut self) {
        self.all = true;
        self.keys.clear();
    }

    pub fn insert(&mut self, key: IngressKey) {
        if !self.all {
            self.keys.insert(key);
        }
    }

    pub fn merge(&mut self, other: Dirty) {
        if other.all {
            self.mark_all();
        } else {
            for key in other.keys {
                self.insert(key);
            }
        }
    }

    /// Empties it, returning what it held.
    pub fn take(&mut self) -> Dirty {
        std::mem::take(self)
    }

    /// The keys it covers: every key of `known` when it is all, else its own (known or not, so
    /// that the caller learns of the ones that are gone).
    pub fn keys<'a, V>(
        &'a self,
        known: &'a BTreeMap<IngressKey, V>,
    ) -> Box<dyn Iterator<Item = &'a IngressKey> + 'a> {
        if self.all {
            Box::new(known.keys())
        } else {
            Box::new(self.keys.iter())
        }
    }
}

impl Extend<IngressKey> for Dirty {
    fn extend<I: IntoIterator<Item = IngressKey>>(&mut self, keys: I) {
        for key in keys {
            self.insert(key);
        }
    }
}

/// The status Knative's reconcilers would write for a view: `observedGeneration`, the three
/// conditions (each keeping its `lastTransitionTime` from `current` while nothing else about it
/// changed, as Knative's condition sets do), and the load balancers once the ingress is served.
/// `now` is the RFC 3339 time of a condition that changes.
pub fn knative_status(
    view: &IngressView,
    generation: Option<i64>,
    current: Option<&knative::IngressStatus>,
    now: &str,
) -> knative::IngressStatus {
    let conditions = knative_conditions(
        &view.status.conditions,
        current.map(|status| status.conditions.as_slice()),
        now,
    );
    let balancer = |balancers: &[LoadBalancer]| {
        (!balancers.is_empty()).then(|| knative::LoadBalancerStatus {
            ingress: balancers
                .iter()
                .map(|b| knative::LoadBalancerIngressStatus {
                    domain_internal: b.domain_internal.clone(),
                    ..Default::default()
                })
                .collect(),
        })
    };
    knative::IngressStatus {
        observed_generation: generation,
        conditions,
        annotations: current.map(|c| c.annotations.clone()).unwrap_or_default(),
        public_load_balancer: balancer(&view.status.public_load_balancer),
        private_load_balancer: balancer(&view.status.private_load_balancer),
    }
}

/// Knative's conditions for `conditions`, each keeping its `lastTransitionTime` from `current`
/// while nothing else about it changed, as Knative's condition sets do; `now` (RFC 3339) is
/// the time of a condition that changes.
pub fn knative_conditions(
    conditions: &[Condition],
    current: Option<&[knative::StatusCondition]>,
    now: &str,
) -> Vec<knative::StatusCondition> {
    conditions
        .iter()
        .map(|condition| {
            let unchanged = current.into_iter().flatten().find(|old| {
                old.type_ == condition.kind
                    && old.status == condition.status
                    && old.reason == condition.reason
                    && old.message == condition.message
            });
            knative::StatusCondition {
                type_: condition.kind.clone(),
                status: condition.status.clone(),
                severity: String::new(),
                last_transition_time: Some(
                    unchanged
                        .and_then(|old| old.last_transition_time.clone())
                        .unwrap_or_else(|| now.to_owned()),
                ),
                reason: condition.reason.clone(),
                message: condition.message.clone(),
            }
        })
        .collect()
}

/// The ingress's manifest cannot be read now: its last good version is served, and it is not
/// Ready until the manifest is fixed.
pub fn mark_unreadable(view: &mut IngressView, problem: &str) {
    for condition in &mut view.status.conditions {
        if condition.kind == "Ready" {
            condition.status = "False".to_owned();
            condition.reason = "ManifestUnreadable".to_owned();
            condition.message = format!("{problem}; the last version read is still served");
        }
    }
}

pub fn view(
    key: &IngressKey,
    entry: &IngressEntry,
    translator: &Translator,
    envoys: Envoys,
    balancers: &LoadBalancers,
) -> IngressView {
    let mut owned = true;
    let (network, balancer) = match &entry.problem {
        Some(IngressProblem::NotOwned { class }) => {
            owned = false;
            let message = format!(
                "its ingress class is {}, not this controller's",
                class.as_deref().unwrap_or("unset")
            );
            (
                Verdict::Unknown("NotOwned".to_owned(), message.clone()),
                Verdict::Unknown("NotOwned".to_owned(), message),
            )
        }
        Some(IngressProblem::Invalid { errors }) => {
            let served = if entry.served.is_some() {
                "; the last valid version is still served"
            } else {
                ""
            };
            let verdict = Verdict::False(
                "InvalidIngress".to_owned(),
                format!("{}{served}", errors.join("; ")),
            );
            (verdict, Verdict::Unknown(String::new(), String::new()))
        }
        None => {
            let outcome = translator.outcome(key);
            if let Some((host, winner)) = outcome.conflicts.iter().next() {
                let verdict = Verdict::False(
                    "DomainConflict".to_owned(),
                    format!("host {host} is already served by {winner}"),
                );
                (verdict, Verdict::Unknown(String::new(), String::new()))
            } else if !outcome.tls_problems.is_empty() {
                let problems: Vec<&str> = outcome.tls_problems.iter().map(String::as_str).collect();
                let verdict = Verdict::False(
                    "InvalidTLSSecret".to_owned(),
                    format!(
                        "{}; its hosts are not served over HTTPS until the secret is fixed",
                        problems.join("; ")
                    ),
                );
                (verdict, Verdict::Unknown(String::new(), String::new()))
            } else {
                (Verdict::True, load_balancer(key, translator, envoys))
            }
        }
    };
    let ready = match (&network, &balancer) {
        (Verdict::True, Verdict::True) => Verdict::True,
        (Verdict::False(reason, message), _) | (_, Verdict::False(reason, message)) => {
            Verdict::False(reason.clone(), message.clone())
        }
        (Verdict::Unknown(reason, message), _) | (_, Verdict::Unknown(reason, message)) => {
            Verdict::Unknown(reason.clone(), message.clone())
        }
    };
    let mut conditions = vec![condition("LoadBalancerReady", &balancer)];
    conditions.push(condition("NetworkConfigured", &network));
    conditions.push(condition("Ready", &ready));
    let served = matches!(network, Verdict::True);
    let balancer_for = |name: &str| {
        vec![LoadBalancer {
            domain_internal: name.to_owned(),
        }]
    };
    let rules = entry
        .latest
        .spec
        .rules
        .iter()
        .map(|rule| RuleView {
            hosts: rule.hosts.clone(),
            visibility: rule.visibility.unwrap_or_default(),
        })
        .collect();
    IngressView {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        kind: key.kind.as_str().to_owned(),
        owned,
        rules,
        labels: entry.latest.metadata.labels.clone(),
        creation_timestamp: entry.latest.metadata.creation_timestamp.clone(),
        owner: entry
            .latest
            .metadata
            .controller()
            .map(|owner| format!("{}/{}", owner.kind, owner.name)),
        status: IngressStatus {
            conditions,
            // Knative's clients dial every ingress through its public load balancer, so it is
            // set for ClusterLocal-only ingresses too, as other implementations do.
            public_load_balancer: if served {
                balancer_for(&balancers.public)
            } else {
                Vec::new()
            },
            private_load_balancer: if served {
                balancer_for(&balancers.private)
            } else {
                Vec::new()
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knative::{Ingress, IngressKind};
    use crate::translate::TranslateConfig;
    use crate::world::{Object, SourceEvent, World};
    use crate::xds::{Mode, Response, Snapshot, SotwRequest, StreamState, TypeUrl};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::rpc::Status;
    use std::sync::Mutex;
    use std::time::SystemTime;

    const CLASS: &str = "sluice";

    fn setup() -> (World, Translator, Snapshot, IngressKey) {
        let yaml = format!(
            r#"
metadata:
  name: a
  namespace: default
  annotations: {{networking.knative.dev/ingress.class: {CLASS}}}
spec:
  rules:
  - hosts: [a.example.com]
    http:
      paths:
      - splits: [{{serviceName: svc, servicePort: 80}}]
"#
        );
        let ingress: Ingress = serde_saphyr::from_str(&yaml).unwrap();
        let mut world = World::new(CLASS);
        let changes = world.apply([SourceEvent::Upsert(Object::Ingress(
            IngressKind::Ingress,
            Box::new(ingress),
        ))]);
        let mut translator = Translator::new(TranslateConfig {
            listen_address: "127.0.0.1".into(),
            http_port: 8080,
            https_port: 8443,
            internal_http_port: 8081,
            internal_https_port: 8444,
        });
        let mut snapshot = Snapshot::default();
        snapshot.apply(translator.apply(&world, &changes));
        let key = world.ingresses.keys().next().unwrap().clone();
        (world, translator, snapshot, key)
    }

    fn request(type_url: TypeUrl, names: &[&str], nonce: &str) -> SotwRequest {
        discovery(type_url, names, nonce).into()
    }

    fn discovery(type_url: TypeUrl, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.as_str().to_owned(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        }
    }

    fn nonce(responses: &[Response]) -> String {
        match responses {
            [Response::Sotw(response)] => response.message.nonce.clone(),
            other => panic!("expected one SotW response, got {other:?}"),
        }
    }

    /// An Envoy that has every cluster, endpoint and scope, and has just been sent the routes.
    fn proxy_sent_routes(snapshot: &Snapshot) -> (Arc<Proxy>, String) {
        let cluster = "default/svc:80";
        let mut stream = StreamState::new(Mode::StateOfTheWorld, Group::All);
        for (type_url, names) in [
            (TypeUrl::Cluster, vec![]),
            (TypeUrl::ClusterLoadAssignment, vec![cluster]),
            (TypeUrl::ScopedRouteConfiguration, vec![]),
        ] {
            stream.on_sotw_request(&request(type_url, &names, ""), Some(snapshot));
            let sent = nonce(&stream.poll(snapshot));
            stream.on_sotw_request(&request(type_url, &names, &sent), Some(snapshot));
        }
        stream.on_sotw_request(
            &request(TypeUrl::RouteConfiguration, &["a.example.com"], ""),
            Some(snapshot),
        );
        let sent = nonce(&stream.poll(snapshot));
        let proxy = Arc::new(Proxy {
            node_id: "envoy-1".into(),
            role: None,
            mode: Mode::StateOfTheWorld,
            connected_at: SystemTime::now(),
            state: Mutex::new(stream),
        });
        (proxy, sent)
    }

    fn show(
        key: &IngressKey,
        entry: &IngressEntry,
        translator: &Translator,
        proxies: &[Arc<Proxy>],
    ) -> IngressView {
        let envoys = Envoys {
            local: proxies,
            remote: &[],
        };
        view(key, entry, translator, envoys, &LoadBalancers::default())
    }

    fn ready(view: &IngressView) -> (String, String) {
        let ready = view.condition("Ready").unwrap();
        (ready.status.clone(), ready.reason.clone())
    }

    #[test]
    fn ready_once_the_envoy_acks_the_routes() {
        let (world, translator, snapshot, key) = setup();
        let entry = &world.ingresses[&key];
        assert_eq!(
            ready(&show(&key, entry, &translator, &[])),
            ("False".into(), "NoProxy".into())
        );
        let (proxy, sent) = proxy_sent_routes(&snapshot);
        let proxies = [proxy.clone()];
        assert_eq!(
            ready(&show(&key, entry, &translator, &proxies)),
            ("Unknown".into(), "Uninitialized".into())
        );
        let ack = request(TypeUrl::RouteConfiguration, &["a.example.com"], &sent);
        proxy
            .state
            .lock()
            .unwrap()
            .on_sotw_request(&ack, Some(&snapshot));
        let view = show(&key, entry, &translator, &proxies);
        assert_eq!(ready(&view), ("True".into(), String::new()));
        assert_eq!(
            view.status.public_load_balancer[0].domain_internal,
            "knative-external-proxy.gloo-system.svc.cluster.local"
        );
    }

    #[test]
    fn a_rejected_route_fails_the_ingress_that_owns_it() {
        let (world, translator, snapshot, key) = setup();
        let (proxy, sent) = proxy_sent_routes(&snapshot);
        let nack: SotwRequest = DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "invalid header".into(),
                details: vec![],
            }),
            ..discovery(TypeUrl::RouteConfiguration, &["a.example.com"], &sent)
        }
        .into();
        proxy
            .state
            .lock()
            .unwrap()
            .on_sotw_request(&nack, Some(&snapshot));
        let view = show(&key, &world.ingresses[&key], &translator, &[proxy]);
        assert_eq!(ready(&view), ("False".into(), "EnvoyRejected".into()));
        let message = &view.condition("LoadBalancerReady").unwrap().message;
        assert!(
            message.contains("envoy-1") && message.contains("invalid header"),
            "{message}"
        );
    }
}
