//! A Route's status as Knative's route reconciler writes it: `url`, `address.url`, the
//! `traffic` it serves, and the conditions `AllTrafficAssigned`, `IngressReady` (following its
//! Ingress's `Ready`) and `Ready`.

use serde::{Deserialize, Serialize};

use crate::knative::{Addressable, RouteStatus, TrafficTarget};
use crate::status::{self, Condition, IngressView};
use crate::world::NsName;

use super::domains;
use super::ingress::Settings;
use super::{RouteEntry, RouteProblem};

/// One Route as `sluice get route` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_url: Option<String>,
    /// The traffic served, each target at its revision.
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
    /// The traffic the latest version asks for, as written.
    #[serde(default)]
    pub spec_traffic: Vec<TrafficTarget>,
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// The manifest file the Route was read from (file mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The name of the Ingress sluice made for it; `None` while there is none, or when another
    /// controller's Ingress holds the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

impl RouteView {
    /// A Route as the API server holds it (its traffic with Knative's defaults), with the
    /// status its writer gave it.
    pub fn from_resource(route: &crate::knative::RouteResource) -> RouteView {
        let status = route.status.clone().unwrap_or_default();
        let mut defaulted = crate::knative::Route {
            metadata: Default::default(),
            spec: route.spec.clone(),
            status: None,
            origin: None,
        };
        defaulted.set_defaults();
        RouteView {
            namespace: route.metadata.namespace.clone().unwrap_or_default(),
            name: route.metadata.name.clone().unwrap_or_default(),
            url: status.url,
            address_url: status.address.and_then(|address| address.url),
            traffic: status.traffic,
            spec_traffic: defaulted.spec.traffic,
            conditions: status
                .conditions
                .into_iter()
                .map(|c| Condition {
                    kind: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
            generation: route.metadata.generation,
            creation_timestamp: route
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|time| time.0.to_string()),
            origin: None,
            ingress: None,
        }
    }

    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

/// What else a Route's status depends on.
pub struct Context<'a> {
    pub settings: Settings<'a>,
    /// The view of the Route's Ingress, when sluice made it and the world holds it.
    pub ingress: Option<&'a IngressView>,
    /// Whether another controller's Ingress holds the name.
    pub yields: bool,
    /// Why the Route's manifest cannot be read now, if it cannot.
    pub unreadable: Option<&'a str>,
}

pub fn view(key: &NsName, entry: &RouteEntry, context: Context) -> RouteView {
    let latest = &entry.latest;
    let served = entry.served.is_some();
    let still_served = if served {
        "; the last good version is still served"
    } else {
        ""
    };
    let traffic = match &entry.problem {
        None => condition("AllTrafficAssigned", "True", "", String::new()),
        Some(RouteProblem::Invalid { errors }) => condition(
            "AllTrafficAssigned",
            "False",
            "InvalidRoute",
            format!("{}{still_served}", errors.join("; ")),
        ),
        Some(RouteProblem::ConfigurationMissing { configuration }) => condition(
            "AllTrafficAssigned",
            "False",
            "ConfigurationMissing",
            format!(
                "Configuration {configuration:?} referenced in traffic not found{still_served}"
            ),
        ),
        Some(RouteProblem::RevisionMissing { configuration }) => condition(
            "AllTrafficAssigned",
            "Unknown",
            "RevisionMissing",
            format!(
                "Configuration {configuration:?} is waiting for a Revision to become ready{still_served}"
            ),
        ),
    };
    let ingress = if context.yields {
        condition(
            "IngressReady",
            "Unknown",
            "NotOwned",
            format!(
                "Ingress {key} was made by another controller; sluice serves it as it is and \
                 leaves this Route to that controller"
            ),
        )
    } else {
        match context.ingress.and_then(|view| view.condition("Ready")) {
            Some(ready) => Condition {
                kind: "IngressReady".to_owned(),
                ..ready.clone()
            },
            None => condition(
                "IngressReady",
                "Unknown",
                "IngressNotConfigured",
                "Ingress has not yet been reconciled.".to_owned(),
            ),
        }
    };
    let mut ready = [&traffic, &ingress]
        .into_iter()
        .find(|c| c.status == "False")
        .or_else(|| {
            [&traffic, &ingress]
                .into_iter()
                .find(|c| c.status == "Unknown")
        })
        .map_or_else(
            || condition("Ready", "True", "", String::new()),
            |c| Condition {
                kind: "Ready".to_owned(),
                ..c.clone()
            },
        );
    if let Some(problem) = context.unreadable {
        ready = condition(
            "Ready",
            "False",
            "ManifestUnreadable",
            format!("{problem}; the last version read is still served"),
        );
    }
    let hosts = domains::hosts(
        latest,
        "",
        context.settings.domains,
        context.settings.cluster_domain,
    )
    .ok();
    RouteView {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        url: hosts.as_ref().map(domains::Hosts::url),
        address_url: hosts.map(|hosts| format!("http://{}", hosts.cluster_local)),
        traffic: entry
            .served
            .as_ref()
            .map(|served| served.traffic.clone())
            .unwrap_or_default(),
        spec_traffic: latest.spec.traffic.clone(),
        conditions: vec![traffic, ingress, ready],
        generation: latest.metadata.generation,
        creation_timestamp: latest.metadata.creation_timestamp.clone(),
        origin: latest.origin.clone(),
        ingress: context
            .ingress
            .map(|view| view.name.clone())
            .filter(|_| !context.yields),
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: String) -> Condition {
    Condition {
        kind: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
    }
}

/// The status Knative's route reconciler would write for a view, keeping each condition's
/// `lastTransitionTime` from `current` while the condition is unchanged.
pub fn knative_status(view: &RouteView, current: Option<&RouteStatus>, now: &str) -> RouteStatus {
    RouteStatus {
        observed_generation: view.generation,
        conditions: status::knative_conditions(
            &view.conditions,
            current.map(|status| status.conditions.as_slice()),
            now,
        ),
        annotations: current.map(|c| c.annotations.clone()).unwrap_or_default(),
        url: view.url.clone(),
        address: view
            .address_url
            .clone()
            .map(|url| Addressable { url: Some(url) }),
        traffic: view.traffic.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{RouteConfig, Routes};
    use crate::status::IngressStatus;
    use crate::world::{Object, SourceEvent};

    fn routes(traffic: &str) -> Routes {
        let mut routes = Routes::new(RouteConfig::new("sluice"));
        let yaml = format!(
            "metadata: {{name: hello, namespace: ns, generation: 3}}\nspec:\n  traffic: {traffic}\n"
        );
        routes.apply(vec![SourceEvent::Upsert(Object::Route(Box::new(
            serde_saphyr::from_str(&yaml).unwrap(),
        )))]);
        routes
    }

    fn ingress_view(ready: &str, reason: &str) -> IngressView {
        IngressView {
            namespace: "ns".into(),
            name: "hello".into(),
            kind: "Ingress".into(),
            owned: true,
            rules: vec![],
            labels: Default::default(),
            creation_timestamp: None,
            owner: Some("Route/hello".into()),
            status: IngressStatus {
                conditions: vec![condition("Ready", ready, reason, String::new())],
                public_load_balancer: vec![],
                private_load_balancer: vec![],
            },
        }
    }

    fn show(routes: &Routes, ingress: Option<&IngressView>) -> RouteView {
        let key = NsName::new("ns", "hello");
        view(
            &key,
            &routes.entries()[&key],
            Context {
                settings: routes.settings(),
                ingress,
                yields: false,
                unreadable: None,
            },
        )
    }

    fn states(view: &RouteView) -> Vec<(String, String, String)> {
        view.conditions
            .iter()
            .map(|c| (c.kind.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn ready_follows_the_ingress() {
        let routes =
            routes("[{revisionName: hello-1, percent: 100}, {tag: next, revisionName: hello-2}]");
        let view = show(&routes, Some(&ingress_view("Unknown", "Uninitialized")));
        assert_eq!(
            states(&view),
            [
                ("AllTrafficAssigned".into(), "True".into(), String::new()),
                (
                    "IngressReady".into(),
                    "Unknown".into(),
                    "Uninitialized".into()
                ),
                ("Ready".into(), "Unknown".into(), "Uninitialized".into()),
            ]
        );
        let view = show(&routes, Some(&ingress_view("True", "")));
        assert_eq!(view.condition("Ready").unwrap().status, "True");
        assert_eq!(view.url.as_deref(), Some("http://hello.ns.example.com"));
        assert_eq!(
            view.address_url.as_deref(),
            Some("http://hello.ns.svc.cluster.local")
        );
        assert_eq!(
            view.traffic[1].url.as_deref(),
            Some("http://next-hello.ns.example.com")
        );
        let status = knative_status(&view, None, "2024-01-01T00:00:00Z");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            status.address.unwrap().url.as_deref(),
            Some("http://hello.ns.svc.cluster.local")
        );
    }

    #[test]
    fn a_missing_configuration_says_so() {
        let routes = routes("[{configurationName: gone, percent: 100}]");
        let view = show(&routes, None);
        assert_eq!(
            states(&view),
            [
                (
                    "AllTrafficAssigned".into(),
                    "False".into(),
                    "ConfigurationMissing".into()
                ),
                (
                    "IngressReady".into(),
                    "Unknown".into(),
                    "IngressNotConfigured".into()
                ),
                (
                    "Ready".into(),
                    "False".into(),
                    "ConfigurationMissing".into()
                ),
            ]
        );
        assert!(view.traffic.is_empty());
    }
}
