//! Knative-shaped status for every ingress: `NetworkConfigured` once it is translated into the
//! served snapshot, `LoadBalancerReady` once every connected Envoy that serves its visibility
//! has ACKed the routes that carry it, `Ready` when both hold. Envoy's rejections land here too.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::knative::IngressKey;
use crate::translate::{ListenerKind, Translator};
use crate::world::{IngressEntry, IngressProblem};
use crate::xds::{Group, Proxy, TypeUrl};

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
pub struct IngressView {
    pub namespace: String,
    pub name: String,
    pub kind: String,
    pub owned: bool,
    pub status: IngressStatus,
}

impl IngressView {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }
}

/// The proxies' names as Gloo's Knative integration published them.
pub const EXTERNAL_PROXY: &str = "knative-external-proxy.gloo-system.svc.cluster.local";
pub const INTERNAL_PROXY: &str = "knative-internal-proxy.gloo-system.svc.cluster.local";

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
    match listener {
        ListenerKind::External => group.serves_external(),
        ListenerKind::Internal => group.serves_internal(),
    }
}

/// Whether the connected Envoys serve the ingress as it is now: every Envoy that serves one of
/// its listener kinds has ACKed its routes, and none rejected them.
fn load_balancer(key: &IngressKey, translator: &Translator, proxies: &[Arc<Proxy>]) -> Verdict {
    let routes = translator.served_routes(key);
    let mut relevant = 0;
    let mut converged = 0;
    for proxy in proxies {
        let group = proxy.group();
        let wanted: Vec<_> = routes
            .iter()
            .filter(|r| serves(group, r.listener))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        relevant += 1;
        let state = proxy.state.lock().unwrap_or_else(|p| p.into_inner());
        for (type_url, status) in state.status() {
            let Some(nack) = &status.last_nack else {
                continue;
            };
            let blamed = nack.resources.iter().any(|name| {
                wanted.iter().any(|r| &r.name == name)
                    || translator.owners(type_url, name).contains(key)
            });
            let still_rejected = wanted.iter().any(|r| {
                state.acked_version(TypeUrl::RouteConfiguration, &r.name) != Some(&r.version)
            });
            if blamed && still_rejected {
                return Verdict::False(
                    "EnvoyRejected".to_owned(),
                    format!(
                        "Envoy {} rejected {} {}: {}",
                        proxy.node_id,
                        type_url.short(),
                        nack.resources.join(","),
                        nack.message
                    ),
                );
            }
        }
        let acked = wanted.iter().all(|r| {
            state.acked_version(TypeUrl::RouteConfiguration, &r.name) == Some(r.version.as_str())
        });
        if acked {
            converged += 1;
        }
    }
    if relevant == 0 {
        return Verdict::Unknown(
            "NoProxy".to_owned(),
            "no connected Envoy serves this ingress's visibility yet".to_owned(),
        );
    }
    if converged < relevant {
        return Verdict::Unknown(
            "Uninitialized".to_owned(),
            format!("{converged} of {relevant} Envoys have ACKed the current routes"),
        );
    }
    Verdict::True
}

pub fn view(
    key: &IngressKey,
    entry: &IngressEntry,
    translator: &Translator,
    proxies: &[Arc<Proxy>],
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
            } else {
                (Verdict::True, load_balancer(key, translator, proxies))
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
    let ingress = entry.served.as_ref().unwrap_or(&entry.latest);
    let has = |visibility| {
        ingress
            .spec
            .rules
            .iter()
            .any(|r| r.visibility.unwrap_or_default() == visibility)
    };
    let balancer_for = |name: &str| {
        vec![LoadBalancer {
            domain_internal: name.to_owned(),
        }]
    };
    IngressView {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        kind: key.kind.as_str().to_owned(),
        owned,
        status: IngressStatus {
            conditions,
            public_load_balancer: if served && has(crate::knative::Visibility::ExternalIP) {
                balancer_for(EXTERNAL_PROXY)
            } else {
                Vec::new()
            },
            private_load_balancer: if served {
                balancer_for(INTERNAL_PROXY)
            } else {
                Vec::new()
            },
        },
    }
}
